/*
 * source.c — dispatch of the fs_source interface to its implementation.
 */
#include <stdlib.h>

#include "fs_source.h"

int fs_source_set_student(fs_source *s, const fs_model *student, fs_diag *d)
{
    return s->ops->set_student(s->self, student, d);
}

int fs_source_loss(fs_source *s, fs_model *student, const fs_loss_req *req, fs_loss_sum *out,
                   fs_diag *d)
{
    return s->ops->loss(s->self, student, req, out, d);
}

int fs_source_moments(fs_source *s, fs_model *student, const int *nodes, int n_nodes, double *sum,
                      double *sumsq, int64_t *count, fs_diag *d)
{
    return s->ops->moments(s->self, student, nodes, n_nodes, sum, sumsq, count, d);
}

int fs_source_histogram(fs_source *s, fs_model *student, const int *nodes, int n_nodes,
                        const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d)
{
    return s->ops->histogram(s->self, student, nodes, n_nodes, lo, hi, bins, counts, d);
}

int fs_source_evaluate(fs_source *s, fs_model *student, fs_eval_sum *out, fs_diag *d)
{
    return s->ops->evaluate(s->self, student, out, d);
}

int fs_source_local_update(fs_source *s, fs_model *student, const fs_update_req *req,
                           fs_update_sum *out, fs_diag *d)
{
    if (!s->ops->local_update)
        return fs_diag_set(d, FS_EINVAL, "this data source cannot run local updates (FedAvg)");
    return s->ops->local_update(s->self, student, req, out, d);
}

int64_t fs_source_count(fs_source *s)
{
    return s->ops->count(s->self);
}

void fs_source_free(fs_source *s)
{
    if (!s)
        return;
    if (s->ops->free)
        s->ops->free(s->self);
    free(s);
}
