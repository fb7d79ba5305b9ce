/*
 * optim.c — SGD and AdamW over a model's trainable parameters, plus learning-rate schedules.
 */
#include <math.h>
#include <stdlib.h>

#include "fs_optim.h"

struct fs_optimizer {
    fs_optim_config c;
    long steps;
    size_t n;               /* floats per moment buffer (= the model's gradient block) */
    float *state;           /* SGD: momentum [n]; AdamW: m [n] then v [n] */
    const float *grad_base; /* the model's gradient block, to locate each parameter's state */
};

int fs_optimizer_create(fs_optimizer **out, const fs_model *m, const fs_optim_config *c,
                        fs_diag *d)
{
    *out = NULL;
    if (c->kind != FS_OPT_SGD && c->kind != FS_OPT_ADAMW)
        return fs_diag_set(d, FS_EINVAL, "unknown optimizer %d", (int)c->kind);
    if (!(c->lr >= 0) || !(c->weight_decay >= 0) || !(c->momentum >= 0))
        return fs_diag_set(d, FS_EINVAL, "optimizer: lr, momentum and weight decay must be >= 0");
    fs_optimizer *o = calloc(1, sizeof *o);
    if (!o)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    o->c = *c;
    o->n = m->grad_floats;
    o->grad_base = m->grad_block;
    o->state = fs_alloc((c->kind == FS_OPT_ADAMW ? 2 : 1) * (o->n ? o->n : 16) * sizeof(float));
    if (!o->state) {
        free(o);
        return fs_diag_set(d, FS_ENOMEM, "out of memory for optimizer state");
    }
    *out = o;
    return 0;
}

void fs_optimizer_free(fs_optimizer *o)
{
    if (!o)
        return;
    fs_free(o->state);
    free(o);
}

void fs_optimizer_step(fs_optimizer *o, fs_model *m, float lr)
{
    FS_ASSERT(m->grad_block == o->grad_base && m->grad_floats == o->n);
    o->steps++;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        size_t off = (size_t)(p->grad - m->grad_block);
        if (o->c.kind == FS_OPT_SGD) {
            fs_sgd_config sc = {.lr = lr, .momentum = o->c.momentum, .dampening = 0,
                                .weight_decay = o->c.weight_decay, .nesterov = o->c.nesterov};
            fs_sgd_step(p->data, o->state + off, p->grad, p->numel, &sc, o->steps == 1);
        } else {
            fs_adamw_config ac = {.lr = lr, .beta1 = o->c.beta1, .beta2 = o->c.beta2,
                                  .eps = o->c.eps, .weight_decay = o->c.weight_decay};
            fs_adamw_step(p->data, o->state + off, o->state + o->n + off, p->grad, p->numel, &ac,
                          o->steps);
        }
    }
}

float *fs_optimizer_state(fs_optimizer *o, size_t *n_floats)
{
    *n_floats = (o->c.kind == FS_OPT_ADAMW ? 2 : 1) * o->n;
    return o->state;
}

long fs_optimizer_steps(const fs_optimizer *o)
{
    return o->steps;
}

void fs_optimizer_set_steps(fs_optimizer *o, long steps)
{
    o->steps = steps;
}

float fs_lr_cosine(float lr0, long t, long T)
{
    if (T <= 0)
        return lr0;
    return (float)(lr0 * 0.5 * (1.0 + cos(M_PI * (double)t / (double)T)));
}

float fs_lr_step(float lr0, long t, long T, const float *milestones, int n, float gamma)
{
    double lr = lr0;
    for (int i = 0; i < n; i++)
        if ((double)t >= floor(milestones[i] * (double)T))
            lr *= gamma;
    return (float)lr;
}
