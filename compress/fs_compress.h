/*
 * fs_compress.h — the few-shot compression engine: measure, score, plan, apply, recover.
 * Works on models and an fs_source; knows nothing of files of data or of the network.
 * ALGORITHMS.md sections a (PRACTISE), c (channel pruning), d (N:M), e (low-rank), f (int8).
 */
#ifndef FS_COMPRESS_H
#define FS_COMPRESS_H

#include <stdint.h>
#include <stdio.h>

#include "fs_optim.h"
#include "fs_source.h"

/* ---- progress ------------------------------------------------------------------------------ */

/* Called by long phases: phase name, iteration (1-based), total, current loss, seconds left. */
typedef void (*fs_progress_fn)(void *ud, const char *phase, long it, long total, double loss,
                               double eta_sec);

/* ---- latency (measured with our kernels on this CPU) -------------------------------------- */

/* Seconds per forward pass of a batch of `batch` random inputs: the fastest of `reps` runs
 * (after one warm-up), since interference only adds time. Data-free. */
int fs_latency(double *sec, fs_model *m, int batch, int reps, fs_diag *d);

/* A latency measurement the caller may intercept (the coordinator journals them so that a resumed
 * job makes the same choices). NULL means fs_latency. */
typedef int (*fs_latency_fn)(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d);

/* Fitting a structural plan to a latency target: `build` makes the student for a FLOPs goal
 * (fraction of the teacher's FLOPs); fs_fit_latency measures the teacher, then builds at goals
 * tightened by each miss until a student's latency is <= target x the teacher's, at most
 * FS_FIT_LATENCY_PLANS times (else an error naming `method`). */
#define FS_FIT_LATENCY_PLANS 6
typedef struct {
    const char *method;         /* for the error message, e.g. "prune-channels" */
    int (*build)(void *ud, double flops_goal, fs_model **out, fs_diag *d);
    void *ud;
    fs_latency_fn latency;      /* NULL: fs_latency */
    void *latency_ud;
    int batch, reps;
} fs_latency_fit;
/* returns owned: *out, the first student that met the target. */
int fs_fit_latency(fs_model **out, const fs_model *teacher, double target,
                   const fs_latency_fit *fit, fs_diag *d);

/* Hooks that make recovery resumable: `resume` is called before the first step and may restore
 * the student's trainable parameters and the optimizer state and say where to continue (*start,
 * the number of steps already done); `checkpoint` is called after every step with the number of
 * steps done. Either may be NULL. A non-zero return stops the recovery with that code. */
typedef struct fs_optimizer fs_optimizer;
typedef struct {
    int (*resume)(void *ud, fs_model *student, fs_optimizer *opt, long total, long *start,
                  fs_diag *d);
    int (*checkpoint)(void *ud, fs_model *student, fs_optimizer *opt, long done, long total,
                      double loss, fs_diag *d);
    void *ud;
} fs_recover_hooks;

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
    const fs_recover_hooks *hooks;  /* optional: checkpoint / resume */
    /* FedAvg (appended fields; 0 = FedSGD, the default). local_steps = E > 0: each of the
     * `iterations` ROUNDS asks the source for a local update (fs_source_local_update): every site
     * runs E local SGD steps (lr of the schedule at this round, momentum, weight_decay, its share
     * of `batch` per step; a fresh local optimizer each round) and the student moves by
     * server_lr x the sample-weighted average delta (server_lr 0 means 1). No optimizer state
     * lives here; the checkpoint hooks still get an optimizer, whose state stays zero and whose
     * step count is the rounds done, so a snapshot is in effect the weights. before_step is
     * refused (it edits a gradient FedAvg never forms); after_step runs after each round. */
    int local_steps;
    float server_lr;
} fs_recover_config;

/* The defaults of ALGORITHMS.md a.7 (mimic, SGD lr 0.02, momentum 0.9, wd 1e-4, x0.1 at 40% and
 * 80%, 2000 iterations, batch 64, BN frozen, crop+flip augmentation with pad 2). */
void fs_recover_defaults(fs_recover_config *c);

/* SGD on the student's trainable parameters; each step asks the source for the summed loss and
 * gradients and divides by the count (FedSGD). With c->local_steps > 0, FedAvg rounds instead
 * (see fs_recover_config). *final_loss: mean loss of the last step (FedAvg: of the last round's
 * first local steps, at the weights the round started from). */
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
    fs_latency_fn latency;      /* optional: measurement hook (default fs_latency) */
    void *latency_ud;
    const fs_recover_hooks *hooks;  /* optional: passed to every adaptor training */
} fs_practise_config;
void fs_practise_defaults(fs_practise_config *c);

typedef struct {
    char name[32];              /* teacher block name, "layer2.1" */
    double recoverability;      /* R(b): mean squared feature error after adaptor training */
    double loss_before;         /* the same without adaptor training */
    double latency_saved_pct;   /* (lat_teacher - lat_without_b) / lat_teacher * 100 */
    double score;               /* R / latency_saved_pct, lower = drop first */
    int diverged;               /* adaptor training diverged: R and score are FS_SCORE_DIVERGED */
} fs_block_score;
#define FS_SCORE_DIVERGED 1e30

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

/* ==== channel pruning (network slimming) and low-rank factorization ==========================
 * ALGORITHMS.md c.1-c.4 and e.1. Both take a dense ResNet teacher (layers without rank/N:M/int8
 * options, no adaptors) and return a physically smaller student whose tensors keep torchvision's
 * names, so every objective and the model format work unchanged. Both are data-free except the
 * optional sparsity training (fs_prune_sparsify), which runs on the source like any recovery. */

typedef enum { FS_COST_FLOPS = 1, FS_COST_PARAMS = 2, FS_COST_LATENCY = 3 } fs_cost_kind;

/* One layer (or channel group) whose size a method changed: widths for pruning, ranks for
 * low-rank. */
typedef struct {
    char name[64];      /* pruning: the conv whose outputs were cut ("layer1.0.conv1") or the
                           residual stream ("stream layer2", "stream conv1+layer1");
                           low-rank: the factorized layer ("layer1.0.conv2", "fc") */
    int before, after;  /* pruning: channels; low-rank: full rank min(OC, C*KH*KW), kept rank */
    int rank;           /* 1: a low-rank change (ranks), 0: a pruning change (widths) */
} fs_layer_change;

typedef enum { FS_PRUNE_BN_GAMMA = 1, FS_PRUNE_L1 = 2 } fs_prune_criterion;

typedef struct {
    fs_prune_criterion criterion;   /* default |gamma| of the BN after each conv */
    float min_fraction;             /* a layer keeps >= max(1, ceil(min_fraction * width)); 0.1 */
    int compensate;                 /* 1 (default): fold removed channels' constant outputs into
                                       the following BN's running mean / the fc bias (c.4) */
    float threshold;                /* target 0 only: remove every channel scoring <= threshold */
    int keep_output;                /* 1: never prune the stream that feeds global pooling (the
                                       pre-GAP features keep the teacher's shape, as feature
                                       mimicking needs); default 0 */
    /* latency targets: measured with these (latency NULL = fs_latency; the same signature as
     * fs_latency_fn) */
    int latency_batch, latency_reps;    /* default 64, 5 */
    int (*latency)(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d);
    void *latency_ud;
} fs_prune_config;
void fs_prune_defaults(fs_prune_config *c);

/* Plans and applies channel pruning. Scores: per channel, |gamma| (or the filter's L1 norm over the
 * mean L1 norm of its layer); channels joined by residual adds form one group per stream (every
 * block's last BN and downsample BN of a stage, plus the stem's bn1 when layer1.0 has no
 * downsample) scored by the mean over the group; interior channels are scored per layer. Removes
 * the lowest-scoring channel, globally, until cost <= target * teacher's cost, where cost is FLOPs
 * or parameters (exact, as fs_model_flops / fs_model_num_params count them) or latency (planned
 * by FLOPs, then measured and tightened until met). target 0: threshold mode (c->threshold).
 * returns owned: *out (fs_model_free) and *changes (free(), one entry per layer/group, also for
 * unchanged ones; may be NULL when not wanted). FS_EINVAL with a message when the target is below
 * what the minimum widths allow or the teacher is not a dense ResNet. */
int fs_prune_channels(fs_model **out, const fs_model *teacher, const fs_prune_config *c,
                      fs_cost_kind kind, double target, fs_layer_change **changes, int *n_changes,
                      fs_diag *d);

/* Sparsity training on BN scales before pruning (c.1/c.2): the source's objective plus
 * lambda * sum g(gamma) over every BN, for rc->iterations steps of fs_recover (whose before_step /
 * after_step hooks it uses). */
typedef enum { FS_SPARSITY_L1 = 1, FS_SPARSITY_TL1 = 2, FS_SPARSITY_PROX_L1 = 3 } fs_sparsity_kind;
typedef struct {
    fs_sparsity_kind kind;
    float lambda;       /* default 1e-4 */
    float a;            /* TL1 shape, default 1 */
} fs_sparsity_config;
int fs_prune_sparsify(fs_source *src, fs_model *m, const fs_sparsity_config *sc,
                      const fs_recover_config *rc, fs_progress_fn progress, void *ud, fs_diag *d);

typedef struct {
    int all_convs;      /* 0 (default): 3x3 stride-1 convs only (TRP); 1: every conv but the stem */
    int stem;           /* also the stem conv; default 0 */
    int linear;         /* also the fc layer (every linear of an MLP); default 1 */
    float energy;       /* target 0: rank = min r with sum_{i<=r} s_i^2 / sum s_i^2 >= energy; 0.9 */
    int latency_batch, latency_reps;    /* latency targets, as fs_prune_config */
    int (*latency)(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d);
    void *latency_ud;
} fs_lowrank_config;
void fs_lowrank_defaults(fs_lowrank_config *c);

/* The smallest r in 1..n whose first r squared singular values hold >= e of the total
 * (s descending, n >= 1; 1 for an all-zero s). */
int fs_lowrank_energy_rank(const double *s, int n, double e);

/* Factorizes the named layers at the given ranks (1..min(OC, C*KH*KW)), with no cost test:
 * conv -> "<name>.0" = sqrt(S_r) V_r^T [r,C,KH,KW] (original stride/padding) + "<name>.1" =
 * U_r sqrt(S_r) [OC,r,1,1]; linear likewise, bias on ".1". Other tensors are copied.
 * returns owned *out. */
int fs_lowrank_apply(fs_model **out, const fs_model *teacher, const char *const *names,
                     const int *ranks, int n, fs_diag *d);

/* Plans ranks (by energy when target is 0, else by bisection on one global energy threshold until
 * cost <= target * teacher's; a layer is factorized only when r (IN + OUT) < IN * OUT) and applies
 * them. Returns owned *out and *changes (factorized layers only; may be NULL). */
int fs_lowrank(fs_model **out, const fs_model *teacher, const fs_lowrank_config *c,
               fs_cost_kind kind, double target, fs_layer_change **changes, int *n_changes,
               fs_diag *d);

/* ==== end of channel pruning / low-rank ===================================================== */

/* ==== int8 post-training quantization and N:M sparsity (ALGORITHMS.md d.1, f.1, g) ==========
 * Part "quant/nm" (compress/quant.c, compress/nm.c). A configuration whose fields are all zero
 * means the defaults. Both work on any dense-or-compressed student without adaptors; the model
 * format of the results is in docs/model-format.md ("Stored layers"). */

/* The layer options of a conv/linear layer of `a` by its module name ("conv1", "layer2.0.conv1",
 * "layer2.0.downsample.0", "fc", "fc2"), or NULL if the architecture has no such layer. */
fs_layer_opts *fs_arch_layer_opts(fs_arch *a, const char *layer);

typedef enum {
    FS_CALIB_MINMAX = 1,        /* the observed range */
    FS_CALIB_PERCENTILE = 2,    /* the (100-p)th .. pth percentiles (p = 99.99) */
    FS_CALIB_MSE = 3,           /* the range t*[min, max], t in (0, 1], of least expected squared
                                   quantization error on the histogram */
} fs_calib_method;

typedef struct {
    fs_calib_method method;     /* 0 = FS_CALIB_PERCENTILE */
    float percentile;           /* 0 = 99.99 */
    int bins;                   /* histogram bins; 0 = 2048 */
    int keep_stem_float;        /* 1: the stem conv stays float (default: quantized) */
    int keep_linear_float;      /* 1: linear layers stay float (default: quantized) */
} fs_quant_config;

/* "minmax" | "percentile" | "mse" */
int fs_calib_parse(fs_calib_method *m, const char *s, fs_diag *d);
const char *fs_calib_name(fs_calib_method m);

/* A copy of `m` whose conv and linear layers are int8 layers (qbits 8) with every BN folded into
 * the conv before it (W' = W g/sqrt(v+eps), b' = beta + (b - mu) g/sqrt(v+eps)), weights still
 * float, inputs not calibrated (input_scale 0: not fake-quantized): the same function as `m` up to
 * rounding. FS_EINVAL if `m` has adaptors or int8 layers already. returns owned *out. */
int fs_quant_fold(fs_model **out, const fs_model *m, const fs_quant_config *c, fs_diag *d);

/* Per-output-channel symmetric int8 weights for every int8 layer of `m`, in place:
 * s_c = max_i |W[c,i]| / 127 (1 for an all-zero channel), W := s_c * clamp(rint(W / s_c), -127, 127),
 * weight_scale := s. Exact zeros (N:M) stay zero. */
void fs_quant_weights(fs_model *m);

/* The clip range [*a, *b] (containing 0) chosen by c->method from a histogram of `bins` equal bins
 * over [lo, hi] whose counts hold every value. FS_EINVAL for an empty histogram. */
int fs_calib_clip(const int64_t *counts, int bins, float lo, float hi, const fs_quant_config *c,
                  float *a, float *b, fs_diag *d);
/* uint8 parameters for the range [a, b] (a <= 0 <= b): s = (b - a) / 255 (1 if b == a),
 * z = clamp(rint(-a / s), 0, 255). */
void fs_quant_act_params(float a, float b, float *scale, float *zero_point);

/* Input ranges of every int8 layer from summed histograms (g: additive, so federated): the
 * inputs' moments give a first range (mean +- 8 sd per channel, widened until nothing falls
 * outside), a histogram on it the observed range, a second histogram on that range the clip of
 * c->method. The model input's range is data-free: the normalised image of [0, 1]. */
int fs_quant_calibrate(fs_source *src, fs_model *m, const fs_quant_config *c, fs_diag *d);

/* fs_quant_fold + fs_quant_weights + fs_quant_calibrate. returns owned *out. */
int fs_quant_int8(fs_model **out, fs_source *src, const fs_model *m, const fs_quant_config *c,
                  fs_diag *d);

typedef struct {
    int n, m;                   /* N:M; 0 = 2:4 */
    int fc;                     /* 1: also the final linear layer (default: dense) */
    float decay;                /* SR-STE decay on pruned weights; 0 = 2e-4, < 0 = none */
} fs_nm_config;

/* Mask of one row of K weights (K a multiple of m): in each group of m consecutive weights, 1 for
 * the n largest |w| (ties: the lower position), 0 for the rest. */
void fs_nm_mask_row(uint8_t *mask, const float *w, size_t K, int n, int m);

/* A copy of `m` with N:M sparsity (magnitude masks along the reduction dimension, PyTorch order
 * C,KH,KW) on every conv but the stem (for an MLP every linear but the last), plus the final
 * linear with c->fc; layers whose reduction dimension is not a multiple of M stay dense.
 * *n_layers (may be NULL): layers made sparse. returns owned *out. */
int fs_nm_apply(fs_model **out, const fs_model *m, const fs_nm_config *c, int *n_layers,
                fs_diag *d);

/* Masked fine-tuning of an N:M student (SR-STE): forward with W*mask, dense gradient plus
 * decay * (1 - mask) * W, the mask recomputed from the dense weights after every step; the
 * result's pruned weights are exactly zero. rc: the recovery (its after_step/before_step hooks
 * are used here and must be NULL). rc->hooks may checkpoint and resume it: they see the model
 * holding the dense weights (the state a resumed fine-tuning needs), not W*mask. */
int fs_nm_finetune(fs_source *src, fs_model *m, const fs_nm_config *c, const fs_recover_config *rc,
                   fs_progress_fn progress, void *ud, double *final_loss, fs_diag *d);

/* 0 if every group of every N:M layer has at most N non-zero weights; else FS_EINVAL naming the
 * layer, row and group. */
int fs_nm_check(const fs_model *m, fs_diag *d);

/* ==== end of int8 / N:M ===================================================================== */

#endif
