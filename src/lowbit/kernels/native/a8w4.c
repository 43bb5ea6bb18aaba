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
 * output is cut into chunks of one panel of 4 blocks (64 columns) x up to 64 rows,
 * handed out from an atomic counter to the caller and the pool threads. Within a
 * chunk the AVX-512 tile is 4 rows x 2 blocks: per group 8 zmm int32 accumulators for
 * the low nibbles and 8 for the high ones (two independent vpdpbusd chains instead of
 * one twice as deep: 8-10% faster than a 4 x 3 tile with one accumulator each), 8 zmm
 * fp32 partial sums t, weights unpacked with vpandd / vpsrlw in registers.
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
    int isa;
    int zconst; /* >= 0: every zero point equals zconst (symmetric: 8); -1: use zw */
    atomic_llong *next;  /* work counter of gemm_task (chunks) */
    atomic_llong *qnext; /* work counter of quant_task (rows) */
} problem;

/* ------------------------------------------------------------------------------ */
/* activation quantization, one row                                               */

#define QUANT_TAIL_BODY                                                            \
    for (int kk = K; kk < Kp; ++kk) q[kk] = 0;                                     \
    *sx = s;                                                                       \
    for (int gi = 0; gi < G; ++gi) {                                               \
        int32_t sum = 0;                                                           \
        for (int kk = gi * gk; kk < (gi + 1) * gk; ++kk) sum += q[kk];             \
        nrs[gi] = -sum;                                                            \
    }

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
    QUANT_TAIL_BODY
}

T512Q static void quant_row_512(const float *x, const float *xm, int K, int Kp, int8_t *q,
                               float *sx, int32_t *nrs, int G, int gk) {
    __m512 vmax = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(lb_row_lanes(x, xm, k, m)));
    }
    float amax = _mm512_reduce_max_ps(vmax);
    float s = amax / 127.0f;
    if (s == 0.0f) s = 1.0f;
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        __m512 v = _mm512_div_ps(lb_row_lanes(x, xm, k, m), vs);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_mask_storeu_epi8(q + k, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    QUANT_TAIL_BODY
}

/* ------------------------------------------------------------------------------ */
/* AVX-512 VNNI tile: MR rows x NR blocks of 16 columns, full K                   */

INLINE T512 void tile512(const problem *p, int64_t m0, int b0, const int MR, const int NR) {
    const int G = p->G, opg = p->opg, Kp = p->Kp, N = p->N;
    const size_t bstride = (size_t)Kp * 8; /* bytes per block of 16 rows */
    const uint8_t *wb = p->w + (size_t)b0 * bstride;
    const int8_t *qx = p->qx + (size_t)m0 * p->ldq;
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    __m512 t[4][2];
    __m512i acc[4][2], acch[4][2]; /* low and high nibbles' sums: two independent chains */
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
#pragma GCC unroll 2
            for (int j = 0; j < NR; ++j) acch[i][j] = _mm512_setzero_si512();
        const size_t o0 = (size_t)g * opg;
        for (int o = 0; o < opg; ++o) {
            __m512i lo[2], hi[2];
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
    for (int j = 0; j < NR; ++j) {
        const int n0 = 16 * (b0 + j);
        const __mmask16 mk = N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1u);
        const __m512 bv = p->bias ? _mm512_maskz_loadu_ps(mk, p->bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
            __m512 v = _mm512_mul_ps(t[i][j], _mm512_set1_ps(p->sx[m0 + i]));
            if (p->bias) v = _mm512_add_ps(v, bv);
            _mm512_mask_storeu_ps(p->y + (size_t)(m0 + i) * N + n0, mk, v);
        }
    }
}

T512 static void run512(const problem *p, int b_begin, int b_end, int64_t m_begin, int64_t m_end) {
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
            if (use512)
                quant_row_512(x, p->xmul, p->K, p->Kp, q, p->sx + m, p->nrs + (size_t)m * p->G,
                              p->G, gk);
            else
                quant_row_scalar(x, p->xmul, p->K, p->Kp, q, p->sx + m,
                                 p->nrs + (size_t)m * p->G, p->G, gk);
        }
    }
}

/* Work is handed out in chunks (a panel of PANEL blocks x up to MCHUNK rows) from an
 * atomic counter, so a thread that the OS preempts (2 shared cores) delays at most one
 * chunk instead of half the matrix. Chunks are panel-major: a weight panel is reused
 * across consecutive row chunks. */
#define PANEL 4
#define MCHUNK 64
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
    int rc = 0;
    if (!p.qx || !p.sx || !p.nrs) {
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
    return rc;
}
