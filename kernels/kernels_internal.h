/*
 * kernels_internal.h — helpers shared by the kernel sources (not part of the public API).
 */
#ifndef FS_KERNELS_INTERNAL_H
#define FS_KERNELS_INTERNAL_H

#include <stddef.h>

/* The configured thread count (>= 1); fs_threads_get() without the public name. */
int fs__threads(void);
/* 1 if cblas_sgemm may be called from inside an OpenMP parallel region without oversubscription
 * (SYSTEMS.md d3 item 4): the OpenMP build of OpenBLAS, or a BLAS pool of one thread. */
int fs__blas_in_parallel_ok(void);
/* Largest per-thread partial count used by the reductions below: thread counts are clamped to it. */
#define FS_MAX_THREADS 64

/* Splits [0, n) into `parts` contiguous static chunks; chunk k is [*lo, *hi). */
static inline void fs__chunk(size_t n, int parts, int k, size_t *lo, size_t *hi)
{
    size_t q = n / (size_t)parts, r = n % (size_t)parts, kk = (size_t)k;
    *lo = kk * q + (kk < r ? kk : r);
    *hi = *lo + q + (kk < r ? 1 : 0);
}

/* Implementation for the linear layers: the convolution setting, except that AUTO keeps OpenBLAS
 * unless it runs a generic core (fs_blas_coretype_hint). */
int fs__linear_impl(void);

/* Micro-kernels of conv_simd.c (impl: FS_CONV_IMPL_AVX2 or _AVX512). See conv_ukernel.h. */
void fs__ugemm_nn(int impl, int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                  const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, int acc);
void fs__ugemm_dot(int impl, int M, int Kc, int L, const float *P, ptrdiff_t ldp, const float *Q,
                   ptrdiff_t ldq, float *D, ptrdiff_t ldd);
void fs__ugemm_nn_tab(int impl, int M, int N, int K, const float *A, ptrdiff_t sai, ptrdiff_t saj,
                      const float *B, const ptrdiff_t *boff, float *C, ptrdiff_t ldc, int acc);
void fs__ugemm_dot_tab(int impl, int M, int Kc, int L, const float *P, ptrdiff_t ldp,
                       const float *Q, const ptrdiff_t *qoff, float *D, ptrdiff_t ldd);

#endif
