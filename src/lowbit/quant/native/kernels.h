/* Shared declarations of the native quantize kernels (quantize.c: scalar kernels, work
 * split and entry points; quantize_avx512.c: the AVX-512 versions, x86-64 only). */
#ifndef LOWBIT_QUANT_KERNELS_H
#define LOWBIT_QUANT_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef LBQ_X86 /* -DLBQ_X86=0 builds the portable C paths only */
#if defined(__x86_64__) || defined(__i386__)
#define LBQ_X86 1
#else
#define LBQ_X86 0
#endif
#endif

#define S_MAX 16384 /* elements per work piece */

typedef int64_t i64;

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- element encoder ------------------------------------------------------------- */

typedef struct {
    int kind;             /* 0 integer, 1 float */
    int bits;             /* code width */
    int mbits, bias;      /* float: mantissa bits, exponent bias */
    int32_t mask, maxmag; /* (1 << bits) - 1; float: magnitude code of the largest value */
    float qmin, qmax;     /* integer: clamp range of round(y) + zp */
    float maxval, minnorm, submul; /* float: max, min normal, 2^(mbits + bias - 1) */
    float post;           /* factor applied after the division (MX int: 2^(bits-2)) */
} Enc;

/* The code of one element y (already divided by the scale), round-to-nearest-even and
 * saturating. Integer: clamp(rne(y) + zp, qmin, qmax) in two's complement. Float: the fp32
 * mantissa rounded to mbits (a carry moves into the exponent), subnormals by an exact
 * power-of-two scaling. Example fp8_e4m3fn: 460.0 -> 0x7E (448, saturated),
 * 1.5 * 2^-9 -> 0x02 (tie to even), -0.0 -> 0x80. */
static inline uint8_t enc1(float y, float zp, const Enc *e) {
    if (e->kind == 0) {
        float r = rintf(y) + zp;
        r = r < e->qmin ? e->qmin : r;
        r = r > e->qmax ? e->qmax : r;
        return (uint8_t)((int32_t)r & e->mask);
    }
    uint32_t u = f2u(y), a = u & 0x7fffffffu;
    float af = u2f(a);
    int32_t mag;
    if (!(af < e->maxval)) {
        mag = e->maxmag;
    } else if (af < e->minnorm) {
        mag = (int32_t)rintf(af * e->submul); /* exact scaling, one rounding */
    } else {
        int sh = 23 - e->mbits;
        uint32_t r = a + ((1u << (sh - 1)) - 1) + ((a >> sh) & 1);
        mag = (int32_t)(r >> sh) - ((127 - e->bias) << e->mbits);
        if (mag > e->maxmag) mag = e->maxmag;
    }
    return (uint8_t)(((u >> 31) << (e->bits - 1)) | (uint32_t)mag);
}

/* ---- work description ---------------------------------------------------------- */

enum { Q_GIVEN = 0, Q_FUSED = 1, Q_MX = 2, Q_NVFP4 = 3, DEQ = 4, STATS = 5 };

typedef struct {
    int op, avx, bits;
    i64 n, L, S, nblocks, per_piece; /* per_piece: blocks per piece (L <= S) or 0 */
    const float *x;
    float *scale;        /* plain: fp32 scale per block (in for GIVEN, out for FUSED) */
    int32_t *zp;         /* plain asymmetric: zero point per block, or NULL */
    uint8_t *codes;      /* packed codes (out for quantize, in for dequantize) */
    uint8_t *scale8;     /* MX / NVFP4: e8m0 / e4m3 code per block */
    Enc enc, enc8;       /* element encoder; NVFP4: e4m3 block-scale encoder */
    float smax;          /* FUSED: fmt max (sym) or qmax - qmin (asym) */
    int mx_emax, mx_mode, mx_mbits;
    float ts, inv_ts;    /* NVFP4 tensor scale and 1 / tensor scale */
    const float *table;  /* DEQ: value of every code (>= 16 entries) */
    int tsize;
    const float *lut;    /* DEQ: multiplier per scale code (MX / NVFP4), or NULL */
    float *out;          /* DEQ output */
    float *sa, *sb;      /* STATS output: amax, or min and max */
    int mode;            /* STATS: 0 amax, 1 min/max */
    int bad;
} Job;

/* Scalar kernels (quantize.c). */
void enc_range_c(const float *x, i64 n, float s, int mul, float zp, const Enc *e, uint8_t *out);
int stats_c(const float *x, i64 n, int mode, float *a, float *b);
void pack_c(const uint8_t *c, i64 n, int bits, uint8_t *out);
void unpack_c(const uint8_t *p, i64 n, int bits, uint8_t *c);
void dec_range_c(const uint8_t *c, i64 n, const float *table, float m, float zp, int has_zp,
                 float *out);

#if LBQ_X86 /* AVX-512 kernels (quantize_avx512.c), same contracts */
int cpu_avx512(void);
void merge_idx_init(void);
void enc_range_v(const float *x, i64 n, float s, int mul, float zp, const Enc *e, uint8_t *out);
int stats_v(const float *x, i64 n, int mode, float *a, float *b);
void pack_v(const uint8_t *c, i64 n, int bits, uint8_t *out);
void unpack_v(const uint8_t *p, i64 n, int bits, uint8_t *c);
void dec_range_v(const uint8_t *c, i64 n, const float *table, int tsize, float m, float zp,
                 int has_zp, float *out);
int nvfp4_group(const Job *j, const float *x, uint8_t *buf, uint8_t *s8);
void mx_group(const Job *j, const float *x, uint8_t *buf, uint8_t *s8);
#endif

#endif
