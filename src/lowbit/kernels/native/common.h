/*
 * lowbit native kernels: what the kernels of this library share (one .so, built by
 * _build.py from every source in _SOURCES; this header is hashed into the build key).
 *
 *   lb_pool_run(fn, arg, nth)   run fn(arg) on the caller and up to nth-1 pool threads;
 *                               fn must take work from an atomic counter until none is
 *                               left (any number of participants is then correct).
 *   lowbit_a8w4_cpu_level()     best ISA level of this CPU: 2 = avx512 vnni (+ f/bw/vl),
 *                               1 = avx2, 0 = scalar (exported; the name is historical).
 *   lowbit_a8w4_set_spin_us(us) how long idle pool threads spin before sleeping.
 *   lb_row_lanes(x, xm, k, m)   16 fp32 lanes of a row from k (masked), times the column
 *                               multiplier xm (SmoothQuant's 1/s) when it is not NULL.
 *   lb_mask16(r)                lanes 0..r-1 of a 16-lane mask (all of them when r >= 16).
 */
#ifndef LOWBIT_NATIVE_COMMON_H
#define LOWBIT_NATIVE_COMMON_H

#define LB_API __attribute__((visibility("default")))
#define MAX_THREADS 64

typedef void (*task_fn)(void *arg);

void lb_pool_run(task_fn fn, void *arg, int nth);
LB_API int lowbit_a8w4_cpu_level(void);
LB_API void lowbit_a8w4_set_spin_us(int us);

#include <immintrin.h>

static inline __mmask16 lb_mask16(int r) {
    return r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1u);
}

static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) __m512
lb_row_lanes(const float *x, const float *xm, int k, __mmask16 m) {
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    return xm ? _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, xm + k)) : v;
}

#endif
