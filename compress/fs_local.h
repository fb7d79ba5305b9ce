/*
 * fs_local.h — the computations behind every fs_source request, on one site's own dataset:
 * losses and their gradients, BN input moments, activation histograms, evaluation counts.
 * `fedslim compress` wraps it as a local fs_source; each agent calls it to answer the
 * coordinator. It returns sums over samples and counts only.
 */
#ifndef FS_LOCAL_H
#define FS_LOCAL_H

#include "fs_data.h"
#include "fs_source.h"

typedef struct fs_local fs_local;

/* borrows teacher and ds for its lifetime. max_batch bounds the activations kept in memory.
 * site_tag distinguishes the sampling streams of different sites (0 for a single machine). */
int fs_local_create(fs_local **out, const fs_model *teacher, const fs_dataset *ds, int max_batch,
                    uint64_t site_tag, fs_diag *d);
void fs_local_free(fs_local *L);
int64_t fs_local_count(const fs_local *L);

/* A new student graph: reallocates activations if needed. */
int fs_local_set_student(fs_local *L, const fs_model *student, fs_diag *d);
/* total_n: samples over all sites (the local site's share of a minibatch is batch * n / total_n). */
int fs_local_loss(fs_local *L, fs_model *student, const fs_loss_req *req, int64_t total_n,
                  fs_loss_sum *out, fs_diag *d);
int fs_local_moments(fs_local *L, fs_model *student, const int *nodes, int n_nodes, double *sum,
                     double *sumsq, int64_t *count, fs_diag *d);
int fs_local_histogram(fs_local *L, fs_model *student, const int *nodes, int n_nodes,
                       const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d);
int fs_local_evaluate(fs_local *L, fs_model *student, fs_eval_sum *out, fs_diag *d);
/* One site's part of a FedAvg round (fs_source_local_update): req->steps local SGD steps from the
 * student's weights on this site's data (each on the mean loss of the step's samples, minibatch
 * share as for fs_local_loss with total_n), then WRITES n · (w_after − w_before) into the .grad of
 * every trainable parameter, n = this site's sample count (out->n; 0, with zero deltas, when its
 * share of a minibatch is no sample), and restores the weights. The local optimizer is created and
 * dropped inside: nothing outlives the call. FS_EDIVERGED if a local loss or weight is not
 * finite. */
int fs_local_update(fs_local *L, fs_model *student, const fs_update_req *req, int64_t total_n,
                    fs_update_sum *out, fs_diag *d);

/* A local fs_source over fs_local (owns L). */
int fs_source_local(fs_source **out, fs_local *L, fs_diag *d);

#endif
