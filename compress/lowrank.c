/*
 * lowrank.c — low-rank factorization by truncated SVD (ALGORITHMS.md e.1, channel scheme): a conv
 * W [OC, C, KH, KW] seen as A [OC, C*KH*KW] = U S V^T becomes an r-filter conv sqrt(S_r) V_r^T
 * (same kernel, stride, padding) followed by a 1x1 conv U_r sqrt(S_r); a linear becomes two linears
 * (bias on the second). Ranks come from an energy threshold, or from one global threshold found by
 * bisection to meet a FLOPs / params target (latency: planned by FLOPs, then measured). Data-free.
 * SVDs run in double precision through LAPACKE (dgesdd), so that a full-rank factorization
 * reproduces the layer to float rounding.
 */
#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_compress.h"

void fs_lowrank_defaults(fs_lowrank_config *c)
{
    memset(c, 0, sizeof *c);
    c->all_convs = 0;
    c->stem = 0;
    c->linear = 1;
    c->energy = 0.9f;
    c->latency_batch = 64;
    c->latency_reps = 5;
}

int fs_lowrank_energy_rank(const double *s, int n, double e)
{
    double total = 0;
    for (int i = 0; i < n; i++)
        total += s[i] * s[i];
    if (!(total > 0))
        return 1;
    double cum = 0;
    for (int r = 1; r <= n; r++) {
        cum += s[r - 1] * s[r - 1];
        if (cum >= e * total * (1.0 - 1e-12))
            return r;
    }
    return n;
}

/* One layer and its SVD: A [m, n] = u [m, k] diag(s) vt [k, n], k = min(m, n). */
typedef struct {
    char name[80];
    int node;
    int m, n, k;
    int64_t hw;         /* conv output pixels (1 for a linear) */
    int linear;
    double *s, *u, *vt;
} layer;

static void layer_free(layer *l)
{
    free(l->s);
    free(l->u);
    free(l->vt);
    l->s = l->u = l->vt = NULL;
}

/* The architecture options of a layer, by module name; NULL if the name is not a whole layer. */
static fs_layer_opts *layer_opts(fs_arch *a, const char *name)
{
    int S, B, K, used = 0;
    if (a->type == FS_ARCH_MLP) {
        if (sscanf(name, "fc%d%n", &K, &used) == 1 && !name[used] && K >= 1 && K <= a->n_hidden + 1)
            return &a->mlp_opts[K - 1];
        return NULL;
    }
    if (!strcmp(name, "conv1"))
        return &a->stem_opts;
    if (!strcmp(name, "fc"))
        return &a->fc_opts;
    if (sscanf(name, "layer%d.%d.%n", &S, &B, &used) != 2 || used == 0 || S < 1 ||
        S > a->n_stages || B < 0 || B >= a->stages[S - 1].n_blocks)
        return NULL;
    fs_block_arch *bl = &a->stages[S - 1].blocks[B];
    const char *suf = name + used;
    if (!strcmp(suf, "downsample.0"))
        return bl->downsample ? &bl->ds : NULL;
    int used2 = 0;
    int nconv = a->block == FS_BLOCK_BASIC ? 2 : 3;
    if (sscanf(suf, "conv%d%n", &K, &used2) == 1 && !suf[used2] && K >= 1 && K <= nconv)
        return &bl->conv[K - 1];
    return NULL;
}

static int opts_zero(const fs_layer_opts *o)
{
    return o->rank == 0 && o->nm_n == 0 && o->nm_m == 0 && o->qbits == 0;
}

static int layer_svd(layer *l, const fs_model *t, int node, fs_diag *d)
{
    const fs_node *nd = &t->nodes[node];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", nd->name);
    l->node = node;
    if (nd->op == FS_NODE_CONV) {
        l->m = nd->conv.OC;
        l->n = nd->conv.C * nd->conv.KH * nd->conv.KW;
        l->hw = (int64_t)nd->H * nd->W;
    } else {
        l->m = nd->out_features;
        l->n = nd->in_features;
        l->hw = 1;
        l->linear = 1;
    }
    l->k = l->m < l->n ? l->m : l->n;
    size_t mn = (size_t)l->m * l->n;
    double *a = malloc(mn * sizeof(double));
    l->s = malloc((size_t)l->k * sizeof(double));
    l->u = malloc((size_t)l->m * l->k * sizeof(double));
    l->vt = malloc((size_t)l->k * l->n * sizeof(double));
    if (!a || !l->s || !l->u || !l->vt) {
        free(a);
        layer_free(l);
        return fs_diag_set(d, FS_ENOMEM, "lowrank: out of memory for the SVD of '%s' (%dx%d)",
                           l->name, l->m, l->n);
    }
    const float *w = t->params[nd->p[0]].data;
    for (size_t i = 0; i < mn; i++)
        a[i] = w[i];
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', l->m, l->n, a, l->n, l->s, l->u, l->k,
                                     l->vt, l->n);
    free(a);
    if (info != 0) {
        layer_free(l);
        return fs_diag_set(d, FS_EINVAL, "lowrank: SVD of '%s' (%dx%d) failed (LAPACK info %d)",
                           nd->name, l->m, l->n, (int)info);
    }
    return 0;
}

/* Cost of a layer at rank r (0 = dense), as fs_node_flops / fs_model_num_params count it. */
static int64_t layer_cost(const layer *l, int r, int params)
{
    int64_t m = l->m, n = l->n, hw = l->hw;
    if (l->linear) {
        if (r == 0)
            return params ? n * m + m : 2 * n * m + m;
        return params ? (int64_t)r * n + m * r + m : 2 * n * r + r + 2 * (int64_t)r * m + m;
    }
    if (r == 0)
        return params ? m * n : 2 * m * hw * n;
    return params ? (int64_t)r * n + m * r : 2 * (int64_t)r * hw * n + 2 * m * hw * r;
}

static int pays_off(const layer *l, int r)
{
    return (int64_t)r * (l->n + l->m) < (int64_t)l->n * l->m;
}

static void check_teacher_plain(const fs_model *t, int *ok_adaptors)
{
    *ok_adaptors = 1;
    for (int i = 0; i < t->n_nodes; i++)
        if (strstr(t->nodes[i].name, ".adaptor_"))
            *ok_adaptors = 0;
}

/* Builds the student with layers[i] at ranks[i] (0 = left dense). */
static int apply_layers(fs_model **out, const fs_model *t, const layer *ls, const int *ranks,
                        int n, fs_diag *d)
{
    *out = NULL;
    fs_arch a = t->arch;
    for (int i = 0; i < n; i++) {
        fs_layer_opts *o = layer_opts(&a, ls[i].name);
        FS_ASSERT(o != NULL);
        o->rank = ranks[i];
    }
    fs_model *st = NULL;
    int rc = fs_model_build(&st, &a, NULL, 0, d);
    if (rc)
        return rc;
    fs_model_copy_matching(st, t);
    char nm[128];
    for (int i = 0; i < n; i++) {
        const layer *l = &ls[i];
        int r = ranks[i];
        if (r == 0)
            continue;
        snprintf(nm, sizeof nm, "%s.0.weight", l->name);
        fs_param *w0 = fs_model_param(st, nm);
        snprintf(nm, sizeof nm, "%s.1.weight", l->name);
        fs_param *w1 = fs_model_param(st, nm);
        FS_ASSERT(w0 && w1 && w0->numel == (size_t)r * l->n && w1->numel == (size_t)l->m * r);
        for (int q = 0; q < r; q++) {
            double sq = sqrt(l->s[q]);
            for (int j = 0; j < l->n; j++)
                w0->data[(size_t)q * l->n + j] = (float)(sq * l->vt[(size_t)q * l->n + j]);
            for (int o = 0; o < l->m; o++)
                w1->data[(size_t)o * r + q] = (float)(l->u[(size_t)o * l->k + q] * sq);
        }
        const fs_node *tn = &t->nodes[l->node];
        if (tn->p[1] >= 0) {
            snprintf(nm, sizeof nm, "%s.1.bias", l->name);
            fs_param *b1 = fs_model_param(st, nm);
            FS_ASSERT(b1 && b1->numel == (size_t)l->m);
            memcpy(b1->data, t->params[tn->p[1]].data, (size_t)l->m * sizeof(float));
        }
    }
    *out = st;
    return 0;
}

int fs_lowrank_apply(fs_model **out, const fs_model *teacher, const char *const *names,
                     const int *ranks, int n, fs_diag *d)
{
    *out = NULL;
    int ok;
    check_teacher_plain(teacher, &ok);
    if (!ok)
        return fs_diag_set(d, FS_EINVAL, "lowrank: the model has adaptors");
    if (n < 0)
        return fs_diag_set(d, FS_EINVAL, "lowrank: %d layers", n);
    layer *ls = calloc((size_t)(n ? n : 1), sizeof *ls);
    if (!ls)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    fs_arch a = teacher->arch;
    int rc = 0, done = 0;
    for (int i = 0; i < n && !rc; i++) {
        fs_layer_opts *o = layer_opts(&a, names[i]);
        int node = fs_model_node(teacher, names[i]);
        if (!o || node < 0)
            rc = fs_diag_set(d, FS_EINVAL, "lowrank: '%s' is not a conv or linear layer of the "
                             "model", names[i]);
        else if (!opts_zero(o))
            rc = fs_diag_set(d, FS_EINVAL, "lowrank: '%s' is already factorized, sparse or "
                             "quantized", names[i]);
        else if ((rc = layer_svd(&ls[i], teacher, node, d)) == 0) {
            done = i + 1;
            o->rank = 1;    /* marks it, so a repeated name is refused */
            if (ranks[i] < 1 || ranks[i] > ls[i].k)
                rc = fs_diag_set(d, FS_EINVAL, "lowrank: rank %d for '%s' must be in 1..%d",
                                 ranks[i], names[i], ls[i].k);
        }
    }
    if (!rc)
        rc = apply_layers(out, teacher, ls, ranks, n, d);
    for (int i = 0; i < done; i++)
        layer_free(&ls[i]);
    free(ls);
    return rc;
}

/* Ranks for one global energy threshold e (0 where factorizing would not pay off); returns the
 * model's cost. */
static int64_t ranks_at(const layer *ls, int n, double e, int params, int64_t total, int *ranks)
{
    int64_t cost = total;
    for (int i = 0; i < n; i++) {
        int r = fs_lowrank_energy_rank(ls[i].s, ls[i].k, e);
        ranks[i] = pays_off(&ls[i], r) ? r : 0;
        if (ranks[i])
            cost += layer_cost(&ls[i], r, params) - layer_cost(&ls[i], 0, params);
    }
    return cost;
}

/* The global threshold meeting a FLOPs/params goal: cost(e) does not decrease with e, so bisect
 * for the largest e with cost(e) <= goal. */
static int plan_goal(const layer *ls, int n, int params, int64_t total, double f, int *ranks,
                     fs_diag *d)
{
    double goal = f * (double)total;
    int64_t lo_cost = ranks_at(ls, n, 0.0, params, total, ranks);
    if ((double)lo_cost > goal)
        return fs_diag_set(d, FS_EINVAL, "lowrank: target %s=%.3f cannot be met: rank 1 in every "
                           "eligible layer gives %.3f of the teacher", params ? "params" : "flops",
                           f, (double)lo_cost / (double)total);
    if ((double)ranks_at(ls, n, 1.0, params, total, ranks) <= goal)
        return 0;
    double lo = 0, hi = 1;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        if ((double)ranks_at(ls, n, mid, params, total, ranks) <= goal)
            lo = mid;
        else
            hi = mid;
    }
    ranks_at(ls, n, lo, params, total, ranks);
    return 0;
}

/* fs_fit_latency's builder: ranks for a FLOPs goal, then the factorized student */
typedef struct {
    const fs_model *teacher;
    const layer *ls;
    int n;
    int *ranks;
    int64_t total;
} fit_ctx;

static int fit_build(void *ud, double goal, fs_model **out, fs_diag *d)
{
    fit_ctx *f = ud;
    int rc = plan_goal(f->ls, f->n, 0, f->total, goal, f->ranks, d);
    return rc ? rc : apply_layers(out, f->teacher, f->ls, f->ranks, f->n, d);
}

int fs_lowrank(fs_model **out, const fs_model *teacher, const fs_lowrank_config *c,
               fs_cost_kind kind, double target, fs_layer_change **changes, int *n_changes,
               fs_diag *d)
{
    *out = NULL;
    if (changes)
        *changes = NULL;
    if (n_changes)
        *n_changes = 0;
    if (kind != FS_COST_FLOPS && kind != FS_COST_PARAMS && kind != FS_COST_LATENCY)
        return fs_diag_set(d, FS_EINVAL, "lowrank: unknown target kind %d", (int)kind);
    if (!(target >= 0 && target <= 1))
        return fs_diag_set(d, FS_EINVAL, "lowrank: target %g must be in (0, 1] (or 0 for the "
                           "energy rule)", target);
    if (target == 0 && !(c->energy > 0 && c->energy <= 1))
        return fs_diag_set(d, FS_EINVAL, "lowrank: energy %g must be in (0, 1]",
                           (double)c->energy);
    int ok;
    check_teacher_plain(teacher, &ok);
    if (!ok)
        return fs_diag_set(d, FS_EINVAL, "lowrank: the model has adaptors");
    fs_arch a = teacher->arch;
    size_t nn = teacher->n_nodes > 0 ? (size_t)teacher->n_nodes : 1;
    layer *ls = calloc(nn, sizeof *ls);
    int *ranks = calloc(nn, sizeof(int));
    int n = 0, rc = 0;
    fs_model *st = NULL;
    if (!ls || !ranks) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < teacher->n_nodes; i++) {
        const fs_node *nd = &teacher->nodes[i];
        fs_layer_opts *o = layer_opts(&a, nd->name);
        if (!o || !opts_zero(o))
            continue;
        if (nd->op == FS_NODE_LINEAR) {
            if (!c->linear)
                continue;
        } else if (nd->op == FS_NODE_CONV) {
            if (!strcmp(nd->name, "conv1") && !c->stem)
                continue;
            if (!c->all_convs && strcmp(nd->name, "conv1") &&
                !(nd->conv.KH == 3 && nd->conv.KW == 3 && nd->conv.stride == 1))
                continue;
            if (nd->conv.groups != 1)
                continue;
        } else {
            continue;
        }
        if ((rc = layer_svd(&ls[n], teacher, i, d)) != 0)
            goto done;
        n++;
    }
    if (n == 0) {
        rc = fs_diag_set(d, FS_EINVAL, "lowrank: the model has no eligible layer (3x3 stride-1 "
                         "convs%s)", c->linear ? " or linears" : "");
        goto done;
    }
    if (target == 0) {
        for (int i = 0; i < n; i++) {
            int r = fs_lowrank_energy_rank(ls[i].s, ls[i].k, c->energy);
            ranks[i] = pays_off(&ls[i], r) ? r : 0;
        }
        rc = apply_layers(&st, teacher, ls, ranks, n, d);
    } else if (kind != FS_COST_LATENCY) {
        int params = kind == FS_COST_PARAMS;
        int64_t total = params ? fs_model_num_params(teacher) : fs_model_flops(teacher);
        if ((rc = plan_goal(ls, n, params, total, target, ranks, d)) == 0)
            rc = apply_layers(&st, teacher, ls, ranks, n, d);
    } else {
        fit_ctx fc = {teacher, ls, n, ranks, fs_model_flops(teacher)};
        fs_latency_fit fit = {"lowrank", fit_build, &fc, c->latency, c->latency_ud,
                              c->latency_batch, c->latency_reps};
        rc = fs_fit_latency(&st, teacher, target, &fit, d);
    }
    if (rc)
        goto done;
    if (changes) {
        int nf = 0;
        for (int i = 0; i < n; i++)
            nf += ranks[i] > 0;
        fs_layer_change *ch = calloc((size_t)(nf ? nf : 1), sizeof *ch);
        if (!ch) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto done;
        }
        nf = 0;
        for (int i = 0; i < n; i++)
            if (ranks[i] > 0) {
                snprintf(ch[nf].name, sizeof ch[nf].name, "%s", ls[i].name);
                ch[nf].before = ls[i].k;
                ch[nf].after = ranks[i];
                ch[nf].rank = 1;
                nf++;
            }
        *changes = ch;
        if (n_changes)
            *n_changes = nf;
    }
    *out = st;
    st = NULL;
done:
    fs_model_free(st);
    for (int i = 0; i < n; i++)
        layer_free(&ls[i]);
    free(ls);
    free(ranks);
    return rc;
}
