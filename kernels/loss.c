/*
 * loss.c — softmax cross-entropy, MSE, Hinton KL distillation loss, row argmax. Each loss
 * returns the SUM over samples, accumulated in double; parallel sums use one partial per thread
 * (schedule(static)) added in thread order, so results are reproducible for a thread count.
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_kernels.h"
#include "fs_util.h"
#include "kernels_internal.h"

/* log Σ exp(x_k / T) over a row, computed around the row maximum (double). Sets *mx. */
static double row_logsumexp(const float *x, int K, double invT, double *mx)
{
    double m = x[0];
    for (int k = 1; k < K; k++)
        if (x[k] > m)
            m = x[k];
    double a = 0.0;
    for (int k = 0; k < K; k++)
        a += exp(((double)x[k] - m) * invT);
    *mx = m;
    return log(a);
}

static int row_argmax(const float *x, int K)
{
    int b = 0;
    for (int k = 1; k < K; k++)
        if (x[k] > x[b])
            b = k;
    return b;
}

double fs_softmax_xent(float *dlogits, int64_t *correct, const float *logits, const int32_t *labels,
                       int N, int K, float scale)
{
    double loss = 0.0;
    int64_t ok = 0;
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * K;
        int y = labels[i];
        FS_ASSERT(y >= 0 && y < K); /* labels are validated by the data loader */
        double m, lse = row_logsumexp(x, K, 1.0, &m);
        loss += lse - ((double)x[y] - m);
        if (row_argmax(x, K) == y)
            ok++;
        if (dlogits) {
            float *d = dlogits + (size_t)i * K;
            for (int k = 0; k < K; k++) {
                double p = exp((double)x[k] - m - lse);
                d[k] = (float)((double)scale * (p - (k == y ? 1.0 : 0.0)));
            }
        }
    }
    if (correct)
        *correct += ok;
    return loss;
}

double fs_mse(float *da, const float *a, const float *b, size_t n, float scale)
{
    double part[FS_MAX_THREADS] = {0};
    const int nthr = fs__threads();
    const int team = n >= 65536 ? nthr : 1;
#pragma omp parallel num_threads(team) if (team > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t lo, hi;
        fs__chunk(n, nt, t, &lo, &hi);
        double acc = 0.0;
        for (size_t i = lo; i < hi; i++) {
            float d = a[i] - b[i];
            acc += (double)d * d;
            if (da)
                da[i] = scale * 2.0f * d;
        }
        part[t] = acc;
    }
    double sum = 0.0;
    for (int t = 0; t < team; t++)
        sum += part[t];
    return sum;
}

double fs_kl_div_t(float *ds, const float *s, const float *t, int N, int K, float T, float scale)
{
    const double invT = 1.0 / (double)T, T2 = (double)T * (double)T;
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        const float *sr = s + (size_t)i * K, *tr = t + (size_t)i * K;
        double ms, mt;
        double lses = row_logsumexp(sr, K, invT, &ms), lset = row_logsumexp(tr, K, invT, &mt);
        double kl = 0.0;
        for (int k = 0; k < K; k++) {
            double lps = ((double)sr[k] - ms) * invT - lses; /* log softmax(s/T) */
            double lpt = ((double)tr[k] - mt) * invT - lset;
            double pt = exp(lpt), ps = exp(lps);
            if (pt > 0.0)
                kl += pt * (lpt - lps);
            if (ds)
                ds[(size_t)i * K + k] = (float)((double)scale * (double)T * (ps - pt));
        }
        loss += T2 * kl;
    }
    return loss;
}

void fs_argmax_rows(int32_t *out, const float *x, int N, int K)
{
    for (int i = 0; i < N; i++)
        out[i] = row_argmax(x + (size_t)i * K, K);
}
