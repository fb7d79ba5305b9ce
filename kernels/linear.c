/*
 * linear.c — torch.nn.Linear (weight [OUT, IN]) through cblas_sgemm (SYSTEMS.md d4), called
 * from serial code only.
 */
#include <cblas.h>
#include <stddef.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

void fs_linear_forward(float *y, const float *x, const float *w, const float *bias, int N, int IN,
                       int OUT)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f, x, IN, w, IN, 0.0f, y,
                OUT);
    if (bias)
        for (int n = 0; n < N; n++) {
            float *r = y + (size_t)n * OUT;
#pragma omp simd
            for (int o = 0; o < OUT; o++)
                r[o] += bias[o];
        }
}

void fs_linear_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                        const float *w, int N, int IN, int OUT)
{
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IN, OUT, 1.0f, dy, OUT, w, IN,
                    1.0f, dx, IN);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, N, 1.0f, dy, OUT, x, IN,
                    1.0f, dw, IN);
    if (dbias) {
        /* Column sums of dy, rows added in order (double). */
        for (int o = 0; o < OUT; o++) {
            double a = 0.0;
            for (int n = 0; n < N; n++)
                a += dy[(size_t)n * OUT + o];
            dbias[o] += (float)a;
        }
    }
}
