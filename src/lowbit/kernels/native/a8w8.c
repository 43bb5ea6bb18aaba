/*
 * lowbit native A8W8 GEMM: y = linear(x, W) with int8 activations (dynamic per token,
 * fused here, or given as codes with a scale per row / tensor) and int8 per-channel /
 * per-tensor weights, for x86-64.
 * Plain C over raw buffers; built with a8w4.c and common.c into one library.
 *
 * Paths (bit-identical: the integer part is exact, the float part the same operations
 * in the same order, built with -ffp-contract=off):
 *   2  avx512_vnni  vpdpbusd (u8 x s8 -> s32), 16 output columns per zmm
 *   0  scalar       portable C (also what an avx2-only CPU runs)
 *
 * Math, per row m and output column n (the contract of lowbit's cpu.int8.int_mm):
 *   x'      = x[m,k] * xmul[k] when xmul is given (SmoothQuant), else x        fp32
 *   s_x[m]  = amax|x'[m,:]| / 127, raised to FLT_MIN if below it; 1 if amax is not > 0
 *   qx[m,k] = rint(x'[m,k] / s_x[m])        (|x' / s_x| < 127.5: always in -127..127)
 *   acc     = sum_k qx[m,k] * w[n,k]                                   int32, exact
 *   y[m,n]  = ((float)acc * s_w[n]) * s_x[m]  (+ bias[n])               fp32
 * Given codes may carry a zero point per row (asymmetric activations, uint8 codes
 * shifted to int8 by the caller): acc = sum_k (qx - z[m]) * w = dot - z[m] * wsum[n].
 * Static activations (x and sxin given, qspec = {z, qlo, qhi, off}) are quantized here
 * with the calibrated scale: c = clamp(rint(x' / s) + z, qlo, qhi), fed in as c - off
 * (off 128 for uint8), the caller's zx[m] being z - off: lowbit's static codes exactly.
 *
 * VNNI trick: vpdpbusd multiplies unsigned by signed bytes, so the weights are stored
 * offset-binary, u = w + 128 (0..255), and the activations stay signed (they are the
 * dword broadcast operand).  Then sum_k u*q = acc + 128 * sum_k q, so each row's
 * accumulator starts at corr[m] = -128 * sum_k qx[m,k] (computed while quantizing).
 * vpdpbusd adds without saturation (wraps mod 2^32; every other integer sum here wraps
 * the same way) and the true acc fits in int32 (the caller checks K * 128 * 127, with
 * zero points K * 255 * 128, <= 2^31 - 1), so the result is exact.
 *
 * Weight layout (built by a8w8.py): N padded to NB = ceil(N/16) blocks of 16, K to Kp
 * (a multiple of 4), padding u = 128 (w = 0).  w[b][o][64 bytes], o = quad of 4 k's:
 *   byte 4*j + i = u[16b + j, 4o + i]      j = 0..15 (column), i = 0..3
 * so one 64-byte load is the 16 x 4 vpdpbusd operand.  Scales sw: fp32 [NB*16];
 * wsum: int32 [NB*16].
 *
 * Schedule: rows are quantized once per call (chunks of 8 rows, in parallel), then the
 * output is cut into chunks of a panel of 8 blocks (fewer when that leaves under 4
 * chunks per thread) x up to 64 rows, handed out from an atomic counter.  The AVX-512
 * tile is 4 rows x 4 blocks (16 zmm accumulators), or 1 row x 2 blocks when a single
 * row is left (M = 1 is bound by reading the weight: two streams per thread read it
 * faster than eight from a weight held in L3, 0.19-0.27 vs 0.23-0.28 ms for 4096 x 4096
 * in back-to-back runs).  It runs at about 420 GOP/s on one Zen 4
 * core (~65 int8 MACs per cycle, near the vpdpbusd zmm peak of 64 at ~3.3 GHz).
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define INLINE static inline __attribute__((always_inline))
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define T512Q __attribute__((target("avx512f,avx512bw,avx512vl")))

typedef struct {
    const float *x;      /* [M][K] fp32, or NULL when codes are given */
    const float *xmul;   /* [K] multiplier of x's columns, or NULL */
    const int8_t *qin;   /* [M][K] int8 codes given by the caller, or NULL */
    const float *sxin;   /* [M] their scales (with x: the static scales) */
    const int32_t *qspec; /* with x and sxin: {z, qlo, qhi, off} of static quantization */
    const int32_t *zx;   /* [M] their zero points, or NULL (symmetric) */
    const int32_t *wsum; /* [NB*16] sum_k w[n,k], for the zero points */
    int64_t M;
    int K, Kp, N, NB;
    int ldq;             /* row stride of qx: Kp + 64 (rows do not alias in L1 sets) */
    const uint8_t *w;
    const float *sw;
    const float *bias;
    float *y;
    int32_t *acc_out;    /* [M][N] or NULL */
    int8_t *qx;          /* [M][ldq] */
    float *sx;           /* [M] */
    int32_t *corr;       /* [M]: -128 * sum_k qx[m,k] */
    int isa;
    int panel;           /* blocks of 16 columns per work chunk */
    atomic_llong *next, *qnext;
} problem8;

/* ------------------------------------------------------------------------------ */
/* one row: quantize (or copy the given codes), zero the K padding, the correction */

/* -128 * sum, modulo 2^32 (all integer sums here wrap like the vector lanes; the true
 * accumulator fits in int32, so the wrapped result is exact) */
static int32_t wrap_corr(int32_t sum) { return (int32_t)(0u - 128u * (uint32_t)sum); }

static float row_scale(float amax) {
    if (!(amax > 0.0f)) return 1.0f;
    const float s = amax / 127.0f;
    return s < FLT_MIN ? FLT_MIN : s;
}

static void row_scalar(const problem8 *p, int64_t m) {
    const int K = p->K;
    int8_t *q = p->qx + (size_t)m * p->ldq;
    if (p->qin) {
        memcpy(q, p->qin + (size_t)m * K, (size_t)K);
        p->sx[m] = p->sxin[m];
    } else if (p->sxin) { /* static */
        const float *x = p->x + (size_t)m * K, *xm = p->xmul, s = p->sxin[m];
        const int *qs = p->qspec;
        for (int k = 0; k < K; ++k) {
            float v = rintf((xm ? x[k] * xm[k] : x[k]) / s) + (float)qs[0];
            v = v < (float)qs[1] ? (float)qs[1] : (v > (float)qs[2] ? (float)qs[2] : v);
            q[k] = (int8_t)((int)v - qs[3]);
        }
        p->sx[m] = s;
    } else {
        const float *x = p->x + (size_t)m * K, *xm = p->xmul;
        float amax = 0.0f;
        for (int k = 0; k < K; ++k) {
            const float a = fabsf(xm ? x[k] * xm[k] : x[k]);
            amax = a > amax ? a : amax;
        }
        const float s = row_scale(amax);
        for (int k = 0; k < K; ++k) {
            float v = rintf((xm ? x[k] * xm[k] : x[k]) / s);
            v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
            q[k] = (int8_t)v;
        }
        p->sx[m] = s;
    }
    int32_t sum = 0;
    for (int k = 0; k < K; ++k) sum += q[k];
    for (int k = K; k < p->Kp; ++k) q[k] = 0;
    p->corr[m] = wrap_corr(sum);
}

T512Q static void row_512(const problem8 *p, int64_t m) {
    const int K = p->K;
    int8_t *q = p->qx + (size_t)m * p->ldq;
    __m512i vsum = _mm512_setzero_si512();
    int k;
    if (p->qin) {
        const int8_t *src = p->qin + (size_t)m * K;
        for (k = 0; k < K; k += 16) {
            const __mmask16 mk = lb_mask16(K - k);
            const __m128i b = _mm_maskz_loadu_epi8(mk, src + k);
            _mm_mask_storeu_epi8(q + k, mk, b);
            vsum = _mm512_add_epi32(vsum, _mm512_cvtepi8_epi32(b));
        }
        p->sx[m] = p->sxin[m];
    } else if (p->sxin) { /* static: the scale, zero point and range are given */
        const float *x = p->x + (size_t)m * K;
        const int *qs = p->qspec;
        const __m512 vs = _mm512_set1_ps(p->sxin[m]), vz = _mm512_set1_ps((float)qs[0]),
                     lo = _mm512_set1_ps((float)qs[1]), hi = _mm512_set1_ps((float)qs[2]);
        const __m512i off = _mm512_set1_epi32(qs[3]);
        for (k = 0; k < K; k += 16) {
            const __mmask16 mk = lb_mask16(K - k);
            __m512 v = _mm512_div_ps(lb_row_lanes(x, p->xmul, k, mk), vs);
            v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), lo), hi);
            /* masked-off lanes would be z - off: keep them out of the sum */
            const __m512i qi = _mm512_maskz_sub_epi32(mk, _mm512_cvtps_epi32(v), off);
            _mm_mask_storeu_epi8(q + k, mk, _mm512_cvtsepi32_epi8(qi));
            vsum = _mm512_add_epi32(vsum, qi);
        }
        p->sx[m] = p->sxin[m];
    } else {
        const float *x = p->x + (size_t)m * K;
        __m512 vmax = _mm512_setzero_ps();
        for (k = 0; k < K; k += 16)
            vmax = _mm512_max_ps(vmax,
                                 _mm512_abs_ps(lb_row_lanes(x, p->xmul, k, lb_mask16(K - k))));
        const float s = row_scale(_mm512_reduce_max_ps(vmax));
        const __m512 vs = _mm512_set1_ps(s);
        for (k = 0; k < K; k += 16) {
            const __mmask16 mk = lb_mask16(K - k);
            /* x / s, rounded to nearest even by the default MXCSR mode; masked-off lanes
             * are 0 / s = 0, so they add nothing to the sum */
            const __m512 v = _mm512_div_ps(lb_row_lanes(x, p->xmul, k, mk), vs);
            const __m512i qi = _mm512_cvtps_epi32(v);
            _mm_mask_storeu_epi8(q + k, mk, _mm512_cvtsepi32_epi8(qi));
            vsum = _mm512_add_epi32(vsum, qi);
        }
        p->sx[m] = s;
    }
    for (k = K; k < p->Kp; ++k) q[k] = 0;
    p->corr[m] = wrap_corr(_mm512_reduce_add_epi32(vsum));
}

/* ------------------------------------------------------------------------------ */
/* AVX-512 VNNI tile: MR rows x NR blocks of 16 columns, full K                   */

/* acc += u8(w) x s8(x) in place.  Written in asm because GCC's register allocation of
 * _mm512_dpbusd_epi32 copies every accumulator on every step (and spills 4x4 tiles). */
INLINE T512 void dpbusd(__m512i *acc, __m512i w, __m512i x) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(w), "v"(x));
}

INLINE T512 void tile512(const problem8 *p, int64_t m0, int b0, const int MR, const int NR) {
    const int N = p->N, nq = p->Kp / 4, ldq = p->ldq;
    const size_t bstride = (size_t)p->Kp * 16; /* bytes per block of 16 columns */
    const uint8_t *wb = p->w + (size_t)b0 * bstride;
    const int8_t *qx = p->qx + (size_t)m0 * ldq;
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
        const __m512i c = _mm512_set1_epi32(p->corr[m0 + i]);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) acc[i][j] = c;
    }
    for (int o = 0; o < nq; ++o) {
        __m512i wv[8];
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) wv[j] = _mm512_loadu_si512(wb + j * bstride + (size_t)o * 64);
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
            int32_t a4;
            memcpy(&a4, qx + (size_t)i * ldq + 4 * (size_t)o, 4);
            const __m512i xa = _mm512_set1_epi32(a4);
#pragma GCC unroll 8
            for (int j = 0; j < NR; ++j) dpbusd(&acc[i][j], wv[j], xa);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
        const int n0 = 16 * (b0 + j);
        const __mmask16 mk = lb_mask16(N - n0);
        const __m512 s = _mm512_loadu_ps(p->sw + n0);
        const __m512 bv = p->bias ? _mm512_maskz_loadu_ps(mk, p->bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
            if (p->zx)
                acc[i][j] = _mm512_sub_epi32(acc[i][j], _mm512_mullo_epi32(
                    _mm512_set1_epi32(p->zx[m0 + i]), _mm512_loadu_si512(p->wsum + n0)));
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), s);
            v = _mm512_mul_ps(v, _mm512_set1_ps(p->sx[m0 + i]));
            if (p->bias) v = _mm512_add_ps(v, bv);
            _mm512_mask_storeu_ps(p->y + (size_t)(m0 + i) * N + n0, mk, v);
            if (p->acc_out)
                _mm512_mask_storeu_epi32(p->acc_out + (size_t)(m0 + i) * N + n0, mk, acc[i][j]);
        }
    }
}

T512 static void run512(const problem8 *p, int b_begin, int b_end, int64_t m_begin,
                        int64_t m_end) {
    int64_t m = m_begin;
    for (; m + 4 <= m_end; m += 4)
        for (int b = b_begin; b < b_end; b += 4) {
            switch (b_end - b) {
                case 1: tile512(p, m, b, 4, 1); break;
                case 2: tile512(p, m, b, 4, 2); break;
                case 3: tile512(p, m, b, 4, 3); break;
                default: tile512(p, m, b, 4, 4); break;
            }
        }
    const int mr = (int)(m_end - m);
    if (mr == 0) return;
    const int step = mr == 1 ? 2 : 4;
    for (int b = b_begin; b < b_end; b += step) {
        const int nr = b_end - b < step ? b_end - b : step;
        switch (mr * 16 + nr) {
            case 1 * 16 + 1: tile512(p, m, b, 1, 1); break;
            case 1 * 16 + 2: tile512(p, m, b, 1, 2); break;
            case 2 * 16 + 1: tile512(p, m, b, 2, 1); break;
            case 2 * 16 + 2: tile512(p, m, b, 2, 2); break;
            case 2 * 16 + 3: tile512(p, m, b, 2, 3); break;
            case 2 * 16 + 4: tile512(p, m, b, 2, 4); break;
            case 3 * 16 + 1: tile512(p, m, b, 3, 1); break;
            case 3 * 16 + 2: tile512(p, m, b, 3, 2); break;
            case 3 * 16 + 3: tile512(p, m, b, 3, 3); break;
            default: tile512(p, m, b, 3, 4); break;
        }
    }
}

/* ------------------------------------------------------------------------------ */
/* portable scalar path, same layout and float order                              */

static void run_scalar(const problem8 *p, int b_begin, int b_end, int64_t m_begin,
                       int64_t m_end) {
    const int N = p->N, nq = p->Kp / 4;
    for (int b = b_begin; b < b_end; ++b) {
        const uint8_t *wb = p->w + (size_t)b * p->Kp * 16;
        for (int64_t m = m_begin; m < m_end; ++m) {
            const int8_t *qx = p->qx + (size_t)m * p->ldq;
            uint32_t ua[16]; /* unsigned: wraps mod 2^32 like the vector lanes */
            int32_t acc[16];
            for (int l = 0; l < 16; ++l) ua[l] = (uint32_t)p->corr[m];
            for (int o = 0; o < nq; ++o)
                for (int l = 0; l < 16; ++l)
                    for (int i = 0; i < 4; ++i)
                        ua[l] += (uint32_t)(wb[(size_t)o * 64 + 4 * l + i] * qx[4 * o + i]);
            for (int l = 0; l < 16; ++l) {
                if (p->zx) ua[l] -= (uint32_t)p->zx[m] * (uint32_t)p->wsum[16 * b + l];
                acc[l] = (int32_t)ua[l];
            }
            for (int l = 0; l < 16 && 16 * b + l < N; ++l) {
                const size_t at = (size_t)m * N + 16 * b + l;
                float v = (float)acc[l] * p->sw[16 * b + l];
                v = v * p->sx[m];
                if (p->bias) v = v + p->bias[16 * b + l];
                p->y[at] = v;
                if (p->acc_out) p->acc_out[at] = acc[l];
            }
        }
    }
}

/* ------------------------------------------------------------------------------ */
/* tasks and the entry point                                                      */

#define QCHUNK 8
static void quant_task(void *vp) {
    const problem8 *p = (const problem8 *)vp;
    for (;;) {
        const int64_t r0 = atomic_fetch_add(p->qnext, QCHUNK);
        if (r0 >= p->M) break;
        const int64_t r1 = r0 + QCHUNK < p->M ? r0 + QCHUNK : p->M;
        for (int64_t m = r0; m < r1; ++m) {
            if (p->isa == 2) row_512(p, m);
            else row_scalar(p, m);
        }
    }
}

#define PANEL 8
#define MCHUNK 64
static void gemm_task(void *vp) {
    const problem8 *p = (const problem8 *)vp;
    const int panel = p->panel;
    const int npan = (p->NB + panel - 1) / panel;
    const int64_t nm = (p->M + MCHUNK - 1) / MCHUNK;
    const int64_t nchunks = npan * nm;
    for (;;) {
        const int64_t c = atomic_fetch_add_explicit(p->next, 1, memory_order_relaxed);
        if (c >= nchunks) break;
        const int b0 = (int)(c / nm) * panel;
        const int b1 = b0 + panel < p->NB ? b0 + panel : p->NB;
        const int64_t m0 = (c % nm) * MCHUNK;
        const int64_t m1 = m0 + MCHUNK < p->M ? m0 + MCHUNK : p->M;
        if (p->isa == 2) run512(p, b0, b1, m0, m1);
        else run_scalar(p, b0, b1, m0, m1);
    }
}

/* x: fp32 [M][K] (dynamic per-row quantization here, or static when sxin and qspec are
 * given; xmul: NULL or fp32 [K], multiplies x's columns first), or NULL and qin int8
 * [M][K] with
 * sxin fp32 [M] (given codes) and zx int32 [M] (their zero points) or NULL; wsum is
 * read only with zx.  w: the packed weight, sw fp32 [NB*16].  acc_out: NULL
 * or int32 [M][N].  isa: 2 or 0.  Returns 0, -1 (out of memory) or -2 (bad arguments). */
LB_API int lowbit_a8w8_linear(const float *x, const float *xmul, const int8_t *qin,
                              const float *sxin, const int32_t *qspec, const int32_t *zx,
                              int64_t M, int K, int Kp, const uint8_t *w,
                              const float *sw, const int32_t *wsum, int N,
                              const float *bias, float *y, int32_t *acc_out, int isa,
                              int nthreads) {
    const int stat = x && sxin;
    if (M < 1 || K < 1 || Kp < K || Kp % 4 || N < 1 || (!x && (!qin || !sxin)) ||
        (zx && ((x && !stat) || !wsum)) || (stat && !qspec) ||
        (stat && (qspec[1] > qspec[2] || qspec[1] - qspec[3] < -128 || qspec[2] - qspec[3] > 127)))
        return -2;
    if ((isa != 0 && isa != 2) || isa > lowbit_a8w4_cpu_level()) return -2;
    problem8 p = {.x = x, .xmul = x ? xmul : NULL, .qin = x ? NULL : qin, .sxin = sxin,
                  .qspec = stat ? qspec : NULL, .zx = zx, .wsum = wsum,
                  .M = M, .K = K, .Kp = Kp, .N = N, .NB = (N + 15) / 16, .w = w, .sw = sw,
                  .bias = bias, .y = y,
                  .acc_out = acc_out, .isa = isa};
    atomic_llong next = 0, qnext = 0;
    p.next = &next;
    p.qnext = &qnext;
    p.ldq = Kp + 64;
    p.qx = (int8_t *)aligned_alloc(64, ((size_t)M * p.ldq + 127) / 64 * 64);
    p.sx = (float *)malloc((size_t)M * sizeof(float));
    p.corr = (int32_t *)malloc((size_t)M * sizeof(int32_t));
    int rc = 0;
    if (!p.qx || !p.sx || !p.corr) {
        rc = -1;
        goto done;
    }
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    /* small problems stay on the calling thread: waking a worker costs more */
    int nq = (double)M * K < 65536.0 ? 1 : nthreads;
    if (nq > (M + QCHUNK - 1) / QCHUNK) nq = (int)((M + QCHUNK - 1) / QCHUNK);
    lb_pool_run(quant_task, &p, nq);
    const int ng = (double)M * N * Kp < 1048576.0 ? 1 : nthreads;
    /* narrow panels when there would be fewer than 4 chunks per thread (small N) */
    const int64_t nm = (M + MCHUNK - 1) / MCHUNK;
    p.panel = PANEL;
    while (p.panel > 2 && (p.NB + p.panel - 1) / p.panel * nm < 4 * ng) p.panel /= 2;
    lb_pool_run(gemm_task, &p, ng);
done:
    free(p.qx);
    free(p.sx);
    free(p.corr);
    return rc;
}
