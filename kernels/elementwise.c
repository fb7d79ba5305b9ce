/*
 * elementwise.c — ReLU, residual add, axpy. OpenMP over contiguous static chunks for large n.
 */
#include <stddef.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PAR_MIN 32768

void fs_relu_forward(float *y, const float *x, size_t n)
{
    const int nthr = fs__threads();
#pragma omp parallel for simd schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void fs_relu_backward(float *dx, const float *dy, const float *y, size_t n)
{
    const int nthr = fs__threads();
#pragma omp parallel for simd schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
}

void fs_add_forward(float *y, const float *a, const float *b, size_t n)
{
    const int nthr = fs__threads();
#pragma omp parallel for simd schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void fs_axpy(float *y, float a, const float *x, size_t n)
{
    const int nthr = fs__threads();
#pragma omp parallel for simd schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}
