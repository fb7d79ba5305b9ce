/*
 * fs_source.h — the one interface through which the compression engine reaches data
 * (ALGORITHMS.md g.1–g.3). Every answer is a SUM over samples plus the sample count; the engine
 * divides. The engine never sees a sample, a per-sample value, or where the data live: a local
 * source serves it from a dataset on this machine (source_local.c); the federation serves it from
 * agents (coordinator/), each agent using the same local computation on its own data.
 *
 * The source holds the teacher (given at creation). The student changes as the engine works:
 * fs_source_set_student announces a new graph (architecture + adaptors) with all its weights;
 * every request then carries the student whose trainable tensors may have changed since (the
 * federated source sends only those).
 */
#ifndef FS_SOURCE_H
#define FS_SOURCE_H

#include <stdint.h>

#include "fs_model.h"

typedef enum {
    FS_OBJ_MIMIC = 1,       /* MSE(mean) between student and teacher pre-GAP features (MiR) */
    FS_OBJ_KD = 2,          /* T² · KL(softmax(t/T) ‖ softmax(s/T)) on logits (Hinton) */
    FS_OBJ_CE = 3,          /* cross-entropy on labels (labeled samples only) */
} fs_objective;

/* Which samples a request covers. */
typedef struct {
    int batch;              /* global minibatch: each site draws round(batch * n_site / N) of its
                               samples for this step; 0 = every sample */
    uint64_t seed;          /* sampling and augmentation stream: (seed, step) */
    int64_t step;
    int pad, hflip;         /* augmentation (random crop with padding, horizontal flip); 0 = off */
} fs_sample_spec;

typedef struct {
    fs_objective objective;
    float temperature;      /* KD */
    fs_mode mode;           /* BN: FS_MODE_EVAL (frozen) or FS_MODE_TRAIN_NOSTATS (batch stats) */
    int want_grad;          /* 1: sums of gradients of trainable parameters into student .grad */
    fs_sample_spec sample;
} fs_loss_req;

typedef struct {
    double loss_sum;        /* Σ over samples of the per-sample loss */
    int64_t count;          /* samples that contributed */
} fs_loss_sum;

typedef struct {
    int64_t n;              /* samples evaluated */
    int64_t n_labeled;
    int64_t correct;        /* argmax == label, over labeled samples */
    int64_t agree;          /* argmax == teacher's argmax, over all samples */
    double loss_sum;        /* Σ cross-entropy over labeled samples */
} fs_eval_sum;

/* A FedAvg round (ALGORITHMS.md g.2, "model deltas after E local steps"): every site starts from
 * the student's current weights and runs `steps` steps of SGD (torch.optim.SGD semantics, on the
 * site's own MEAN loss per step) on the trainable parameters, with a fresh optimizer each round:
 * the local momentum starts at zero every round and nothing is kept between rounds. Local step t
 * (0-based) of round r samples as a loss request with sample.step = r * steps + t. */
typedef struct {
    fs_objective objective;
    float temperature;      /* KD */
    fs_mode mode;           /* BN during the local steps */
    fs_sample_spec sample;  /* batch: global minibatch (each site draws its share per local step,
                               as for fs_loss_req); seed, pad, hflip; step = the round r */
    int steps;              /* E >= 1 local steps */
    float lr, momentum, weight_decay;   /* the local optimizer; lr is this round's */
} fs_update_req;

typedef struct {
    int64_t n;              /* Σ n_k over the sites that took part: the deltas' weights */
    double loss_sum;        /* Σ per-sample loss of every site's first local step (at the round's
                               starting weights, the samples that step drew) */
    int64_t loss_count;     /* samples of those first steps */
} fs_update_sum;

typedef struct fs_source fs_source;

typedef struct {
    int (*set_student)(void *self, const fs_model *student, fs_diag *d);
    int (*loss)(void *self, fs_model *student, const fs_loss_req *req, fs_loss_sum *out,
                fs_diag *d);
    int (*moments)(void *self, fs_model *student, const int *nodes, int n_nodes, double *sum,
                   double *sumsq, int64_t *count, fs_diag *d);
    int (*histogram)(void *self, fs_model *student, const int *nodes, int n_nodes,
                     const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d);
    int (*evaluate)(void *self, fs_model *student, fs_eval_sum *out, fs_diag *d);
    int64_t (*count)(void *self);   /* total samples, for planning */
    void (*free)(void *self);
    /* Optional (NULL: the source cannot run FedAvg rounds). Last, so that tables written before it
     * existed stay valid. */
    int (*local_update)(void *self, fs_model *student, const fs_update_req *req,
                        fs_update_sum *out, fs_diag *d);
} fs_source_ops;

struct fs_source {
    const fs_source_ops *ops;
    void *self;
};

/* Announces a student graph and all its weights (after a structural change). */
int fs_source_set_student(fs_source *s, const fs_model *student, fs_diag *d);
/* Σ per-sample loss (+ Σ gradients of trainable params ADDED into student .grad, callers zero). */
int fs_source_loss(fs_source *s, fs_model *student, const fs_loss_req *req, fs_loss_sum *out,
                   fs_diag *d);
/* Per-channel Σx, Σx² of the INPUTS of the given nodes (eval-mode forward), and the number of
 * values per channel that were summed (samples × H × W). sum/sumsq: concatenated [C] per node. */
int fs_source_moments(fs_source *s, fs_model *student, const int *nodes, int n_nodes, double *sum,
                      double *sumsq, int64_t *count, fs_diag *d);
/* Histograms of the OUTPUTS of the given nodes on bins equal-width bins over [lo[i], hi[i]]
 * (values outside go to the end bins). counts: [n_nodes * bins]. */
int fs_source_histogram(fs_source *s, fs_model *student, const int *nodes, int n_nodes,
                        const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d);
/* Correct counts, agreement with the teacher, cross-entropy sum (eval mode, no augmentation). */
int fs_source_evaluate(fs_source *s, fs_model *student, fs_eval_sum *out, fs_diag *d);
/* One FedAvg round: every site runs req->steps local SGD steps from the student's weights on its
 * own data; WRITES Σ_k n_k · (w_k_after − w_before) into student .grad of every trainable parameter
 * (overwritten, not added; other gradients untouched) and out->n = Σ_k n_k, so the average delta is
 * .grad / n. The student's weights are unchanged on return. A site whose minibatch share is zero
 * samples takes no part (n_k = 0, no delta). FS_EINVAL if the source cannot do it. */
int fs_source_local_update(fs_source *s, fs_model *student, const fs_update_req *req,
                           fs_update_sum *out, fs_diag *d);
int64_t fs_source_count(fs_source *s);
void fs_source_free(fs_source *s);

#endif
