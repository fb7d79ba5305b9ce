/*
 * optim.c — torch.optim.SGD and torch.optim.AdamW parameter updates, element-wise, in the same
 * float operation order as torch 1.13's single-tensor implementations.
 */
#include <math.h>
#include <stddef.h>

#include "fs_kernels.h"
#include "kernels_internal.h"

#define PAR_MIN 32768

void fs_sgd_step(float *w, float *buf, const float *grad, size_t n, const fs_sgd_config *c,
                 int first)
{
    const float lr = c->lr, mom = c->momentum, damp = 1.0f - c->dampening, wd = c->weight_decay;
    const int nest = c->nesterov;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        if (wd != 0.0f)
            g = g + wd * w[i];
        if (mom != 0.0f) {
            float b = first ? g : buf[i] * mom + damp * g;
            buf[i] = b;
            g = nest ? g + mom * b : b;
        }
        w[i] = w[i] - lr * g;
    }
}

void fs_adamw_step(float *w, float *m, float *v, const float *grad, size_t n,
                   const fs_adamw_config *c, long t)
{
    /* Python-float scalars as torch computes them (double), used in float arithmetic. */
    const double bc1 = 1.0 - pow((double)c->beta1, (double)t);
    const double bc2 = 1.0 - pow((double)c->beta2, (double)t);
    const float step_size = (float)((double)c->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = (float)(1.0 - (double)c->lr * (double)c->weight_decay);
    const float b1 = c->beta1, b2 = c->beta2, a1 = (float)(1.0 - (double)c->beta1),
                a2 = (float)(1.0 - (double)c->beta2), eps = c->eps;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1 && n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = w[i] * decay;
        float mi = m[i] * b1 + a1 * g;
        float vi = v[i] * b2 + a2 * g * g;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        w[i] = p - step_size * (mi / denom);
    }
}
