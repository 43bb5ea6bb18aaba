/*
 * lowbit native kernels, shared part: CPU level detection and the thread pool used by
 * every kernel (see common.h).  Moved here unchanged from a8w4.c.
 */
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

/* 2 = avx512 vnni, 1 = avx2, 0 = scalar */
LB_API int lowbit_a8w4_cpu_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
    return 0;
}


/* ------------------------------------------------------------------------------ */
/* tiny persistent thread pool. A job is a function that grabs chunks of work from an
 * atomic counter until none is left, so it is correct with any number of participants.
 * The caller always works; each worker takes one of nth-1 "places" when it wakes. When
 * the caller runs out of work it closes the places not yet taken: a worker that the OS
 * has not scheduled (2 shared cores) then costs nothing instead of a time slice.
 * Workers spin for spin_us after a job, then sleep. Waking a sleeping worker takes 100+ us
 * on this kind of VM, longer than a whole batch-1 GEMM, so the spin must outlast the gap
 * between back-to-back calls (Python overhead, the caller's last chunk): at 50 us the
 * worker mostly missed the next call and M=1 ran on one core. While spinning it yields
 * the core every ~1 us, so torch's own threads between two of our calls lose nothing
 * (measured on MiniLM: 300 us is as fast or faster at batch 32 and batch 1).       */


static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static atomic_uint pool_gen;
static atomic_int pool_pending; /* workers that hold a place and have not finished */
static atomic_int pool_places;  /* places still open in the current job */
static task_fn _Atomic pool_fn;
static void *_Atomic pool_arg;
static int pool_nworkers;
static pid_t pool_pid;
static unsigned pool_start_gen[MAX_THREADS];
static atomic_int spin_us = 300;

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static void *worker_main(void *vp) {
    unsigned seen = pool_start_gen[(intptr_t)vp]; /* gen when created: never miss a job */
    for (;;) {
        unsigned g = atomic_load(&pool_gen);
        if (g == seen) {
            const double t0 = now_us(), lim = (double)atomic_load(&spin_us);
            for (int it = 0; g == seen; ++it) {
                _mm_pause();
                g = atomic_load(&pool_gen);
                if ((it & 63) == 63) {
                    if (now_us() - t0 > lim) break;
                    sched_yield(); /* a thread that wants this core (torch's) gets it */
                }
            }
        }
        if (g == seen) {
            pthread_mutex_lock(&pool_mu);
            while ((g = atomic_load(&pool_gen)) == seen) pthread_cond_wait(&pool_cv, &pool_mu);
            pthread_mutex_unlock(&pool_mu);
        }
        seen = g;
        int open = atomic_load(&pool_places);
        while (open > 0 && !atomic_compare_exchange_weak(&pool_places, &open, open - 1)) {
        }
        if (open > 0) { /* took a place: fn/arg were published before the places */
            atomic_load(&pool_fn)(atomic_load(&pool_arg));
            atomic_fetch_sub(&pool_pending, 1);
        }
    }
    return NULL;
}

void lb_pool_run(task_fn fn, void *arg, int nth) {
    if (nth <= 1) {
        fn(arg);
        return;
    }
    pthread_mutex_lock(&call_mu);
    if (pool_pid != getpid()) { /* first call, or a forked child: no workers here */
        pool_pid = getpid();
        pool_nworkers = 0;
    }
    while (pool_nworkers < nth - 1 && pool_nworkers < MAX_THREADS - 1) {
        pthread_t th;
        pool_start_gen[pool_nworkers + 1] = atomic_load(&pool_gen);
        if (pthread_create(&th, NULL, worker_main, (void *)(intptr_t)(pool_nworkers + 1)) != 0) break;
        pthread_detach(th);
        pool_nworkers++;
    }
    const int places = nth - 1 < pool_nworkers ? nth - 1 : pool_nworkers;
    atomic_store(&pool_fn, fn);
    atomic_store(&pool_arg, arg);
    atomic_store(&pool_pending, places);
    atomic_store(&pool_places, places);
    pthread_mutex_lock(&pool_mu);
    atomic_fetch_add(&pool_gen, 1);
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    fn(arg);
    const int unused = atomic_exchange(&pool_places, 0);
    if (unused > 0) atomic_fetch_sub(&pool_pending, unused);
    for (long it = 0; atomic_load(&pool_pending) > 0; ++it) {
        if (it < 20000) _mm_pause();
        else sched_yield();
    }
    pthread_mutex_unlock(&call_mu);
}

LB_API void lowbit_a8w4_set_spin_us(int us) { atomic_store(&spin_us, us < 0 ? 0 : us); }
