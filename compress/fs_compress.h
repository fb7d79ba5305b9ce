/*
 * fs_compress.h — the few-shot compression engine: measure, score, plan, apply, recover.
 * Works on models and an fs_source; knows nothing of files of data or of the network.
 * ALGORITHMS.md sections a (PRACTISE), c (channel pruning), d (N:M), e (low-rank), f (int8).
 */
#ifndef FS_COMPRESS_H
#define FS_COMPRESS_H

#include <stdio.h>

#include "fs_optim.h"
#include "fs_source.h"

/* ---- progress ------------------------------------------------------------------------------ */

/* Called by long phases: phase name, iteration (1-based), total, current loss, seconds left. */
typedef void (*fs_progress_fn)(void *ud, const char *phase, long it, long total, double loss,
                               double eta_sec);

/* ---- latency (measured with our kernels on this CPU) -------------------------------------- */

/* Median seconds per forward pass of a batch of `batch` random inputs over `reps` runs (after one
 * warm-up). Data-free. */
int fs_latency(double *sec, fs_model *m, int batch, int reps, fs_diag *d);

/* ---- recovery: minimise an objective over the trainable parameters ------------------------ */

typedef struct {
    fs_objective objective;
    float temperature;          /* KD, default 4 */
    fs_mode mode;               /* FS_MODE_EVAL: BN frozen (default); FS_MODE_TRAIN_NOSTATS */
    long iterations;            /* default 2000 (ALGORITHMS a.7) */
    int batch;                  /* default 64; 0 = every sample every step */
    float lr, momentum, weight_decay;   /* default 0.02, 0.9, 1e-4 */
    float milestones[2];        /* x0.1 at these fractions of the iterations: 0.4, 0.8 */
    uint64_t seed;
    int pad, hflip;             /* augmentation */
    /* Optional: called after every optimizer step (e.g. to re-apply N:M masks, or a proximal
     * step on BN scales). it is 0-based; lr is the step's learning rate. */
    void (*after_step)(void *ud, fs_model *student, long it, float lr);
    void *after_step_ud;
    /* Optional: called after the gradients are averaged, before the step (e.g. to add a
     * sparsity sub-gradient). */
    void (*before_step)(void *ud, fs_model *student, long it, float lr);
    void *before_step_ud;
} fs_recover_config;

/* The defaults of ALGORITHMS.md a.7 (mimic, SGD lr 0.02, momentum 0.9, wd 1e-4, x0.1 at 40% and
 * 80%, 2000 iterations, batch 64, BN frozen, crop+flip augmentation with pad 2). */
void fs_recover_defaults(fs_recover_config *c);

/* SGD on the student's trainable parameters; each step asks the source for the summed loss and
 * gradients and divides by the count. *final_loss: mean loss of the last step. */
int fs_recover(fs_source *src, fs_model *student, const fs_recover_config *c, const char *phase,
               fs_progress_fn progress, void *ud, double *final_loss, fs_diag *d);

/* Mean per-sample objective over every sample, no augmentation, no gradient (BN frozen). */
int fs_objective_mean(fs_source *src, fs_model *student, fs_objective obj, float temperature,
                      double *mean, fs_diag *d);

/* Batch-norm re-estimation from summed first and second moments (exact global statistics):
 * `rounds` passes, each recomputing every BN's input moments under the current statistics. */
int fs_bn_reestimate(fs_source *src, fs_model *student, int rounds, fs_diag *d);

/* ---- block dropping (PRACTISE) ------------------------------------------------------------ */

typedef struct {
    long iterations;            /* adaptor training per candidate; default 300 */
    int batch;                  /* default 64 */
    float lr, momentum, weight_decay;   /* 0.02, 0.9, 1e-4 */
    uint64_t seed;
    int pad, hflip;             /* augmentation of adaptor training; default off */
    int latency_batch;          /* batch at which latency is measured; default 64 */
    int latency_reps;           /* default 5 */
} fs_practise_config;
void fs_practise_defaults(fs_practise_config *c);

typedef struct {
    char name[32];              /* teacher block name, "layer2.1" */
    double recoverability;      /* R(b): mean squared feature error after adaptor training */
    double loss_before;         /* the same without adaptor training */
    double latency_saved_pct;   /* (lat_teacher - lat_without_b) / lat_teacher * 100 */
    double score;               /* R / latency_saved_pct, lower = drop first */
} fs_block_score;

/* The architecture with the named teacher blocks removed (later blocks renumbered, their origin
 * recorded). FS_EINVAL if a name is not a droppable block (identity shortcut). */
int fs_arch_drop_blocks(fs_arch *out, const fs_arch *teacher, const char *const *names, int n,
                        fs_diag *d);
/* A student for `arch` (from fs_arch_drop_blocks) with the teacher's weights, copied through each
 * block's origin. */
int fs_student_from_teacher(fs_model **out, const fs_arch *arch, const fs_model *teacher,
                            const fs_adaptor_spec *adaptors, int n_adaptors, fs_diag *d);
/* Scores every candidate block (ALGORITHMS.md a.10). scores: room for teacher->n_blocks. */
int fs_practise_score(fs_source *src, fs_model *teacher, const fs_practise_config *c,
                      fs_block_score *scores, int *n_scores, fs_progress_fn progress, void *ud,
                      fs_diag *d);
/* Greedy fill: blocks in ascending score until the measured latency <= target * teacher's.
 * Writes the chosen names (indices into scores) and returns how many. */
int fs_practise_choose(const fs_block_score *scores, int n, double target_fraction,
                       int *chosen, int *n_chosen, fs_diag *d);

#endif
