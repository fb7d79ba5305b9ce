/*
 * linear.c — torch.nn.Linear (weight [OUT, IN]).
 *
 * With the AVX-512/AVX2 micro-kernels (fs__linear_impl(): when forced with fs_conv2d_set_impl, or
 * by default when OpenBLAS fell back to a generic core, see fs_blas_coretype_hint):
 *   y  = x·wᵀ : dot-product tiles over IN (the first IN - IN mod 16 columns; the rest scalar);
 *   dx += dy·w, dw += dyᵀ·x : GEMM tiles over the first IN - IN mod 32 columns (whole register
 *   tiles, so no row is read past its end); the remaining columns scalar.
 * Rows (of y/dx: N; of dw: OUT) are split over the OpenMP team in contiguous static chunks, so
 * results are reproducible for a thread count. With FS_CONV_IMPL_BLAS: cblas_sgemm (SYSTEMS.md
 * d4) from serial code.
 */
#include <cblas.h>
#include <omp.h>
#include <stddef.h>
#include <string.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

/* Team size for a row split: one thread for small products. */
static int row_team(int rows, double flops)
{
    int t = fs__threads();
    if (flops < 2e6)
        return 1;
    return t < rows ? t : (rows > 0 ? rows : 1);
}

static void bias_rows(float *y, const float *bias, int N, int OUT)
{
    for (int n = 0; n < N; n++) {
        float *r = y + (size_t)n * OUT;
#pragma omp simd
        for (int o = 0; o < OUT; o++)
            r[o] += bias[o];
    }
}

void fs_linear_forward(float *y, const float *x, const float *w, const float *bias, int N, int IN,
                       int OUT)
{
    const int impl = fs__linear_impl();
    if (impl == FS_CONV_IMPL_BLAS) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f, x, IN, w, IN, 0.0f,
                    y, OUT);
        if (bias)
            bias_rows(y, bias, N, OUT);
        return;
    }
    const int L = IN - IN % 16;
    const int team = row_team(N, 2.0 * N * IN * OUT);
#pragma omp parallel num_threads(team) if (team > 1)
    {
        size_t lo, hi;
        fs__chunk((size_t)N, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
        const int rows = (int)(hi - lo);
        float *yr = y + lo * (size_t)OUT;
        const float *xr = x + lo * (size_t)IN;
        if (rows > 0) {
            memset(yr, 0, sizeof(float) * (size_t)rows * (size_t)OUT);
            if (L > 0)
                fs__ugemm_dot(impl, rows, OUT, L, xr, IN, w, IN, yr, OUT);
            if (L < IN)
                for (int n = 0; n < rows; n++)
                    for (int o = 0; o < OUT; o++) {
                        float a = 0.0f;
                        for (int j = L; j < IN; j++)
                            a += xr[(size_t)n * IN + j] * w[(size_t)o * IN + j];
                        yr[(size_t)n * OUT + o] += a;
                    }
            if (bias)
                bias_rows(yr, bias, rows, OUT);
        }
    }
}

void fs_linear_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                        const float *w, int N, int IN, int OUT)
{
    const int impl = fs__linear_impl();
    if (impl == FS_CONV_IMPL_BLAS) {
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IN, OUT, 1.0f, dy, OUT, w,
                        IN, 1.0f, dx, IN);
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, N, 1.0f, dy, OUT, x, IN,
                        1.0f, dw, IN);
    } else {
        const int J = IN - IN % 32; /* columns done by whole register tiles */
        const double flops = 2.0 * N * IN * OUT;
        if (dx) { /* dx[N, IN] += dy[N, OUT] · w[OUT, IN] */
            const int team = row_team(N, flops);
#pragma omp parallel num_threads(team) if (team > 1)
            {
                size_t lo, hi;
                fs__chunk((size_t)N, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
                const int rows = (int)(hi - lo);
                const float *dyr = dy + lo * (size_t)OUT;
                float *dxr = dx + lo * (size_t)IN;
                if (rows > 0 && J > 0)
                    fs__ugemm_nn(impl, rows, J, OUT, dyr, OUT, 1, w, IN, dxr, IN, 1);
                for (int n = 0; n < rows; n++)
                    for (int j = J; j < IN; j++) {
                        float a = 0.0f;
                        for (int o = 0; o < OUT; o++)
                            a += dyr[(size_t)n * OUT + o] * w[(size_t)o * IN + j];
                        dxr[(size_t)n * IN + j] += a;
                    }
            }
        }
        if (dw) { /* dw[OUT, IN] += dyᵀ[OUT, N] · x[N, IN] */
            const int team = row_team(OUT, flops);
#pragma omp parallel num_threads(team) if (team > 1)
            {
                size_t lo, hi;
                fs__chunk((size_t)OUT, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
                const int rows = (int)(hi - lo);
                float *dwr = dw + lo * (size_t)IN;
                if (rows > 0 && J > 0)
                    fs__ugemm_nn(impl, rows, J, N, dy + lo, 1, OUT, x, IN, dwr, IN, 1);
                for (int o = 0; o < rows; o++)
                    for (int j = J; j < IN; j++) {
                        float a = 0.0f;
                        for (int n = 0; n < N; n++)
                            a += dy[(size_t)n * OUT + lo + (size_t)o] * x[(size_t)n * IN + j];
                        dwr[(size_t)o * IN + j] += a;
                    }
            }
        }
    }
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
