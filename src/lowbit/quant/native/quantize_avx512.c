/* AVX-512 versions of the quantize kernels (see quantize.c for the contracts); chosen at
 * run time when the CPU has AVX-512 F/BW/VL/DQ, compiled only on x86. */
#include "kernels.h"

#if LBQ_X86
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

int cpu_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

AVX512 static inline __m512i enc16(__m512 y, __m512 zp, const Enc *e) {
    if (e->kind == 0) {
        __m512 r = _mm512_add_ps(
            _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
        r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(e->qmin)), _mm512_set1_ps(e->qmax));
        return _mm512_and_si512(_mm512_cvttps_epi32(r), _mm512_set1_epi32(e->mask));
    }
    const int sh = 23 - e->mbits;
    const __m512i vsh = _mm512_set1_epi32(sh), maxmag = _mm512_set1_epi32(e->maxmag);
    __m512i u = _mm512_castps_si512(y);
    __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __m512 af = _mm512_castsi512_ps(a);
    __m512i lsb = _mm512_and_si512(_mm512_srlv_epi32(a, vsh), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32((1 << (sh - 1)) - 1)), lsb);
    __m512i magn = _mm512_sub_epi32(_mm512_srlv_epi32(r, vsh),
                                    _mm512_set1_epi32((127 - e->bias) << e->mbits));
    magn = _mm512_min_epi32(magn, maxmag);
    __m512i mags = _mm512_cvt_roundps_epi32(_mm512_mul_ps(af, _mm512_set1_ps(e->submul)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __mmask16 sub = _mm512_cmp_ps_mask(af, _mm512_set1_ps(e->minnorm), _CMP_LT_OQ);
    __mmask16 over = _mm512_cmp_ps_mask(af, _mm512_set1_ps(e->maxval), _CMP_NLT_UQ);
    __m512i mag = _mm512_mask_blend_epi32(sub, magn, mags);
    mag = _mm512_mask_blend_epi32(over, mag, maxmag);
    __m512i sign = _mm512_sllv_epi32(_mm512_srli_epi32(u, 31), _mm512_set1_epi32(e->bits - 1));
    return _mm512_or_si512(mag, sign);
}

AVX512 void enc_range_v(const float *x, i64 n, float s, int mul, float zp, const Enc *e,
                        uint8_t *out) {
    const Enc E = *e;
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(zp), vp = _mm512_set1_ps(E.post);
    const int post = E.post != 1.0f;
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 y = mul ? _mm512_mul_ps(v, vs) : _mm512_div_ps(v, vs);
        if (post) y = _mm512_mul_ps(y, vp);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(enc16(y, vz, &E)));
    }
    enc_range_c(x + i, n - i, s, mul, zp, &E, out + i);
}

AVX512 int stats_v(const float *x, i64 n, int mode, float *a, float *b) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i m = _mm512_setzero_si512();
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(v), absmask));
        if (mode) { lo = _mm512_min_ps(lo, v); hi = _mm512_max_ps(hi, v); }
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(v), absmask));
        if (mode) { lo = _mm512_mask_min_ps(lo, k, lo, v); hi = _mm512_mask_max_ps(hi, k, hi, v); }
    }
    uint32_t mm = _mm512_reduce_max_epu32(m);
    if (mm >= 0x7f800000u) return 1;
    if (mode == 0) *a = u2f(mm);
    else { *a = _mm512_reduce_min_ps(lo); *b = _mm512_reduce_max_ps(hi); }
    return 0;
}

AVX512 void pack_v(const uint8_t *c, i64 n, int bits, uint8_t *out) {
    i64 i = 0;
    if (bits == 4) {
        const __m512i m0 = _mm512_set1_epi16(0x000F), m1 = _mm512_set1_epi16(0x00F0);
        for (; i + 64 <= n; i += 64) {
            __m512i w = _mm512_loadu_si512(c + i);
            __m512i v = _mm512_or_si512(_mm512_and_si512(w, m0),
                                        _mm512_and_si512(_mm512_srli_epi16(w, 4), m1));
            _mm256_storeu_si256((__m256i *)(out + i / 2), _mm512_cvtepi16_epi8(v));
        }
        pack_c(c + i, n - i, 4, out + i / 2);
        return;
    }
    pack_c(c, n, bits, out);
}

AVX512 void unpack_v(const uint8_t *p, i64 n, int bits, uint8_t *c) {
    i64 i = 0;
    if (bits == 4) {
        const __m512i m0 = _mm512_set1_epi16(0x000F);
        for (; i + 64 <= n; i += 64) {
            __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + i / 2)));
            __m512i v = _mm512_or_si512(_mm512_and_si512(w, m0),
                                        _mm512_slli_epi16(_mm512_srli_epi16(w, 4), 8));
            _mm512_storeu_si512(c + i, v);
        }
        unpack_c(p + i / 2, n - i, 4, c + i);
        return;
    }
    unpack_c(p, n, bits, c);
}

AVX512 void dec_range_v(const uint8_t *c, i64 n, const float *table, int tsize, float m,
                        float zp, int has_zp, float *out) {
    const __m512 vm = _mm512_set1_ps(m), vz = _mm512_set1_ps(zp);
    const __m512 t16 = _mm512_loadu_ps(table); /* table holds >= 16 entries */
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + i)));
        __m512 v = tsize <= 16 ? _mm512_permutexvar_ps(idx, t16)
                               : _mm512_i32gather_ps(idx, table, 4);
        if (has_zp) v = _mm512_sub_ps(v, vz);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(v, vm));
    }
    dec_range_c(c + i, n - i, table, m, zp, has_zp, out + i);
}

/* ---- 16 MX / NVFP4 blocks at a time (AVX-512) --------------------------------- */

/* Lane r of merge(a, b) for w lanes per block: the max of the two halves of a block of a
 * (r < 8) or b (r >= 8); after merges with w = 16, 8, 4, 2 lane i holds block i. */
static int32_t merge_idx[4][2][16];

void merge_idx_init(void) {
    for (int l = 0; l < 4; l++) {
        int w = 16 >> l, h = w / 2;
        for (int r = 0; r < 16; r++) {
            int blk = (r & 7) / h, k = (r & 7) % h;
            merge_idx[l][0][r] = (r >= 8 ? 16 : 0) + blk * w + k;
            merge_idx[l][1][r] = merge_idx[l][0][r] + h;
        }
    }
}

/* abs-bit maxima (max |x| as uint32) of 16 consecutive blocks of bs (16 or 32) elements. */
AVX512 static __m512i amax16(const float *x, int bs) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i v[16];
    for (int b = 0; b < 16; b++) {
        __m512i a = _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(x + b * bs)), absmask);
        if (bs == 32)
            a = _mm512_max_epu32(a, _mm512_and_si512(
                    _mm512_castps_si512(_mm512_loadu_ps(x + b * bs + 16)), absmask));
        v[b] = a;
    }
    for (int l = 0, cnt = 8; l < 4; l++, cnt /= 2) {
        const __m512i lo = _mm512_loadu_si512(merge_idx[l][0]);
        const __m512i hi = _mm512_loadu_si512(merge_idx[l][1]);
        for (int i = 0; i < cnt; i++)
            v[i] = _mm512_max_epu32(_mm512_permutex2var_epi32(v[2 * i], lo, v[2 * i + 1]),
                                    _mm512_permutex2var_epi32(v[2 * i], hi, v[2 * i + 1]));
    }
    return v[0];
}

/* NVFP4, 16 blocks of 16: codes (one byte each) to buf, e4m3 scales to s8. 1 on NaN/Inf. */
AVX512 int nvfp4_group(const Job *j, const float *x, uint8_t *buf, uint8_t *s8) {
    const Enc E = j->enc, E8 = j->enc8;
    __m512i am = amax16(x, 16);
    if (_mm512_cmpge_epu32_mask(am, _mm512_set1_epi32(0x7f800000))) return 1;
    __m512 t = _mm512_div_ps(_mm512_div_ps(_mm512_castsi512_ps(am), _mm512_set1_ps(6.0f)),
                             _mm512_set1_ps(j->ts));
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(0.015625f)), _mm512_set1_ps(448.0f));
    __m512i c8 = enc16(t, _mm512_setzero_ps(), &E8);
    _mm_storeu_si128((__m128i *)s8, _mm512_cvtepi32_epi8(c8));
    __m512 sf = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_and_si512(c8, _mm512_set1_epi32(0x7f)), 20)), _mm512_set1_ps(0x1p120f));
    float r[16];
    _mm512_storeu_ps(r, _mm512_div_ps(_mm512_set1_ps(j->inv_ts), sf));
    for (int k = 0; k < 16; k++) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), _mm512_set1_ps(r[k]));
        _mm_storeu_si128((__m128i *)(buf + 16 * k),
                         _mm512_cvtepi32_epi8(enc16(y, _mm512_setzero_ps(), &E)));
    }
    return 0;
}

/* MX, 16 blocks of 32: codes (one byte each) to buf, e8m0 scales to s8. */
AVX512 void mx_group(const Job *j, const float *x, uint8_t *buf, uint8_t *s8) {
    const Enc E = j->enc;
    __m512i bits = amax16(x, 32);
    __mmask16 bad = _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32(0x7f800000));
    if (j->mx_mode == 2)
        bits = _mm512_and_si512(_mm512_add_epi32(bits, _mm512_set1_epi32(1 << (22 - j->mx_mbits))),
                                _mm512_set1_epi32(0x7F800000));
    __m512i e = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 23),
                                                  _mm512_set1_epi32(0xFF)),
                                 _mm512_set1_epi32(127 + j->mx_emax));
    if (j->mx_mode == 1) {
        __mmask16 frac = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(0x7FFFFF));
        e = _mm512_mask_add_epi32(e, frac, e, _mm512_set1_epi32(1));
    }
    e = _mm512_min_epi32(_mm512_max_epi32(e, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
    __m512i code = _mm512_mask_blend_epi32(bad, _mm512_add_epi32(e, _mm512_set1_epi32(127)),
                                           _mm512_set1_epi32(255));
    _mm_storeu_si128((__m128i *)s8, _mm512_cvtepi32_epi8(code));
    float d[16]; /* divisors 2^max(E, -126) */
    __m512i biased = _mm512_add_epi32(_mm512_max_epi32(e, _mm512_set1_epi32(-126)),
                                      _mm512_set1_epi32(127));
    _mm512_storeu_ps(d, _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23)));
    const __m512 vp = _mm512_set1_ps(E.post), z = _mm512_setzero_ps();
    const int post = E.post != 1.0f;
    for (int k = 0; k < 16; k++) {
        if (bad >> k & 1) { memset(buf + 32 * k, 0, 32); continue; }
        const __m512 dv = _mm512_set1_ps(d[k]);
        for (int h = 0; h < 2; h++) {
            __m512 y = _mm512_div_ps(_mm512_loadu_ps(x + 32 * k + 16 * h), dv);
            if (post) y = _mm512_mul_ps(y, vp);
            _mm_storeu_si128((__m128i *)(buf + 32 * k + 16 * h),
                             _mm512_cvtepi32_epi8(enc16(y, z, &E)));
        }
    }
}

#endif
