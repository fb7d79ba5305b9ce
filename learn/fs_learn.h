/*
 * fs_learn.h — supervised training and evaluation of a model on a local dataset: the loops behind
 * `fedslim train` and `fedslim eval`, and the per-batch pieces the compression engine's local data
 * source reuses (batch normalisation with the model's mean/std, accuracy counting).
 * Depends on model/ and data/; knows nothing of the network.
 */
#ifndef FS_LEARN_H
#define FS_LEARN_H

#include <stdio.h>

#include "fs_data.h"
#include "fs_model.h"

#define FS_MAX_CLASSES 1000

typedef struct {
    int64_t n;                              /* samples evaluated */
    int64_t correct;                        /* argmax == label (labeled data) */
    double loss_sum;                        /* Σ cross-entropy (labeled data) */
    int num_classes;
    int64_t class_n[FS_MAX_CLASSES];
    int64_t class_correct[FS_MAX_CLASSES];
} fs_eval_result;

/* Checks that a dataset can feed the model (channels, size, classes); names both in the error. */
int fs_learn_check_data(const fs_model *m, const fs_dataset *ds, fs_diag *d);

/* Evaluates samples idx[0..n) (idx NULL: the whole dataset) in eval mode, batch by batch. */
int fs_evaluate(fs_eval_result *res, fs_model *m, const fs_dataset *ds, const int32_t *idx, int n,
                int batch, fs_diag *d);

typedef struct {
    int epochs;
    int batch;
    float lr, momentum, weight_decay;
    int nesterov;
    uint64_t seed;
    fs_augment aug;
    const fs_dataset *eval;         /* optional: evaluated after every epoch */
    FILE *progress;                 /* progress lines (NULL: silent) */
    int progress_tty;               /* 1: rewrite one line with \r */
} fs_train_config;

/* SGD with a cosine schedule over all iterations, cross-entropy, BN in training mode.
 * The model's arch mean/std normalise the images. Deterministic for a seed and thread count. */
int fs_train_supervised(fs_model *m, const fs_dataset *train, const fs_train_config *c,
                        fs_diag *d);

/* Per-channel mean and std of a dataset's pixels (/255), for normalisation. */
void fs_data_stats(const fs_dataset *ds, float *mean, float *std);

#endif
