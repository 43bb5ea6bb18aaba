/*
 * lowbit native A8W4 GEMM: y = linear(x, W) with int8 per-token activations and
 * packed int4 weights, for x86-64 CPUs.  Plain C over raw buffers (no torch headers);
 * compiled on first use by lowbit/kernels/native/_build.py and loaded with ctypes.
 *
 * Three paths live in this one file and are picked at run time:
 *   2  avx512_vnni  vpdpbusd (u8 x s8 -> s32), 16 output columns per zmm
 *   1  avx2         vpmaddubsw + vpmaddwd, 8 output columns per ymm
 *   0  scalar       portable C
 * All three compute bit-identical results: the integer part is exact and the float
 * part uses the same operations in the same order (built with -ffp-contract=off).
 *
 * Math (see __init__.py for the full contract), per row m and output column n:
 *   x'       = x[m,k] * xmul[k] when xmul is given (SmoothQuant), else x   (fp32)
 *   s_x[m]   = amax|x'[m,:]| / 127   (1 if that is 0)
 *   qx[m,k]  = clamp(rint(x'[m,k] / s_x[m]), -127, 127)
 *   acc_g    = sum_{k in g} qx[m,k] * (u[n,k] - z[n,g])          (int32, exact)
 *            = dot(u, qx) + z[n,g] * nrs[m,g],   nrs = -sum_{k in g} qx[m,k]
 *   t        = 0; for g in 0..G-1: t = t + (float)acc_g * s_w[n,g]   (fp32)
 *   y[m,n]   = t * s_x[m]  (+ bias[n])
 *
 * Weight layout (built by _layout.py): u are offset-binary codes 0..15 (symmetric
 * int4 codes + 8), rows padded to NB = ceil(N/16) blocks of 16, K padded to Kp (x8).
 *   w[b][o][64 bytes], o = octet of 8 k's; byte 4*j + i of octet o holds
 *   low nibble  = u[16b + j, 8o + i]      (i = 0..3)
 *   high nibble = u[16b + j, 8o + 4 + i]
 * so one 64-byte load feeds 16 columns x 8 k's.  Scales sw and zero points zw are
 * [NB][G][16] (fp32 / int32), zero in padded lanes.
 *
 * Schedule: activations are quantized once per call (rows in chunks of 8), then the
 * output is cut into chunks of one panel of 4 blocks (64 columns) x up to 48 rows,
 * handed out from an atomic counter to the caller and the pool threads. Within a
 * chunk the AVX-512 tile is 6 rows x 2 blocks over all K, written in inline asm
 * (tile6x2_asm): 12 int32 accumulators, 12 fp32 partial sums t and the unpacked
 * weights all stay in zmm registers, so a group boundary costs only its epilogue
 * (g128 runs at 0.94-0.96x the speed of per-channel int4 at K = 1024..4096; GCC's
 * allocation of the same tile in intrinsics copied every accumulator on every step).
 * Rows and blocks left over (M % 6, M < 6, an odd last block) take the intrinsic
 * tiles of tile512: up to 4 rows x 2 blocks, or 1 row x 4 blocks, with the low and
 * high nibbles in separate accumulators.
 */
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define INLINE static inline __attribute__((always_inline))
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define T256 __attribute__((target("avx2")))
#define T512Q __attribute__((target("avx512f,avx512bw,avx512vl")))

typedef struct {
    const float *x;
    const float *xmul; /* [K] multiplier of x's columns, or NULL */
    int64_t M;
    int K, Kp, N, NB, G, opg;
    int ldq; /* row stride of qx: Kp + 64, so rows do not all alias in the L1 sets */
    const uint8_t *w;
    const float *sw;
    const int32_t *zw;
    const float *bias;
    float *y;
    int32_t *acc_out; /* [M][N][G] or NULL */
    int8_t *qx;       /* [M][ldq] */
    float *sx;        /* [M] */
    int32_t *nrs;     /* [M][G] */
    int32_t *nt;      /* [G][M] nrs (times zconst when >= 0) for the 6 x 2 tiles, or NULL */
    int isa;
    int zconst; /* >= 0: every zero point equals zconst (symmetric: 8); -1: use zw */
    atomic_llong *next;  /* work counter of gemm_task (chunks) */
    atomic_llong *qnext; /* work counter of quant_task (rows) */
} problem;

/* ------------------------------------------------------------------------------ */
/* activation quantization, one row                                               */

static void quant_row_scalar(const float *x, const float *xm, int K, int Kp, int8_t *q,
                             float *sx, int32_t *nrs, int G, int gk) {
    float amax = 0.0f;
    for (int k = 0; k < K; ++k) {
        float a = fabsf(xm ? x[k] * xm[k] : x[k]);
        amax = a > amax ? a : amax;
    }
    float s = amax / 127.0f;
    if (s == 0.0f) s = 1.0f;
    for (int k = 0; k < K; ++k) {
        float v = (xm ? x[k] * xm[k] : x[k]) / s;
        v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
        q[k] = (int8_t)rintf(v);
    }
    for (int k = K; k < Kp; ++k) q[k] = 0;
    *sx = s;
    for (int gi = 0; gi < G; ++gi) {
        int32_t sum = 0;
        for (int k = gi * gk; k < (gi + 1) * gk; ++k) sum += q[k];
        nrs[gi] = -sum;
    }
}

T512Q static void quant_row_512(const float *x, const float *xm, int K, int Kp, int8_t *q,
                               float *sx, int32_t *nrs, int G, int gk) {
    __m512 vmax = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const __mmask16 m = lb_mask16(K - k);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(lb_row_lanes(x, xm, k, m)));
    }
    float amax = _mm512_reduce_max_ps(vmax);
    float s = amax / 127.0f;
    if (s == 0.0f) s = 1.0f;
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int k = 0; k < K; k += 16) {
        const __mmask16 m = lb_mask16(K - k);
        __m512 v = _mm512_div_ps(lb_row_lanes(x, xm, k, m), vs);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_mask_storeu_epi8(q + k, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    for (int k = K; k < Kp; ++k) q[k] = 0;
    *sx = s;
    /* group sums of the codes: vpsadbw adds unsigned bytes, so shift the codes by 128
     * (the zero-masked tail of a group is left at 0 and so not shifted) */
    const __m512i shift = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    for (int gi = 0; gi < G; ++gi) {
        __m512i sum = zero;
        for (int k = 0; k < gk; k += 64) {
            const __mmask64 m = gk - k >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (gk - k)) - 1;
            const __m512i v = _mm512_maskz_loadu_epi8(m, q + (size_t)gi * gk + k);
            sum = _mm512_add_epi64(
                sum, _mm512_sad_epu8(_mm512_maskz_mov_epi8(m, _mm512_xor_si512(v, shift)), zero));
        }
        nrs[gi] = (int32_t)(128 * (int64_t)gk - _mm512_reduce_add_epi64(sum));
    }
}

/* ------------------------------------------------------------------------------ */
/* AVX-512 VNNI tile: MR rows x NR blocks of 16 columns, full K                   */

/* y[m, block b] = t * s_x[m] (+ bias), the columns past N masked off */
INLINE T512 void store_out(const problem *p, int64_t m, int b, __m512 t) {
    const int n0 = 16 * b;
    const __mmask16 mk = lb_mask16(p->N - n0);
    __m512 v = _mm512_mul_ps(t, _mm512_set1_ps(p->sx[m]));
    if (p->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, p->bias + n0));
    _mm512_mask_storeu_ps(p->y + (size_t)m * p->N + n0, mk, v);
}

INLINE T512 void tile512(const problem *p, int64_t m0, int b0, const int MR, const int NR) {
    const int G = p->G, opg = p->opg, Kp = p->Kp, N = p->N;
    const size_t bstride = (size_t)Kp * 8; /* bytes per block of 16 rows */
    const uint8_t *wb = p->w + (size_t)b0 * bstride;
    const int8_t *qx = p->qx + (size_t)m0 * p->ldq;
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    __m512 t[4][4];
    __m512i acc[4][4], acch[4][4]; /* low and high nibbles' sums: two independent chains */
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) t[i][j] = _mm512_setzero_ps();

    for (int g = 0; g < G; ++g) {
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            /* acc starts at z * (-rowsum): the zero-point correction, exact in int32 */
            if (p->zconst >= 0) { /* symmetric: no vpmulld (padded lanes are never stored) */
#pragma GCC unroll 4
                for (int i = 0; i < MR; ++i)
                    acc[i][j] = _mm512_set1_epi32(p->zconst * p->nrs[(size_t)(m0 + i) * G + g]);
                continue;
            }
            __m512i z = _mm512_loadu_si512(p->zw + ((size_t)(b0 + j) * G + g) * 16);
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i)
                acc[i][j] = _mm512_mullo_epi32(z, _mm512_set1_epi32(p->nrs[(size_t)(m0 + i) * G + g]));
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int j = 0; j < NR; ++j) acch[i][j] = _mm512_setzero_si512();
        const size_t o0 = (size_t)g * opg;
        for (int o = 0; o < opg; ++o) {
            __m512i lo[4], hi[4];
            const uint8_t *wo = wb + (o0 + o) * 64;
#pragma GCC unroll 4
            for (int j = 0; j < NR; ++j) {
                __m512i v = _mm512_loadu_si512(wo + j * bstride);
                lo[j] = _mm512_and_si512(v, m0f);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
            }
            const int8_t *qk = qx + (o0 + o) * 8;
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                int32_t a4, b4;
                memcpy(&a4, qk + (size_t)i * p->ldq, 4);
                memcpy(&b4, qk + (size_t)i * p->ldq + 4, 4);
                const __m512i xa = _mm512_set1_epi32(a4), xb = _mm512_set1_epi32(b4);
#pragma GCC unroll 4
                for (int j = 0; j < NR; ++j) {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], lo[j], xa);
                    acch[i][j] = _mm512_dpbusd_epi32(acch[i][j], hi[j], xb);
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            const __m512 s = _mm512_loadu_ps(p->sw + ((size_t)(b0 + j) * G + g) * 16);
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_add_epi32(acc[i][j], acch[i][j]);
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i)
                t[i][j] = _mm512_add_ps(t[i][j], _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), s));
        }
        if (p->acc_out) {
            for (int i = 0; i < MR; ++i)
                for (int j = 0; j < NR; ++j) {
                    int32_t lane[16];
                    _mm512_storeu_si512(lane, acc[i][j]);
                    for (int l = 0; l < 16 && 16 * (b0 + j) + l < N; ++l)
                        p->acc_out[((size_t)(m0 + i) * N + 16 * (b0 + j) + l) * G + g] = lane[l];
                }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) store_out(p, m0 + i, b0 + j, t[i][j]);
}

/* Full 6 x 2 tile (6 rows x 2 blocks of 16 columns, all K) in inline asm with fixed
 * registers: through intrinsics GCC copies or spills the vpdpbusd accumulators on every
 * step.  The same operations as tile512, with r = 2i + j (row i, block j), per group g:
 *   acc[r] = c[g][i]                          symmetric: c = zconst * nrs (zero point)
 *   acc[r] = 0                                asymmetric
 *   acc[r] = acc[r] + sum over the group's octets of u[block j] . qx[row i]  (exact int32)
 *   acc[r] = acc[r] + z_j * c[g][i]           asymmetric: c = nrs, z_j the group's zero
 *                                             points of block j (at z, z + ss bytes)
 *   ao[g][r] = acc[r]                         when ao is not NULL (the test hook)
 *   t[r]   = t[r] + (float)acc[r] * s_j       (s_j: the group's scales of block j)
 * and t is stored to tout at the end.  zmm0-11 acc, zmm12-23 t, zmm24 the 0x0F mask,
 * zmm25-28 low/high nibbles of blocks 0 and 1, zmm29-30 the broadcast activations. */
#define LB_DP(x, w, a) "vpdpbusd %%zmm" #x ", %%zmm" #w ", %%zmm" #a "\n\t"
#define LB_ROW(row, a0, a1)                                                            \
    "vpbroadcastd " row ", %%zmm29\n\t"                                                \
    "vpbroadcastd 4" row ", %%zmm30\n\t"                                               \
    LB_DP(29, 25, a0) LB_DP(29, 27, a1) LB_DP(30, 26, a0) LB_DP(30, 28, a1)
#define LB_UNPACK(src, lo, hi)                                                         \
    "vmovdqu64 " src ", %%zmm" #lo "\n\t"                                              \
    "vpsrlw $4, %%zmm" #lo ", %%zmm" #hi "\n\t"                                        \
    "vpandd %%zmm24, %%zmm" #lo ", %%zmm" #lo "\n\t"                                   \
    "vpandd %%zmm24, %%zmm" #hi ", %%zmm" #hi "\n\t"
#define LB_ZERO(r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
#define LB_INIT_SYM(i, a0, a1) /* from the correction: loads, no vector ALU op */     \
    "vpbroadcastd " #i "*4(%[c]), %%zmm" #a0 "\n\t"                                   \
    "vpbroadcastd " #i "*4(%[c]), %%zmm" #a1 "\n\t"
#define LB_INIT_ZERO(i, a0, a1) LB_ZERO(a0) LB_ZERO(a1)
#define LB_CNONE(i, a0, a1) ""
#define LB_CASYM(i, a0, a1)                                                            \
    "vpmulld " #i "*4(%[c])%{1to16%}, %%zmm25, %%zmm29\n\t"                            \
    "vpmulld " #i "*4(%[c])%{1to16%}, %%zmm26, %%zmm30\n\t"                            \
    "vpaddd %%zmm29, %%zmm" #a0 ", %%zmm" #a0 "\n\t"                                   \
    "vpaddd %%zmm30, %%zmm" #a1 ", %%zmm" #a1 "\n\t"
#define LB_ZLOAD_SYM ""
#define LB_ZLOAD_ASYM                                                                  \
    "vmovdqu64 (%[z]), %%zmm25\n\t"                                                    \
    "vmovdqu64 (%[z],%[ss],1), %%zmm26\n\t"                                            \
    "add $64, %[z]\n\t"
#define LB_STORE(r) "vmovdqu64 %%zmm" #r ", " #r "*64(%[ao])\n\t"
#define LB_EPI(a, t, s)                                                                \
    "vcvtdq2ps %%zmm" #a ", %%zmm" #a "\n\t"                                           \
    "vmulps " s ", %%zmm" #a ", %%zmm" #a "\n\t"                                       \
    "vaddps %%zmm" #a ", %%zmm" #t ", %%zmm" #t "\n\t"
#define LB_EPI2(a0, a1, t0, t1) LB_EPI(a0, t0, "(%[s])") LB_EPI(a1, t1, "(%[s],%[ss],1)")
#define LB_TOUT(r, t) "vmovups %%zmm" #t ", " #r "*64(%[n])\n\t"
#define LB_TILE6X2(INIT, ZLOAD, CORR)                                                  \
    __asm__ volatile(                                                                  \
        "vpbroadcastd %[mask], %%zmm24\n\t"                                            \
        LB_ZERO(12) LB_ZERO(13) LB_ZERO(14) LB_ZERO(15) LB_ZERO(16) LB_ZERO(17)        \
        LB_ZERO(18) LB_ZERO(19) LB_ZERO(20) LB_ZERO(21) LB_ZERO(22) LB_ZERO(23)        \
        "3:\n\t" /* groups */                                                          \
        INIT(0, 0, 1) INIT(1, 2, 3) INIT(2, 4, 5) INIT(3, 6, 7) INIT(4, 8, 9)          \
        INIT(5, 10, 11)                                                                \
        "mov %[opg], %[n]\n\t"                                                         \
        "1:\n\t" /* octets of the group */                                             \
        LB_UNPACK("(%[w])", 25, 26)                                                    \
        LB_UNPACK("(%[w],%[bs],1)", 27, 28)                                            \
        LB_ROW("(%[q])", 0, 1)                                                         \
        LB_ROW("(%[q],%[ldq],1)", 2, 3)                                                \
        LB_ROW("(%[q],%[ldq],2)", 4, 5)                                                \
        LB_ROW("(%[q3])", 6, 7)                                                        \
        LB_ROW("(%[q3],%[ldq],1)", 8, 9)                                               \
        LB_ROW("(%[q3],%[ldq],2)", 10, 11)                                             \
        "add $64, %[w]\n\t"                                                            \
        "add $8, %[q]\n\t"                                                             \
        "add $8, %[q3]\n\t"                                                            \
        "dec %[n]\n\t"                                                                 \
        "jnz 1b\n\t"                                                                   \
        ZLOAD                                                                          \
        CORR(0, 0, 1) CORR(1, 2, 3) CORR(2, 4, 5) CORR(3, 6, 7) CORR(4, 8, 9)          \
        CORR(5, 10, 11)                                                                \
        "test %[ao], %[ao]\n\t"                                                        \
        "jz 2f\n\t"                                                                    \
        LB_STORE(0) LB_STORE(1) LB_STORE(2) LB_STORE(3) LB_STORE(4) LB_STORE(5)        \
        LB_STORE(6) LB_STORE(7) LB_STORE(8) LB_STORE(9) LB_STORE(10) LB_STORE(11)      \
        "add $768, %[ao]\n\t"                                                          \
        "2:\n\t"                                                                       \
        LB_EPI2(0, 1, 12, 13) LB_EPI2(2, 3, 14, 15) LB_EPI2(4, 5, 16, 17)              \
        LB_EPI2(6, 7, 18, 19) LB_EPI2(8, 9, 20, 21) LB_EPI2(10, 11, 22, 23)            \
        "add $64, %[s]\n\t"                                                            \
        "add %[cs], %[c]\n\t"                                                          \
        "decq %[g]\n\t"                                                                \
        "jnz 3b\n\t"                                                                   \
        "mov %[tout], %[n]\n\t"                                                        \
        LB_TOUT(0, 12) LB_TOUT(1, 13) LB_TOUT(2, 14) LB_TOUT(3, 15) LB_TOUT(4, 16)     \
        LB_TOUT(5, 17) LB_TOUT(6, 18) LB_TOUT(7, 19) LB_TOUT(8, 20) LB_TOUT(9, 21)     \
        LB_TOUT(10, 22) LB_TOUT(11, 23)                                                \
        : [w] "+r"(w), [q] "+r"(q), [q3] "+r"(q3), [n] "=&r"(n), [s] "+r"(s),          \
          [c] "+r"(c), [z] "+r"(z), [ao] "+r"(ao), [g] "+m"(G)                         \
        : [bs] "r"(bs), [ldq] "r"(ldq), [ss] "r"(ss), [cs] "m"(cstride),               \
          [opg] "m"(opg), [tout] "m"(tout), [mask] "m"(mask)                           \
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",      \
          "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",         \
          "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",      \
          "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30")
INLINE T512 void tile6x2_asm(const uint8_t *w, size_t bs, const int8_t *q, size_t ldq,
                             const int32_t *c, int64_t cstride, const float *s,
                             const int32_t *z, size_t ss, int64_t G, int64_t opg,
                             int32_t *ao, float *tout) {
    const int8_t *q3 = q + 3 * ldq;
    const int32_t mask = 0x0F0F0F0F;
    int64_t n;
    if (z) LB_TILE6X2(LB_INIT_ZERO, LB_ZLOAD_ASYM, LB_CASYM);
    else LB_TILE6X2(LB_INIT_SYM, LB_ZLOAD_SYM, LB_CNONE);
}

/* 6 rows x 2 blocks from m0, b0 */
T512 static void tile512_6x2(const problem *p, int64_t m0, int b0) {
    const int G = p->G, N = p->N;
    float t[12][16];
    int32_t *ao = p->acc_out ? (int32_t *)malloc((size_t)G * 12 * 16 * sizeof(int32_t)) : NULL;
    if (p->acc_out && !ao) { /* the test hook only: fall back to the intrinsic tiles */
        for (int i = 0; i < 6; i += 3) tile512(p, m0 + i, b0, 3, 2);
        return;
    }
    const size_t bstride = (size_t)p->Kp * 8;
    tile6x2_asm(p->w + (size_t)b0 * bstride, bstride, p->qx + (size_t)m0 * p->ldq,
                (size_t)p->ldq, p->nt + m0, (int64_t)p->M * 4, p->sw + (size_t)b0 * G * 16,
                p->zconst >= 0 ? NULL : p->zw + (size_t)b0 * G * 16, (size_t)G * 64, G, p->opg,
                ao, t[0]);
    if (ao) {
        for (int g = 0; g < G; ++g)
            for (int r = 0; r < 12; ++r)
                for (int l = 0; l < 16 && 16 * (b0 + r % 2) + l < N; ++l)
                    p->acc_out[((size_t)(m0 + r / 2) * N + 16 * (b0 + r % 2) + l) * G + g] =
                        ao[((size_t)g * 12 + r) * 16 + l];
        free(ao);
    }
    for (int r = 0; r < 12; ++r) store_out(p, m0 + r / 2, b0 + r % 2, _mm512_loadu_ps(t[r]));
}

T512 static void run512_tiles(const problem *p, int b_begin, int b_end, int64_t m_begin, int64_t m_end) {
    if (m_end - m_begin == 1) { /* one row: 4 blocks, so 8 vpdpbusd chains hide the latency
                                 * (1 x 4096 x 4096: 76 us with 2 blocks, 69 us with 4) */
        for (; b_begin + 4 <= b_end; b_begin += 4) tile512(p, m_begin, b_begin, 1, 4);
    }
    for (int b = b_begin; b < b_end; b += 2) {
        const int nr = b_end - b < 2 ? b_end - b : 2;
        for (int64_t m = m_begin; m < m_end; m += 4) {
            const int mr = m_end - m < 4 ? (int)(m_end - m) : 4;
            switch (mr * 4 + nr) {
                case 1 * 4 + 1: tile512(p, m, b, 1, 1); break;
                case 1 * 4 + 2: tile512(p, m, b, 1, 2); break;
                case 2 * 4 + 1: tile512(p, m, b, 2, 1); break;
                case 2 * 4 + 2: tile512(p, m, b, 2, 2); break;
                case 3 * 4 + 1: tile512(p, m, b, 3, 1); break;
                case 3 * 4 + 2: tile512(p, m, b, 3, 2); break;
                case 4 * 4 + 1: tile512(p, m, b, 4, 1); break;
                default: tile512(p, m, b, 4, 2); break;
            }
        }
    }
}

T512 static void run512(const problem *p, int b_begin, int b_end, int64_t m_begin, int64_t m_end) {
    if (p->nt) { /* full 6 x 2 tiles in asm, the rest below */
        int b = b_begin;
        for (; b + 2 <= b_end; b += 2)
            for (int64_t m = m_begin; m + 6 <= m_end; m += 6) tile512_6x2(p, m, b);
        const int64_t m6 = m_begin + (m_end - m_begin) / 6 * 6;
        if (m6 < m_end) run512_tiles(p, b_begin, b, m6, m_end);
        if (b < b_end) run512_tiles(p, b, b_end, m_begin, m_end);
        return;
    }
    run512_tiles(p, b_begin, b_end, m_begin, m_end);
}

/* ------------------------------------------------------------------------------ */
/* AVX2 tile: MR rows x one block (two ymm halves of 8 columns)                   */

INLINE T256 void tile256(const problem *p, int64_t m0, int b, const int MR) {
    const int G = p->G, opg = p->opg, Kp = p->Kp, N = p->N;
    const uint8_t *wb = p->w + (size_t)b * Kp * 8;
    const int8_t *qx = p->qx + (size_t)m0 * p->ldq;
    const __m256i m0f = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 t[2][2];
    __m256i acc[2][2];
    for (int i = 0; i < MR; ++i) t[i][0] = t[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < G; ++g) {
        for (int h = 0; h < 2; ++h) {
            __m256i z = _mm256_loadu_si256((const __m256i *)(p->zw + ((size_t)b * G + g) * 16 + 8 * h));
            for (int i = 0; i < MR; ++i)
                acc[i][h] = _mm256_mullo_epi32(z, _mm256_set1_epi32(p->nrs[(size_t)(m0 + i) * G + g]));
        }
        const size_t o0 = (size_t)g * opg;
        for (int o = 0; o < opg; ++o) {
            __m256i lo[2], hi[2];
            for (int h = 0; h < 2; ++h) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(wb + (o0 + o) * 64 + 32 * h));
                lo[h] = _mm256_and_si256(v, m0f);
                hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
            }
            const int8_t *qk = qx + (o0 + o) * 8;
            for (int i = 0; i < MR; ++i) {
                int32_t a4, b4;
                memcpy(&a4, qk + (size_t)i * p->ldq, 4);
                memcpy(&b4, qk + (size_t)i * p->ldq + 4, 4);
                const __m256i xa = _mm256_set1_epi32(a4), xb = _mm256_set1_epi32(b4);
                for (int h = 0; h < 2; ++h) {
                    /* each int16 pair sum is at most 2*15*127 = 3810: no saturation */
                    __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], xa),
                                                   _mm256_maddubs_epi16(hi[h], xb));
                    acc[i][h] = _mm256_add_epi32(acc[i][h], _mm256_madd_epi16(s16, ones));
                }
            }
        }
        for (int h = 0; h < 2; ++h) {
            const __m256 s = _mm256_loadu_ps(p->sw + ((size_t)b * G + g) * 16 + 8 * h);
            for (int i = 0; i < MR; ++i)
                t[i][h] = _mm256_add_ps(t[i][h], _mm256_mul_ps(_mm256_cvtepi32_ps(acc[i][h]), s));
        }
        if (p->acc_out) {
            for (int i = 0; i < MR; ++i) {
                int32_t lane[16];
                _mm256_storeu_si256((__m256i *)lane, acc[i][0]);
                _mm256_storeu_si256((__m256i *)(lane + 8), acc[i][1]);
                for (int l = 0; l < 16 && 16 * b + l < N; ++l)
                    p->acc_out[((size_t)(m0 + i) * N + 16 * b + l) * G + g] = lane[l];
            }
        }
    }
    for (int i = 0; i < MR; ++i) {
        float out[16];
        const __m256 sx = _mm256_set1_ps(p->sx[m0 + i]);
        _mm256_storeu_ps(out, _mm256_mul_ps(t[i][0], sx));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(t[i][1], sx));
        for (int l = 0; l < 16 && 16 * b + l < N; ++l) {
            float v = out[l];
            if (p->bias) v = v + p->bias[16 * b + l];
            p->y[(size_t)(m0 + i) * N + 16 * b + l] = v;
        }
    }
}

T256 static void run256(const problem *p, int b_begin, int b_end, int64_t m_begin, int64_t m_end) {
    for (int b = b_begin; b < b_end; ++b)
        for (int64_t m = m_begin; m < m_end; m += 2) {
            if (m_end - m >= 2) tile256(p, m, b, 2);
            else tile256(p, m, b, 1);
        }
}

/* ------------------------------------------------------------------------------ */
/* portable scalar path                                                           */

static void run_scalar(const problem *p, int b_begin, int b_end, int64_t m_begin, int64_t m_end) {
    const int G = p->G, opg = p->opg, Kp = p->Kp, N = p->N;
    for (int b = b_begin; b < b_end; ++b) {
        const uint8_t *wb = p->w + (size_t)b * Kp * 8;
        for (int64_t m = m_begin; m < m_end; ++m) {
            const int8_t *qx = p->qx + (size_t)m * p->ldq;
            float t[16];
            int32_t acc[16];
            for (int l = 0; l < 16; ++l) t[l] = 0.0f;
            for (int g = 0; g < G; ++g) {
                const int32_t nr = p->nrs[(size_t)m * G + g];
                for (int l = 0; l < 16; ++l) acc[l] = p->zw[((size_t)b * G + g) * 16 + l] * nr;
                for (int o = g * opg; o < (g + 1) * opg; ++o) {
                    const uint8_t *wo = wb + (size_t)o * 64;
                    const int8_t *qk = qx + (size_t)o * 8;
                    for (int l = 0; l < 16; ++l)
                        for (int i = 0; i < 4; ++i) {
                            const int byte = wo[4 * l + i];
                            acc[l] += (byte & 15) * qk[i] + (byte >> 4) * qk[4 + i];
                        }
                }
                for (int l = 0; l < 16; ++l)
                    t[l] = t[l] + (float)acc[l] * p->sw[((size_t)b * G + g) * 16 + l];
                if (p->acc_out)
                    for (int l = 0; l < 16 && 16 * b + l < N; ++l)
                        p->acc_out[((size_t)m * N + 16 * b + l) * G + g] = acc[l];
            }
            for (int l = 0; l < 16 && 16 * b + l < N; ++l) {
                float v = t[l] * p->sx[m];
                if (p->bias) v = v + p->bias[16 * b + l];
                p->y[(size_t)m * N + 16 * b + l] = v;
            }
        }
    }
}

/* ------------------------------------------------------------------------------ */
/* tasks and entry points                                                         */

#define QCHUNK 8
static void quant_task(void *vp) {
    const problem *p = (const problem *)vp;
    const int gk = p->opg * 8;
    const int use512 = p->isa >= 1 && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    for (;;) {
        const int64_t r0 = atomic_fetch_add(p->qnext, QCHUNK);
        if (r0 >= p->M) break;
        const int64_t r1 = r0 + QCHUNK < p->M ? r0 + QCHUNK : p->M;
        for (int64_t m = r0; m < r1; ++m) {
            const float *x = p->x + (size_t)m * p->K;
            int8_t *q = p->qx + (size_t)m * p->ldq;
            int32_t *nrs = p->nrs + (size_t)m * p->G;
            if (use512) quant_row_512(x, p->xmul, p->K, p->Kp, q, p->sx + m, nrs, p->G, gk);
            else quant_row_scalar(x, p->xmul, p->K, p->Kp, q, p->sx + m, nrs, p->G, gk);
            if (p->nt)
                for (int g = 0; g < p->G; ++g)
                    p->nt[(size_t)g * p->M + m] = p->zconst >= 0 ? p->zconst * nrs[g] : nrs[g];
        }
    }
}

/* Work is handed out in chunks (a panel of PANEL blocks x up to MCHUNK rows) from an
 * atomic counter, so a thread that the OS preempts (2 shared cores) delays at most one
 * chunk instead of half the matrix. Chunks are panel-major: a weight panel is reused
 * across consecutive row chunks. */
#define PANEL 4
#define MCHUNK 48 /* rows: a multiple of the 6-row tile */
static void gemm_task(void *vp) {
    const problem *p = (const problem *)vp;
    const int npan = (p->NB + PANEL - 1) / PANEL;
    const int64_t nm = (p->M + MCHUNK - 1) / MCHUNK;
    const int64_t nchunks = npan * nm;
    for (;;) {
        const int64_t c = atomic_fetch_add_explicit(p->next, 1, memory_order_relaxed);
        if (c >= nchunks) break;
        const int b0 = (int)(c / nm) * PANEL;
        const int b1 = b0 + PANEL < p->NB ? b0 + PANEL : p->NB;
        const int64_t m0 = (c % nm) * MCHUNK;
        const int64_t m1 = m0 + MCHUNK < p->M ? m0 + MCHUNK : p->M;
        if (p->isa == 2) run512(p, b0, b1, m0, m1);
        else if (p->isa == 1) run256(p, b0, b1, m0, m1);
        else run_scalar(p, b0, b1, m0, m1);
    }
}

/* Returns 0 on success, -1 on allocation failure, -2 on bad arguments. */
LB_API int lowbit_a8w4_linear(const float *x, const float *xmul, int64_t M, int K, int Kp,
                              const uint8_t *w, const float *sw, const int32_t *zw, int N,
                              int G, int opg,
                              int zconst, const float *bias, float *y, int32_t *acc_out,
                              int isa, int nthreads) {
    if (M < 1 || K < 1 || Kp < K || Kp % 8 || N < 1 || G < 1 || opg < 1 || G * opg * 8 != Kp ||
        zconst > 15)
        return -2;
    if (isa > lowbit_a8w4_cpu_level() || isa < 0) return -2;
    problem p = {.x = x, .xmul = xmul, .M = M, .K = K, .Kp = Kp, .N = N, .NB = (N + 15) / 16,
                 .G = G,
                 .opg = opg, .w = w, .sw = sw, .zw = zw, .bias = bias, .y = y,
                 .acc_out = acc_out, .isa = isa, .zconst = zconst};
    atomic_llong next = 0, qnext = 0;
    p.next = &next;
    p.qnext = &qnext;
    p.ldq = Kp + 64;
    p.qx = (int8_t *)aligned_alloc(64, ((size_t)M * p.ldq + 127) / 64 * 64);
    p.sx = (float *)malloc((size_t)M * sizeof(float));
    p.nrs = (int32_t *)malloc((size_t)M * G * sizeof(int32_t));
    if (isa == 2 && M >= 6) p.nt = (int32_t *)malloc((size_t)M * G * sizeof(int32_t));
    int rc = 0;
    if (!p.qx || !p.sx || !p.nrs || (isa == 2 && M >= 6 && !p.nt)) {
        rc = -1;
        goto done;
    }
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    const double work = (double)M * N * Kp;
    /* small problems stay on the calling thread: waking a worker costs more */
    int nq = (double)M * K < 65536.0 ? 1 : nthreads;
    if (nq > (M + QCHUNK - 1) / QCHUNK) nq = (int)((M + QCHUNK - 1) / QCHUNK);
    lb_pool_run(quant_task, &p, nq);
    const int ng = work < 1048576.0 ? 1 : nthreads;
    lb_pool_run(gemm_task, &p, ng);
done:
    free(p.qx);
    free(p.sx);
    free(p.nrs);
    free(p.nt);
    return rc;
}
