/*
 * fs_optim.h — optimizers over a model's trainable parameters (torch.optim.SGD / AdamW semantics,
 * weight decay applied to every trainable tensor as PyTorch does by default) and the learning-rate
 * schedules the methods use. The state mirrors the model's gradient block, so it can be saved in a
 * checkpoint and restored bit-exactly.
 */
#ifndef FS_OPTIM_H
#define FS_OPTIM_H

#include "fs_model.h"

typedef enum { FS_OPT_SGD = 1, FS_OPT_ADAMW = 2 } fs_opt_kind;

typedef struct {
    fs_opt_kind kind;
    float lr;               /* base learning rate (the schedule scales it) */
    float momentum;         /* SGD */
    float weight_decay;
    int nesterov;           /* SGD */
    float beta1, beta2, eps;    /* AdamW */
} fs_optim_config;

typedef struct fs_optimizer fs_optimizer;

/* returns owned: fs_optimizer_free. The model's graph must not change while it is used. */
int fs_optimizer_create(fs_optimizer **out, const fs_model *m, const fs_optim_config *c,
                        fs_diag *d);
void fs_optimizer_free(fs_optimizer *o);
/* One step on every trainable parameter with learning rate lr (schedule applied by the caller). */
void fs_optimizer_step(fs_optimizer *o, fs_model *m, float lr);
/* The state as a flat float array (momentum or Adam moments) and the step count, for checkpoints. */
float *fs_optimizer_state(fs_optimizer *o, size_t *n_floats);
long fs_optimizer_steps(const fs_optimizer *o);
void fs_optimizer_set_steps(fs_optimizer *o, long steps);

/* Schedules: t in [0, T). cosine: lr0 * (1 + cos(pi t / T)) / 2 (CosineAnnealingLR, eta_min 0).
 * step: lr0 * gamma^(number of milestones <= t), milestones as fractions of T (e.g. 0.4, 0.8). */
float fs_lr_cosine(float lr0, long t, long T);
float fs_lr_step(float lr0, long t, long T, const float *milestones, int n, float gamma);

#endif
