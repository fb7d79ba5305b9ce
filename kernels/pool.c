/*
 * pool.c — max pooling (torch.nn.functional.max_pool2d, padding as -inf, floor mode) and global
 * average pooling. Planes [N·C] are distributed over the OpenMP team (schedule(static)).
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_kernels.h"
#include "fs_util.h"
#include "kernels_internal.h"

int fs_pool_shape_init(fs_pool_shape *s)
{
    if (!s || s->N <= 0 || s->C <= 0 || s->H <= 0 || s->W <= 0 || s->K <= 0 || s->stride <= 0 ||
        s->pad < 0)
        return FS_EINVAL;
    /* torch: "pad should be at most half of kernel size", so no window is all padding. */
    if (2 * s->pad > s->K || s->H + 2LL * s->pad < s->K || s->W + 2LL * s->pad < s->K)
        return FS_EINVAL;
    if ((long long)s->H * s->W > INT32_MAX)
        return FS_EINVAL;
    s->OH = (s->H + 2 * s->pad - s->K) / s->stride + 1;
    s->OW = (s->W + 2 * s->pad - s->K) / s->stride + 1;
    return 0;
}

void fs_maxpool_forward(float *out, int32_t *argmax, const float *in, const fs_pool_shape *s)
{
    const int H = s->H, W = s->W, OH = s->OH, OW = s->OW, K = s->K, st = s->stride, pad = s->pad;
    const long planes = (long)s->N * s->C;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (long p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dst = out + (size_t)p * OH * OW;
        int32_t *am = argmax + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float best = -INFINITY;
                int32_t bi = -1;
                for (int kh = 0; kh < K; kh++) {
                    int ih = oh * st - pad + kh;
                    if (ih < 0 || ih >= H)
                        continue;
                    for (int kw = 0; kw < K; kw++) {
                        int iw = ow * st - pad + kw;
                        if (iw < 0 || iw >= W)
                            continue;
                        float v = src[(size_t)ih * W + iw];
                        /* NaN propagates, as in torch; the first maximum wins. */
                        if (bi < 0 || v > best || isnan(v)) {
                            best = v;
                            bi = ih * W + iw;
                            if (isnan(v))
                                goto done;
                        }
                    }
                }
            done:
                dst[oh * OW + ow] = best;
                am[oh * OW + ow] = bi;
            }
    }
}

void fs_maxpool_backward(float *din, const float *dout, const int32_t *argmax,
                         const fs_pool_shape *s)
{
    const size_t plane = (size_t)s->H * s->W, oplane = (size_t)s->OH * s->OW;
    const long planes = (long)s->N * s->C;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (long p = 0; p < planes; p++) {
        float *d = din + (size_t)p * plane;
        const float *g = dout + (size_t)p * oplane;
        const int32_t *am = argmax + (size_t)p * oplane;
        for (size_t i = 0; i < oplane; i++) {
            FS_ASSERT(am[i] >= 0 && (size_t)am[i] < plane);
            d[am[i]] += g[i];
        }
    }
}

void fs_gap_forward(float *out, const float *in, int N, int C, int HW)
{
    const long planes = (long)N * C;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1 && planes >= 256)
    for (long p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * HW;
        float a = 0.0f;
        for (int i = 0; i < HW; i++)
            a += src[i];
        out[p] = a / (float)HW;
    }
}

void fs_gap_backward(float *din, const float *dout, int N, int C, int HW)
{
    const long planes = (long)N * C;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1 && planes >= 256)
    for (long p = 0; p < planes; p++) {
        float *d = din + (size_t)p * HW;
        float g = dout[p] / (float)HW;
        for (int i = 0; i < HW; i++)
            d[i] += g;
    }
}
