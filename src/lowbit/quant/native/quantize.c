/* Native quantize / dequantize kernels for lowbit (fp32 in, packed codes out, and back).
 *
 * Plain C over raw buffers, loaded with ctypes (see lowbit/_native.py). Every kernel is
 * bit-exact with the torch reference in lowbit/quant/functional.py and mx.py:
 *   - divisions are real IEEE divisions (never a reciprocal multiply), no FMA contraction,
 *     rounding is the default round-to-nearest-even of the FPU (rintf / vrndscaleps);
 *   - float element codes are computed from the fp32 bits: round the mantissa to the
 *     format's width (ties to even), subnormals via an exact power-of-two scaling, and
 *     saturation to the largest finite code.
 *
 * Layout: x is a flat array of n floats made of contiguous blocks of L elements (one scale
 * per block). Work is cut into pieces of at most S elements (whole blocks when L <= S,
 * parts of one block otherwise), pieces are split over threads. Codes are encoded one byte
 * per element into a per-thread buffer, then packed (element 0 in the low bits).
 * Each hot loop has an AVX-512 version in quantize_avx512.c (chosen at run time) and a
 * scalar one here; kernels.h holds the shared types and the element encoder.
 */
#include <pthread.h>
#include <sys/mman.h>

#include "kernels.h"

#define EXPORT __attribute__((visibility("default")))

static void enc_init(Enc *e, const int32_t *ip, const float *fp) {
    e->kind = ip[0]; e->bits = ip[1]; e->mbits = ip[2]; e->bias = ip[3]; e->maxmag = ip[4];
    e->mask = (1 << e->bits) - 1;
    e->qmin = fp[0]; e->qmax = fp[1]; e->maxval = fp[2]; e->minnorm = fp[3];
    e->submul = fp[4]; e->post = fp[5];
}

/* y = (mul ? x * s : x / s) * post, then one code byte per element. */
void enc_range_c(const float *x, i64 n, float s, int mul, float zp, const Enc *e,
                 uint8_t *out) {
    for (i64 i = 0; i < n; i++) {
        float y = mul ? x[i] * s : x[i] / s;
        if (e->post != 1.0f) y = y * e->post;
        out[i] = enc1(y, zp, e);
    }
}

/* amax (mode 0) or min/max (mode 1) of x[0:n]; returns 1 if x holds NaN/Inf. */
int stats_c(const float *x, i64 n, int mode, float *a, float *b) {
    uint32_t m = 0;
    float lo = x[0], hi = x[0];
    for (i64 i = 0; i < n; i++) {
        uint32_t ab = f2u(x[i]) & 0x7fffffffu;
        m = ab > m ? ab : m;
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    if (m >= 0x7f800000u) return 1;
    if (mode == 0) *a = u2f(m); else { *a = lo; *b = hi; }
    return 0;
}

/* Codes and bytes per packing group: lcm(bits, 8) bits (lb.formats.pack's layout). */
static void pack_groups(int bits, int *per, int *nb) {
    int l = bits;
    while (l % 8) l += bits;
    *per = l / bits; *nb = l / 8;
}

void pack_c(const uint8_t *c, i64 n, int bits, uint8_t *out) {
    int per, nb;
    pack_groups(bits, &per, &nb);
    for (i64 g = 0; g < n / per; g++) {
        uint64_t w = 0;
        for (int j = 0; j < per; j++) w |= (uint64_t)c[g * per + j] << (j * bits);
        for (int k = 0; k < nb; k++) out[g * nb + k] = (uint8_t)(w >> (8 * k));
    }
}

void unpack_c(const uint8_t *p, i64 n, int bits, uint8_t *c) {
    int per, nb;
    pack_groups(bits, &per, &nb);
    const uint64_t mask = (1u << bits) - 1;
    for (i64 g = 0; g < n / per; g++) {
        uint64_t w = 0;
        for (int k = 0; k < nb; k++) w |= (uint64_t)p[g * nb + k] << (8 * k);
        for (int j = 0; j < per; j++) c[g * per + j] = (uint8_t)((w >> (j * bits)) & mask);
    }
}

/* out = (table[c] - zp) * m  (zp only if has_zp); tsize <= 16: a register table. */
void dec_range_c(const uint8_t *c, i64 n, const float *table, float m, float zp, int has_zp,
                 float *out) {
    for (i64 i = 0; i < n; i++) {
        float v = table[c[i]];
        if (has_zp) v = v - zp;
        out[i] = v * m;
    }
}

/* ---- work split and threads ----------------------------------------------------- */

static int use_avx512 = -1;

/* 1 when the AVX-512 paths run; level < 0 asks, 0 forces scalar, 1 asks for AVX-512. */
EXPORT int lbq_isa(int level) {
#if LBQ_X86
    if (use_avx512 < 0) { merge_idx_init(); use_avx512 = cpu_avx512(); }
    if (level == 1) use_avx512 = cpu_avx512();
#else
    (void)level;
    use_avx512 = 0;
#endif
    if (level == 0) use_avx512 = 0;
    return use_avx512;
}

static inline int stats(const Job *j, const float *x, i64 n, int mode, float *a, float *b) {
    (void)j;
#if LBQ_X86
    if (j->avx) return stats_v(x, n, mode, a, b);
#endif
    return stats_c(x, n, mode, a, b);
}

static inline void enc_range(const Job *j, const Enc *e, const float *x, i64 n, float s,
                             int mul, float zp, uint8_t *out) {
    (void)j;
#if LBQ_X86
    if (j->avx) { enc_range_v(x, n, s, mul, zp, e, out); return; }
#endif
    enc_range_c(x, n, s, mul, zp, e, out);
}

static const float TINY = 1.17549435e-38f; /* smallest normal float32 */

/* Scale (and zero point) of one block, as functional._safe_scale / qparams_from_range. */
static float block_qparams(const Job *j, float lo, float hi, int32_t *z) {
    if (!j->zp) { /* symmetric: lo is amax */
        float s = lo / j->smax;
        return !(lo > 0) ? 1.0f : s < TINY ? TINY : s;
    }
    lo = lo > 0 ? 0.0f : lo;
    hi = hi < 0 ? 0.0f : hi;
    float r = hi - lo, s = r / j->smax;
    s = !(r > 0) ? 1.0f : s < TINY ? TINY : s;
    float zf = j->enc.qmin - rintf(lo / s);
    zf = zf < j->enc.qmin ? j->enc.qmin : zf;
    zf = zf > j->enc.qmax ? j->enc.qmax : zf;
    *z = (int32_t)zf;
    return s;
}

/* MX block: e8m0 code and divisor from amax's bits (FLOOR / CEIL / EVEN). */
static inline int mx_exponent(const Job *j, uint32_t bits) {
    if (j->mx_mode == 2) bits = (bits + (1u << (23 - j->mx_mbits - 1))) & 0x7F800000u;
    int e = (int)((bits >> 23) & 0xFF) - 127;
    if (j->mx_mode == 1) e += (bits & 0x7FFFFF) != 0;
    e -= j->mx_emax;
    return e < -127 ? -127 : e > 127 ? 127 : e;
}

static void piece_bounds(const Job *j, i64 p, i64 *b0, i64 *b1, i64 *start, i64 *len) {
    if (j->per_piece) {
        *b0 = p * j->per_piece;
        *b1 = *b0 + j->per_piece < j->nblocks ? *b0 + j->per_piece : j->nblocks;
        *start = *b0 * j->L;
        *len = (*b1 - *b0) * j->L;
    } else {
        i64 ppb = (j->L + j->S - 1) / j->S;
        *b0 = p / ppb; *b1 = *b0 + 1;
        i64 k = p % ppb;
        *start = *b0 * j->L + k * j->S;
        *len = j->L - k * j->S < j->S ? j->L - k * j->S : j->S;
    }
}

static void quant_block(Job *j, i64 b, const float *x, i64 n, uint8_t *buf) {
    float s = 1.0f, zp = 0.0f;
    int mul = 0;
    const Enc *e = &j->enc;
    if (j->op == Q_GIVEN) {
        s = j->scale[b];
        if (j->zp) zp = (float)j->zp[b];
    } else if (j->op == Q_FUSED) {
        float lo = 0, hi = 0;
        int32_t z = 0;
        if (stats(j, x, n, j->zp ? 1 : 0, &lo, &hi)) { j->bad = 1; memset(buf, 0, n); return; }
        s = block_qparams(j, lo, hi, &z);
        j->scale[b] = s;
        if (j->zp) { j->zp[b] = z; zp = (float)z; }
    } else {
        float amax;
        if (stats(j, x, n, 0, &amax, NULL)) { /* MX: NaN block; NVFP4 was checked before */
            j->scale8[b] = 0xFF; memset(buf, 0, n); j->bad |= j->op == Q_NVFP4; return;
        }
        if (j->op == Q_MX) {
            int E = mx_exponent(j, f2u(amax));
            j->scale8[b] = (uint8_t)(E + 127);
            s = u2f((uint32_t)((E < -126 ? -126 : E) + 127) << 23);
        } else { /* NVFP4, as mx.nvfp4_encode */
            float t = (amax / 6.0f) / j->ts;
            t = t < 0.015625f ? 0.015625f : t;
            t = t > 448.0f ? 448.0f : t;
            uint8_t c8 = enc1(t, 0.0f, &j->enc8);
            j->scale8[b] = c8;
            float s8 = u2f((uint32_t)(c8 & 0x7F) << 20) * 0x1p120f; /* e4m3 decode, exact */
            s = j->inv_ts / s8;
            mul = 1;
        }
    }
    enc_range(j, e, x, n, s, mul, zp, buf);
}

static void quant_pieces(Job *j, i64 p0, i64 p1) {
    uint8_t buf[S_MAX];
    for (i64 p = p0; p < p1; p++) {
        i64 b0, b1, start, len;
        piece_bounds(j, p, &b0, &b1, &start, &len);
        uint8_t *dst = j->bits == 8 ? j->codes + start : buf;
        i64 b = b0;
#if LBQ_X86 /* 16 MX blocks of 32 / NVFP4 blocks of 16 at a time */
        if (j->avx && ((j->op == Q_MX && j->L == 32) || (j->op == Q_NVFP4 && j->L == 16))) {
            for (; b + 16 <= b1; b += 16) {
                const float *xb = j->x + b * j->L;
                uint8_t *cb = dst + (b - b0) * j->L;
                if (j->op == Q_MX) mx_group(j, xb, cb, j->scale8 + b);
                else if (nvfp4_group(j, xb, cb, j->scale8 + b)) { j->bad = 1; return; }
            }
        }
#endif
        for (; b < b1; b++) {
            i64 s0 = b * j->L > start ? b * j->L : start;
            i64 s1 = (b + 1) * j->L < start + len ? (b + 1) * j->L : start + len;
            quant_block(j, b, j->x + s0, s1 - s0, dst + (s0 - start));
        }
        if (j->bits < 8) {
            uint8_t *out = j->codes + start * j->bits / 8;
#if LBQ_X86
            if (j->avx) { pack_v(buf, len, j->bits, out); continue; }
#endif
            pack_c(buf, len, j->bits, out);
        }
    }
}

static void dequant_pieces(Job *j, i64 p0, i64 p1) {
    uint8_t buf[S_MAX];
    for (i64 p = p0; p < p1; p++) {
        i64 b0, b1, start, len;
        piece_bounds(j, p, &b0, &b1, &start, &len);
        const uint8_t *c = j->codes + start;
        if (j->bits < 8) {
            const uint8_t *src = j->codes + start * j->bits / 8;
#if LBQ_X86
            if (j->avx) unpack_v(src, len, j->bits, buf); else
#endif
            unpack_c(src, len, j->bits, buf);
            c = buf;
        }
        for (i64 b = b0; b < b1; b++) {
            i64 s0 = b * j->L > start ? b * j->L : start;
            i64 s1 = (b + 1) * j->L < start + len ? (b + 1) * j->L : start + len;
            float m = j->lut ? j->lut[j->scale8[b]] : j->scale[b];
            if (j->lut && j->ts != 0.0f) m = m * j->ts; /* NVFP4: e4m3 scale * tensor scale */
            float zp = j->zp ? (float)j->zp[b] : 0.0f;
#if LBQ_X86
            if (j->avx) {
                dec_range_v(c + (s0 - start), s1 - s0, j->table, j->tsize, m, zp, j->zp != NULL,
                            j->out + s0);
                continue;
            }
#endif
            dec_range_c(c + (s0 - start), s1 - s0, j->table, m, zp, j->zp != NULL, j->out + s0);
        }
    }
}

/* Ask for transparent huge pages on a large output buffer that is about to be written for
 * the first time: a fresh 64 MB tensor otherwise takes 16384 page faults, which cost more
 * than the kernel itself (torch's THP_MEM_ALLOC_ENABLE does the same for its allocations).
 * Only advice: the 2 MB-aligned interior of the buffer, ignored where THP is off. */
static void advise_huge_pages(void *p, i64 bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t e = ((uintptr_t)p + (uintptr_t)bytes) & ~(huge - 1);
    if (bytes >= (i64)(4 * huge) && e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p; (void)bytes;
#endif
}

typedef struct { Job *job; i64 p0, p1; } Slice;

/* One entry per block when blocks fit a piece, else one per piece. */
static void stats_pieces(Job *j, i64 p0, i64 p1) {
    for (i64 p = p0; p < p1; p++) {
        i64 b0, b1, start, len;
        piece_bounds(j, p, &b0, &b1, &start, &len);
        for (i64 b = b0; b < b1; b++) {
            i64 s0 = b * j->L > start ? b * j->L : start;
            i64 s1 = (b + 1) * j->L < start + len ? (b + 1) * j->L : start + len;
            i64 k = j->per_piece ? b : p;
            float lo = 0, hi = 0;
            if (stats(j, j->x + s0, s1 - s0, j->mode, &lo, &hi)) { j->bad = 1; return; }
            j->sa[k] = lo;
            if (j->mode) j->sb[k] = hi;
        }
    }
}

static void *slice_main(void *arg) {
    Slice *s = arg;
    if (s->job->op == DEQ) dequant_pieces(s->job, s->p0, s->p1);
    else if (s->job->op == STATS) stats_pieces(s->job, s->p0, s->p1);
    else quant_pieces(s->job, s->p0, s->p1);
    return NULL;
}

/* Split the pieces over up to `threads` threads (the caller runs the first share). */
static int run(Job *j, int threads) {
    if (j->L <= j->S) {
        j->per_piece = j->S / j->L;
        if (j->per_piece < 1) j->per_piece = 1;
    } else {
        j->per_piece = 0;
    }
    i64 P = j->per_piece ? (j->nblocks + j->per_piece - 1) / j->per_piece
                         : j->nblocks * ((j->L + j->S - 1) / j->S);
    i64 T = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    i64 by_size = j->n / 65536 + 1; /* small tensors: thread start-up would dominate */
    if (T > by_size) T = by_size;
    if (T > P) T = P;
    j->avx = lbq_isa(-1);
    j->bad = 0;
    if (j->op == DEQ) advise_huge_pages(j->out, j->n * 4);
    else if (j->op != STATS) advise_huge_pages(j->codes, j->n * j->bits / 8);
    Slice sl[64];
    pthread_t th[64];
    int started[64] = {0};
    for (i64 t = 0; t < T; t++) sl[t] = (Slice){j, P * t / T, P * (t + 1) / T};
    for (i64 t = 1; t < T; t++) started[t] = pthread_create(&th[t], NULL, slice_main, &sl[t]) == 0;
    slice_main(&sl[0]);
    for (i64 t = 1; t < T; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else slice_main(&sl[t]);
    }
    return j->bad;
}

/* ---- exported entry points (return 0 on success, 1 when x holds NaN/Inf) -------- */

/* Statistics of each block of L: amax (mode 0) or min and max (mode 1), one entry per
 * block when L <= S_MAX, else one per piece of S_MAX (ceil(L / S_MAX) per block). */
EXPORT int lbq_stats(const float *x, i64 n, i64 L, int mode, float *a, float *b, int threads) {
    Job j = {0};
    j.op = STATS; j.n = n; j.L = L; j.S = S_MAX; j.nblocks = n / L; j.bits = 8;
    j.x = x; j.sa = a; j.sb = b; j.mode = mode;
    return run(&j, threads);
}

/* Plain schemes. fused = 1: per-block scale (and zero point if zp) computed here from the
 * block's amax (min/max), written to scale/zp (requires L <= S_MAX); fused = 0: scale/zp
 * given per block. smax: the format's max (symmetric) or qmax - qmin (asymmetric). */
EXPORT int lbq_quant_plain(const float *x, i64 n, i64 L, int fused, const int32_t *ip,
                           const float *fp, float smax, float *scale, int32_t *zp,
                           uint8_t *codes, int threads) {
    Job j = {0};
    j.op = fused ? Q_FUSED : Q_GIVEN;
    enc_init(&j.enc, ip, fp);
    j.bits = j.enc.bits; j.n = n; j.L = L; j.S = S_MAX; j.nblocks = n / L;
    j.x = x; j.scale = scale; j.zp = zp; j.codes = codes; j.smax = smax;
    if (fused && L > S_MAX) return 2;
    return run(&j, threads);
}

/* MX: blocks of bs with an e8m0 scale each; mode 0 FLOOR, 1 CEIL, 2 EVEN. */
EXPORT int lbq_quant_mx(const float *x, i64 n, i64 bs, const int32_t *ip, const float *fp,
                        int emax, int mode, int mbits, uint8_t *codes, uint8_t *scale8,
                        int threads) {
    Job j = {0};
    j.op = Q_MX;
    enc_init(&j.enc, ip, fp);
    j.bits = j.enc.bits; j.n = n; j.L = bs; j.S = S_MAX; j.nblocks = n / bs;
    j.x = x; j.codes = codes; j.scale8 = scale8;
    j.mx_emax = emax; j.mx_mode = mode; j.mx_mbits = mbits;
    if (bs > S_MAX) return 2;
    run(&j, threads);
    return 0;
}

/* NVFP4: blocks of bs (16), e4m3 block scales under the fp32 tensor scale ts. */
EXPORT int lbq_quant_nvfp4(const float *x, i64 n, i64 bs, const int32_t *ip, const float *fp,
                           const int32_t *ip8, const float *fp8, float ts, float inv_ts,
                           uint8_t *codes, uint8_t *scale8, int threads) {
    Job j = {0};
    j.op = Q_NVFP4;
    enc_init(&j.enc, ip, fp);
    enc_init(&j.enc8, ip8, fp8);
    j.bits = j.enc.bits; j.n = n; j.L = bs; j.S = S_MAX; j.nblocks = n / bs;
    j.x = x; j.codes = codes; j.scale8 = scale8; j.ts = ts; j.inv_ts = inv_ts;
    if (bs > S_MAX) return 2;
    return run(&j, threads);
}

/* Dequantize: out = (table[code] - zp) * m with m = scale[b] (plain) or lut[scale8[b]]
 * (times ts when ts != 0: NVFP4). table: the value of every code, >= 16 entries. */
EXPORT int lbq_dequant(const uint8_t *codes, i64 n, i64 L, int bits, const float *table,
                       int tsize, const float *scale, const int32_t *zp, const uint8_t *scale8,
                       const float *lut, float ts, float *out, int threads) {
    Job j = {0};
    j.op = DEQ;
    j.bits = bits; j.n = n; j.L = L; j.S = S_MAX; j.nblocks = n / L;
    j.codes = (uint8_t *)codes; j.table = table; j.tsize = tsize;
    j.scale = (float *)scale; j.zp = (int32_t *)zp; j.scale8 = (uint8_t *)scale8;
    j.lut = lut; j.ts = ts; j.out = out;
    return run(&j, threads);
}
