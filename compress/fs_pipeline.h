/*
 * fs_pipeline.h — a whole compression run: score, plan, apply, recover, calibrate, evaluate, for
 * one target or a family of targets. `fedslim compress` runs it on a local source; the coordinator
 * runs the very same pipeline on the federated source.
 */
#ifndef FS_PIPELINE_H
#define FS_PIPELINE_H

#include "fs_compress.h"

enum {
    FS_METHOD_DROP_BLOCKS = 1 << 0,
    FS_METHOD_PRUNE_CHANNELS = 1 << 1,
    FS_METHOD_LOWRANK = 1 << 2,
    FS_METHOD_NM = 1 << 3,
    FS_METHOD_INT8 = 1 << 4,
};

typedef enum { FS_RECOVER_NONE = 0, FS_RECOVER_BN = 1, FS_RECOVER_MIMIC = 2, FS_RECOVER_KD = 3,
               FS_RECOVER_CE = 4 } fs_recover_kind;

typedef enum { FS_TARGET_LATENCY = 1, FS_TARGET_FLOPS = 2, FS_TARGET_PARAMS = 3 } fs_target_kind;

#define FS_MAX_TARGETS 16

typedef struct {
    int methods;                    /* FS_METHOD_* bits */
    fs_recover_kind recover;
    fs_target_kind target_kind;
    int n_targets;
    float targets[FS_MAX_TARGETS];  /* fractions of the teacher's latency / FLOPs / params */
    fs_practise_config practise;
    fs_recover_config recovery;     /* objective is set from `recover` */
    int bn_rounds;                  /* BN re-estimation passes; 0 = one per BN layer (exact) */
    /* prune-channels / lowrank (their latency measurement comes from `practise`) */
    fs_prune_config prune;
    long sparsity_iterations;       /* > 0: sparsity training on BN scales before pruning */
    fs_sparsity_config sparsity;    /* default: proximal L1, lambda 1e-4 */
    fs_lowrank_config lowrank;
    /* nm / int8 (all zero = their defaults: 2:4 without fc, percentile calibration) */
    fs_nm_config nm;
    fs_quant_config quant;
    /* drop-blocks: blocks named here are dropped as given (no scoring, no latency choice; one
     * target); empty = scored and chosen for the target */
    int n_drop;
    char drop[FS_MAX_STAGES * FS_MAX_BLOCKS][32];
} fs_pipeline_config;

/* Defaults: drop-blocks, feature mimicking, latency 0.75, ALGORITHMS.md a.7 recovery. */
void fs_pipeline_defaults(fs_pipeline_config *c);
/* "drop-blocks,prune-channels,lowrank,nm,int8" -> bits; "latency=0.75" -> kind + one target. */
int fs_pipeline_parse_methods(int *methods, const char *s, fs_diag *d);
int fs_pipeline_parse_recover(fs_recover_kind *k, const char *s, fs_diag *d);
int fs_pipeline_parse_target(fs_pipeline_config *c, const char *s, fs_diag *d);
/* "0.9,0.8,0.7" -> targets (kind unchanged) */
int fs_pipeline_parse_family(fs_pipeline_config *c, const char *s, fs_diag *d);
/* "layer1.1,layer2.2" -> c->drop */
int fs_pipeline_parse_drop(fs_pipeline_config *c, const char *s, fs_diag *d);
const char *fs_recover_kind_name(fs_recover_kind k);
/* The recovery's default learning rate for a recovery kind (the CLI's and a job's when none is
 * given): 1e-4 for ce (PRACTISE's BP scripts; 0.02 and 0.005 diverged with BN frozen, see
 * docs/compression.md), 0.02 for the others. */
float fs_recover_default_lr(fs_recover_kind k);
const char *fs_target_kind_name(fs_target_kind k);

typedef struct {
    float target;
    fs_model *model;                /* owned (fs_pipeline_results_free) */
    int n_dropped;
    char dropped[FS_MAX_BLOCKS][32];
    double objective_before, objective_after;   /* mean recovery objective on the source data */
    fs_eval_sum on_source;          /* agreement with the teacher (and accuracy if labeled) */
    int64_t params, flops;
    double latency_b1, latency_b64; /* seconds per forward pass */
    int n_changes;                  /* prune-channels: widths per layer/stream; lowrank: ranks */
    fs_layer_change *changes;       /* owned (fs_pipeline_output_free) */
} fs_pipeline_result;

typedef struct {
    double latency_b1, latency_b64;
    int64_t params, flops;
    fs_eval_sum on_source;
    int n_scores;
    fs_block_score scores[FS_MAX_STAGES * FS_MAX_BLOCKS];
    int n_results;
    fs_pipeline_result results[FS_MAX_TARGETS];
} fs_pipeline_output;

/* Runs the pipeline. out: caller-provided, filled; free its models with fs_pipeline_output_free. */
int fs_pipeline_run(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                    fs_progress_fn progress, void *ud, fs_pipeline_output *out, fs_diag *d);
void fs_pipeline_output_free(fs_pipeline_output *out);

/* The post-training methods of c->methods (nm, then int8) applied to every result in `out`, or,
 * when `out` has none (no structural method), to a copy of the teacher (one result, target 1):
 * N:M masks + masked fine-tuning with c->recovery (unless --recover none/bn), then int8 PTQ;
 * then the result's measurements. Called by fs_pipeline_run (compress/nm.c). */
int fs_pipeline_posttrain(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                          fs_progress_fn progress, void *ud, fs_pipeline_output *out, fs_diag *d);

#endif
