/*
 * bn.c — torch.nn.BatchNorm2d, training and inference modes, forward and backward.
 * x is [N, C, HW]; statistics per channel over N·HW values, accumulated in double in a fixed
 * order. Channels are distributed over the OpenMP team (schedule(static)): each channel's sums
 * belong to one thread, so results do not depend on the thread count.
 */
#include <math.h>
#include <stddef.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

#define CH(x, n, c) ((x) + ((size_t)(n) * C + (size_t)(c)) * HW)

/* Plane sums with 16 independent float lanes (vectorisable, fixed order), lanes added in double.
 * Each returns the sum over one plane of n values; the caller adds planes in order in double. */
#define LANES 16

static double lanes_total(const float *acc)
{
    double t = 0.0;
    for (int l = 0; l < LANES; l++)
        t += acc[l];
    return t;
}

static double plane_sum(const float *p, size_t n)
{
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++)
            acc[l] += p[i + l];
    double t = lanes_total(acc);
    for (; i < n; i++)
        t += p[i];
    return t;
}

/* Σ (p - m)² */
static double plane_sqdev(const float *p, size_t n, float m)
{
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            float d = p[i + l] - m;
            acc[l] += d * d;
        }
    double t = lanes_total(acc);
    for (; i < n; i++) {
        double d = (double)p[i] - m;
        t += d * d;
    }
    return t;
}

/* Σ g and Σ g·(p - m) */
static void plane_dot(const float *g, const float *p, size_t n, float m, double *sg, double *sgx)
{
    float a[LANES] = {0}, b[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            a[l] += g[i + l];
            b[l] += g[i + l] * (p[i + l] - m);
        }
    double ta = lanes_total(a), tb = lanes_total(b);
    for (; i < n; i++) {
        ta += g[i];
        tb += (double)g[i] * ((double)p[i] - m);
    }
    *sg += ta;
    *sgx += tb;
}

void fs_bn_forward_train(float *restrict y, float *restrict mean, float *restrict invstd,
                         float *running_mean, float *running_var, const float *restrict x,
                         const float *restrict gamma, const float *restrict beta,
                         const fs_bn_shape *s)
{
    const int N = s->N, C = s->C;
    const size_t HW = (size_t)s->HW;
    const double cnt = (double)N * (double)HW;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int c = 0; c < C; c++) {
        double sum = 0.0;
        for (int n = 0; n < N; n++)
            sum += plane_sum(CH(x, n, c), HW);
        double mu = sum / cnt, sq = 0.0;
        /* Two-pass variance around the float mean, corrected for its rounding in double. */
        const float muf = (float)mu;
        for (int n = 0; n < N; n++)
            sq += plane_sqdev(CH(x, n, c), HW, muf);
        const double dm = (double)muf - mu;
        sq -= cnt * dm * dm;
        if (sq < 0.0)
            sq = 0.0;
        double var = sq / cnt; /* biased: used for normalising */
        float is = (float)(1.0 / sqrt(var + (double)s->eps));
        float m = (float)mu;
        mean[c] = m;
        invstd[c] = is;
        float g = gamma ? gamma[c] : 1.0f, b = beta ? beta[c] : 0.0f;
        float scale = g * is, shift = b - m * scale;
        for (int n = 0; n < N; n++) {
            const float *p = CH(x, n, c);
            float *q = CH(y, n, c);
#pragma omp simd
            for (size_t i = 0; i < HW; i++)
                q[i] = p[i] * scale + shift;
        }
        const float mom = s->momentum;
        if (running_mean)
            running_mean[c] = (1.0f - mom) * running_mean[c] + mom * m;
        if (running_var) {
            double unb = cnt > 1.0 ? sq / (cnt - 1.0) : var; /* unbiased for the running estimate */
            running_var[c] = (1.0f - mom) * running_var[c] + mom * (float)unb;
        }
    }
}

void fs_bn_forward_eval(float *restrict y, const float *restrict x, const float *restrict gamma,
                        const float *restrict beta, const float *restrict running_mean,
                        const float *restrict running_var, const fs_bn_shape *s)
{
    const int N = s->N, C = s->C;
    const size_t HW = (size_t)s->HW;
    const long planes = (long)N * C;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (long p = 0; p < planes; p++) {
        int c = (int)(p % C);
        float is = 1.0f / sqrtf(running_var[c] + s->eps);
        float g = gamma ? gamma[c] : 1.0f, b = beta ? beta[c] : 0.0f;
        float scale = g * is, shift = b - running_mean[c] * scale;
        const float *xp = x + (size_t)p * HW;
        float *yp = y + (size_t)p * HW;
#pragma omp simd
        for (size_t i = 0; i < HW; i++)
            yp[i] = xp[i] * scale + shift;
    }
}

void fs_bn_backward_train(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *invstd, const float *gamma,
                          const fs_bn_shape *s)
{
    const int N = s->N, C = s->C;
    const size_t HW = (size_t)s->HW;
    const double cnt = (double)N * (double)HW;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int c = 0; c < C; c++) {
        const float m = mean[c], is = invstd[c];
        double sdy = 0.0, sdyx = 0.0; /* Σ dy, Σ dy·x̂ */
        for (int n = 0; n < N; n++)
            plane_dot(CH(dy, n, c), CH(x, n, c), HW, m, &sdy, &sdyx);
        sdyx *= is;
        if (dbeta)
            dbeta[c] += (float)sdy;
        if (dgamma)
            dgamma[c] += (float)sdyx;
        if (dx) {
            /* dx = γ·invstd/cnt · (cnt·dy − Σdy − x̂·Σ(dy·x̂)) */
            const float gm = gamma ? gamma[c] : 1.0f;
            const float k = gm * is;
            const float mdy = (float)(sdy / cnt), mdyx = (float)(sdyx / cnt);
            for (int n = 0; n < N; n++) {
                const float *g = CH(dy, n, c), *p = CH(x, n, c);
                float *d = CH(dx, n, c);
#pragma omp simd
                for (size_t i = 0; i < HW; i++) {
                    float xh = (p[i] - m) * is;
                    d[i] += k * (g[i] - mdy - xh * mdyx);
                }
            }
        }
    }
}

void fs_bn_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                         const float *gamma, const float *running_mean, const float *running_var,
                         const fs_bn_shape *s)
{
    const int N = s->N, C = s->C;
    const size_t HW = (size_t)s->HW;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int c = 0; c < C; c++) {
        const float is = 1.0f / sqrtf(running_var[c] + s->eps), m = running_mean[c];
        const float k = (gamma ? gamma[c] : 1.0f) * is;
        double sdy = 0.0, sdyx = 0.0;
        for (int n = 0; n < N; n++) {
            const float *g = CH(dy, n, c);
            plane_dot(g, CH(x, n, c), HW, m, &sdy, &sdyx);
            if (dx) {
                float *d = CH(dx, n, c);
#pragma omp simd
                for (size_t i = 0; i < HW; i++)
                    d[i] += k * g[i];
            }
        }
        if (dbeta)
            dbeta[c] += (float)sdy;
        if (dgamma)
            dgamma[c] += (float)(sdyx * is);
    }
}

void fs_channel_moments(double *sum, double *sumsq, const float *x, int N, int C, int HW_)
{
    const size_t HW = (size_t)HW_;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int c = 0; c < C; c++) {
        double a = 0.0, b = 0.0;
        for (int n = 0; n < N; n++) {
            const float *p = CH(x, n, c);
            for (size_t i = 0; i < HW; i++) {
                a += p[i];
                b += (double)p[i] * p[i];
            }
        }
        if (sum)
            sum[c] += a;
        if (sumsq)
            sumsq[c] += b;
    }
}
