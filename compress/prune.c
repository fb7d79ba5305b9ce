/*
 * prune.c — channel pruning (network slimming, ALGORITHMS.md c.1-c.4): per-channel scores,
 * channel groups across residual adds, a global greedy removal down to a FLOPs / params / latency
 * target, physical slicing of the teacher's tensors, and compensation of the removed channels'
 * constant outputs; plus sparsity training on BN scales. Everything but fs_prune_sparsify is
 * data-free. It does not fine-tune: the pipeline re-estimates BN statistics and recovers after.
 *
 * The plan works on "channel spaces": each BN output of the teacher belongs to exactly one space;
 * a space is either one interior layer (conv1 of a BasicBlock, conv1/conv2 of a Bottleneck) or a
 * residual stream (all tensors joined by adds share one index set). Every node's output lives in
 * the space of its BN (convs: the BN that follows them; ReLU/pool/add: their input's), or in no
 * space (model input, linear outputs) when it is never pruned.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_compress.h"

void fs_prune_defaults(fs_prune_config *c)
{
    memset(c, 0, sizeof *c);
    c->criterion = FS_PRUNE_BN_GAMMA;
    c->min_fraction = 0.1f;
    c->compensate = 1;
    c->threshold = 0.0f;
    c->latency_batch = 64;
    c->latency_reps = 5;
}

typedef struct {
    int n;              /* original width */
    int keep;           /* channels kept by the current plan */
    int min;            /* fewest channels allowed */
    uint8_t *mask;      /* [n] 1 = kept */
    double *score;      /* [n] */
    int members;        /* BNs in the space */
    char name[64];
} space;

typedef struct {
    const fs_model *t;
    int n_spaces;
    space *sp;
    int *node_space;    /* [t->n_nodes]: space index or -1 */
    int stream_space[FS_MAX_STAGES + 1];    /* 0: the stem's output, s + 1: stage s */
} plan;

typedef struct {
    int space, ch;
    double score;
} candidate;

static void plan_free(plan *p)
{
    for (int i = 0; i < p->n_spaces; i++) {
        free(p->sp[i].mask);
        free(p->sp[i].score);
    }
    free(p->sp);
    free(p->node_space);
    memset(p, 0, sizeof *p);
}

static int opts_zero(const fs_layer_opts *o)
{
    return o->rank == 0 && o->nm_n == 0 && o->nm_m == 0 && o->qbits == 0;
}

/* Pruning slices dense tensors: a factorized, sparse or quantized layer (or an adaptor) would need
 * its own rules, so such teachers are refused with the layer named. */
static int check_teacher(const fs_model *t, fs_diag *d)
{
    const fs_arch *a = &t->arch;
    if (a->type != FS_ARCH_RESNET)
        return fs_diag_set(d, FS_EINVAL, "channel pruning needs a ResNet (the model is an MLP)");
    if (!opts_zero(&a->stem_opts) || !opts_zero(&a->fc_opts))
        return fs_diag_set(d, FS_EINVAL, "channel pruning needs dense layers: %s is factorized, "
                           "sparse or quantized", opts_zero(&a->stem_opts) ? "fc" : "conv1");
    for (int s = 0; s < a->n_stages; s++)
        for (int b = 0; b < a->stages[s].n_blocks; b++) {
            const fs_block_arch *bl = &a->stages[s].blocks[b];
            for (int k = 0; k < 3; k++)
                if (!opts_zero(&bl->conv[k]))
                    return fs_diag_set(d, FS_EINVAL, "channel pruning needs dense layers: "
                                       "layer%d.%d.conv%d is factorized, sparse or quantized",
                                       s + 1, b, k + 1);
            if (!opts_zero(&bl->ds))
                return fs_diag_set(d, FS_EINVAL, "channel pruning needs dense layers: "
                                   "layer%d.%d.downsample.0 is factorized, sparse or quantized",
                                   s + 1, b);
        }
    for (int i = 0; i < t->n_nodes; i++) {
        if (strstr(t->nodes[i].name, ".adaptor_"))
            return fs_diag_set(d, FS_EINVAL, "channel pruning: the model has adaptors ('%s')",
                               t->nodes[i].name);
        if (t->nodes[i].op == FS_NODE_CONV && t->nodes[i].conv.groups != 1)
            return fs_diag_set(d, FS_EINVAL, "channel pruning: grouped conv '%s'",
                               t->nodes[i].name);
    }
    return 0;
}

static int new_space(plan *p, int n, const char *name)
{
    space *q = realloc(p->sp, (size_t)(p->n_spaces + 1) * sizeof *q);
    if (!q)
        return -1;
    p->sp = q;
    space *s = &p->sp[p->n_spaces];
    memset(s, 0, sizeof *s);
    s->n = s->keep = n;
    s->mask = malloc((size_t)n);
    s->score = calloc((size_t)n, sizeof(double));
    snprintf(s->name, sizeof s->name, "%s", name);
    p->n_spaces++;
    if (!s->mask || !s->score)
        return -1;
    memset(s->mask, 1, (size_t)n);
    return p->n_spaces - 1;
}

/* Which residual stream a BN writes to (0 = stem, s + 1 = stage s), or -1 for an interior BN. */
static int bn_stream(const fs_arch *a, const char *name)
{
    if (!strcmp(name, "bn1"))
        return 0;
    int S, B, used = 0;
    if (sscanf(name, "layer%d.%d.%n", &S, &B, &used) != 2 || used == 0)
        return -1;
    const char *suf = name + used;
    const char *last = a->block == FS_BLOCK_BASIC ? "bn2" : "bn3";
    if (!strcmp(suf, last) || !strcmp(suf, "downsample.1"))
        return S;
    return -1;
}

static int plan_init(plan *p, const fs_model *t, const fs_prune_config *c, fs_diag *d)
{
    memset(p, 0, sizeof *p);
    p->t = t;
    const fs_arch *a = &t->arch;
    p->node_space = malloc((size_t)t->n_nodes * sizeof(int));
    if (!p->node_space)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    for (int i = 0; i < t->n_nodes; i++)
        p->node_space[i] = -1;

    /* streams: a stage whose first block has no downsample (or that has no blocks) continues the
     * previous stream, so both share one index set. A later block with a downsample (unusual)
     * keeps the stage's width, and is treated conservatively as the same set. */
    int root[FS_MAX_STAGES + 1];
    root[0] = 0;
    for (int s = 0; s < a->n_stages; s++) {
        const fs_stage_arch *st = &a->stages[s];
        root[s + 1] = (st->n_blocks == 0 || !st->blocks[0].downsample) ? root[s] : s + 1;
    }
    for (int s = 0; s <= a->n_stages; s++) {
        p->stream_space[s] = -1;
        if (root[s] != s)
            continue;
        char nm[64];
        int k = snprintf(nm, sizeof nm, "stream %s", s == 0 ? "conv1" : "");
        int first = 1;
        for (int u = (s == 0 ? 1 : s); u <= a->n_stages; u++)
            if (root[u] == s) {
                k += snprintf(nm + k, k < (int)sizeof nm ? sizeof nm - (size_t)k : 0, "%slayer%d",
                              (s == 0 || !first) ? "+" : "", u);
                first = 0;
                if (k >= (int)sizeof nm)
                    break;
            }
        int w = s == 0 ? a->stem_width : a->stages[s - 1].width;
        if ((p->stream_space[s] = new_space(p, w, nm)) < 0)
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    for (int s = 0; s <= a->n_stages; s++)
        p->stream_space[s] = p->stream_space[root[s]];

    /* BNs, and the conv before each */
    for (int i = 0; i < t->n_nodes; i++) {
        const fs_node *n = &t->nodes[i];
        if (n->op != FS_NODE_BN)
            continue;
        int st = bn_stream(a, n->name), sp;
        FS_ASSERT(n->in0 >= 0 && t->nodes[n->in0].op == FS_NODE_CONV);
        if (st >= 0) {
            sp = p->stream_space[st];
        } else if ((sp = new_space(p, n->C, t->nodes[n->in0].name)) < 0) {
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
        }
        FS_ASSERT(p->sp[sp].n == n->C);
        p->sp[sp].members++;
        p->node_space[i] = sp;
        p->node_space[n->in0] = sp;
    }
    for (int i = 0; i < t->n_nodes; i++) {
        const fs_node *n = &t->nodes[i];
        switch (n->op) {
        case FS_NODE_RELU:
        case FS_NODE_MAXPOOL:
        case FS_NODE_GAP:
            p->node_space[i] = n->in0 >= 0 ? p->node_space[n->in0] : -1;
            break;
        case FS_NODE_ADD:
            FS_ASSERT(p->node_space[n->in0] == p->node_space[n->in1]);
            p->node_space[i] = p->node_space[n->in0];
            break;
        case FS_NODE_CONV:
            FS_ASSERT(p->node_space[i] >= 0);   /* every conv of a ResNet feeds a BN */
            break;
        default:
            break;
        }
    }

    /* scores: mean over the space's BNs (|gamma|) or over its producer convs (normalised L1) */
    for (int i = 0; i < t->n_nodes; i++) {
        const fs_node *n = &t->nodes[i];
        if (n->op != FS_NODE_BN)
            continue;
        space *s = &p->sp[p->node_space[i]];
        if (c->criterion == FS_PRUNE_L1) {
            const fs_param *w = &t->params[t->nodes[n->in0].p[0]];
            size_t per = w->numel / (size_t)s->n;
            double mean = 0;
            double *l1 = calloc((size_t)s->n, sizeof(double));
            if (!l1)
                return fs_diag_set(d, FS_ENOMEM, "out of memory");
            for (int ch = 0; ch < s->n; ch++) {
                for (size_t k = 0; k < per; k++)
                    l1[ch] += fabs((double)w->data[(size_t)ch * per + k]);
                mean += l1[ch] / s->n;
            }
            for (int ch = 0; ch < s->n; ch++)
                s->score[ch] += (mean > 0 ? l1[ch] / mean : 0.0) / s->members;
            free(l1);
        } else {
            const float *g = t->params[n->p[0]].data;
            for (int ch = 0; ch < s->n; ch++)
                s->score[ch] += fabs((double)g[ch]) / s->members;
        }
    }
    for (int i = 0; i < p->n_spaces; i++) {
        space *s = &p->sp[i];
        int m = (int)ceil((double)c->min_fraction * s->n - 1e-9);
        s->min = m < 1 ? 1 : m > s->n ? s->n : m;
    }
    if (c->keep_output) {
        space *s = &p->sp[p->stream_space[a->n_stages]];
        s->min = s->n;
    }
    return 0;
}

static int in_channels(const plan *p, int node)
{
    const fs_model *t = p->t;
    if (node < 0)
        return t->arch.in_c;
    int s = p->node_space[node];
    return s >= 0 ? p->sp[s].keep : t->nodes[node].C;
}

/* FLOPs and parameters of the planned student, counted exactly as fs_node_flops and
 * fs_model_num_params count the built model (the tests check the equality). */
static void plan_cost(const plan *p, int64_t *flops, int64_t *params)
{
    const fs_model *t = p->t;
    int64_t f = 0, np = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        const fs_node *n = &t->nodes[i];
        int64_t C = in_channels(p, i), HW = (int64_t)n->H * n->W, out = C * HW;
        int64_t Cin = in_channels(p, n->in0);
        switch (n->op) {
        case FS_NODE_CONV:
            f += 2 * out * Cin * n->conv.KH * n->conv.KW + (n->p[1] >= 0 ? out : 0);
            np += C * Cin * n->conv.KH * n->conv.KW + (n->p[1] >= 0 ? C : 0);
            break;
        case FS_NODE_BN:
            f += 2 * out;
            np += 2 * C;
            break;
        case FS_NODE_GAP: {
            const fs_node *in = &t->nodes[n->in0];
            f += Cin * in->H * in->W;
            break;
        }
        case FS_NODE_MAXPOOL:
            f += out * n->pool.K * n->pool.K;
            break;
        case FS_NODE_LINEAR: {
            int64_t IN = n->in0 < 0 ? n->in_features
                                    : Cin * t->nodes[n->in0].H * t->nodes[n->in0].W;
            f += 2 * IN * n->out_features + n->out_features;
            np += IN * n->out_features + (n->p[1] >= 0 ? n->out_features : 0);
            break;
        }
        default:
            f += out;
            break;
        }
    }
    *flops = f;
    *params = np;
}

static int64_t cost_of(const plan *p, fs_cost_kind kind)
{
    int64_t f, np;
    plan_cost(p, &f, &np);
    return kind == FS_COST_PARAMS ? np : f;
}

static void plan_reset(plan *p)
{
    for (int i = 0; i < p->n_spaces; i++) {
        p->sp[i].keep = p->sp[i].n;
        memset(p->sp[i].mask, 1, (size_t)p->sp[i].n);
    }
}

static int cmp_candidate(const void *x, const void *y)
{
    const candidate *a = x, *b = y;
    if (a->score != b->score)
        return a->score < b->score ? -1 : 1;
    if (a->space != b->space)
        return a->space - b->space;
    return a->ch - b->ch;
}

/* Global greedy removal (kind FLOPS or PARAMS, fraction f of the teacher), or threshold mode when
 * f == 0. */
static int plan_remove(plan *p, fs_cost_kind kind, double f, float threshold,
                       const fs_prune_config *c, fs_diag *d)
{
    plan_reset(p);
    int64_t total = cost_of(p, kind);
    size_t nc = 0;
    for (int i = 0; i < p->n_spaces; i++)
        nc += (size_t)p->sp[i].n;
    candidate *cand = malloc((nc ? nc : 1) * sizeof *cand);
    if (!cand)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    nc = 0;
    for (int i = 0; i < p->n_spaces; i++)
        for (int ch = 0; ch < p->sp[i].n; ch++)
            cand[nc++] = (candidate){.space = i, .ch = ch, .score = p->sp[i].score[ch]};
    qsort(cand, nc, sizeof *cand, cmp_candidate);
    int rc = 0;
    if (f > 0) {
        double goal = f * (double)total;
        for (int i = 0; i < p->n_spaces; i++)
            p->sp[i].keep = p->sp[i].min;
        int64_t floor_cost = cost_of(p, kind);
        plan_reset(p);
        if ((double)floor_cost > goal) {
            rc = fs_diag_set(d, FS_EINVAL, "prune-channels: target %s=%.3f is below what the "
                             "minimum widths allow (%.3f of the teacher with every layer at "
                             "max(1, %.0f%% of its width))", kind == FS_COST_PARAMS ? "params"
                             : "flops", f, (double)floor_cost / (double)total,
                             (double)c->min_fraction * 100.0);
            goto done;
        }
        int64_t cur = total;
        for (size_t k = 0; k < nc && (double)cur > goal; k++) {
            space *s = &p->sp[cand[k].space];
            if (s->keep <= s->min)
                continue;
            s->mask[cand[k].ch] = 0;
            s->keep--;
            cur = cost_of(p, kind);
        }
        FS_ASSERT((double)cur <= goal);
    } else {
        for (size_t k = 0; k < nc && cand[k].score <= threshold; k++) {
            space *s = &p->sp[cand[k].space];
            if (s->keep <= s->min)
                continue;
            s->mask[cand[k].ch] = 0;
            s->keep--;
        }
    }
done:
    free(cand);
    return rc;
}

/* The teacher's architecture with the planned widths. */
static int plan_arch(const plan *p, fs_arch *out, fs_diag *d)
{
    const fs_model *t = p->t;
    *out = t->arch;
    out->stem_width = p->sp[p->stream_space[0]].keep;
    for (int s = 0; s < out->n_stages; s++)
        out->stages[s].width = p->sp[p->stream_space[s + 1]].keep;
    for (int i = 0; i < t->n_nodes; i++) {
        const fs_node *n = &t->nodes[i];
        int S, B, K, used = 0;
        if (n->op != FS_NODE_BN || bn_stream(&t->arch, n->name) >= 0)
            continue;
        if (sscanf(n->name, "layer%d.%d.bn%d%n", &S, &B, &K, &used) != 3 || n->name[used] ||
            S < 1 || S > out->n_stages || B < 0 || B >= out->stages[S - 1].n_blocks || K < 1 ||
            K > 2)
            return fs_diag_set(d, FS_EINVAL, "prune-channels: unexpected batch norm '%s'",
                               n->name);
        out->stages[S - 1].blocks[B].mid[K - 1] = p->sp[p->node_space[i]].keep;
    }
    return fs_arch_validate(out, d);
}

static int *kept_index(const plan *p, const fs_model *t, int node, int *n)
{
    int C = node < 0 ? t->arch.in_c : t->nodes[node].C;
    int s = node < 0 ? -1 : p->node_space[node];
    int *idx = malloc((size_t)C * sizeof(int));
    if (!idx)
        return NULL;
    *n = 0;
    for (int c = 0; c < C; c++)
        if (s < 0 || p->sp[s].mask[c])
            idx[(*n)++] = c;
    return idx;
}

/* E[ReLU(X)] and Var[ReLU(X)] for X ~ N(m, v) (v = 0: a constant). */
static void relu_gauss(double m, double v, double *om, double *ov)
{
    if (!(v > 1e-30)) {
        *om = m > 0 ? m : 0;
        *ov = 0;
        return;
    }
    double s = sqrt(v), a = m / s;
    double Phi = 0.5 * erfc(-a / sqrt(2.0)), phi = exp(-0.5 * a * a) / sqrt(2.0 * M_PI);
    double mean = m * Phi + s * phi;
    double ex2 = (m * m + v) * Phi + m * s * phi;
    *om = mean;
    *ov = ex2 - mean * mean > 0 ? ex2 - mean * mean : 0;
}

/* Copies the kept slices of every teacher tensor into the student, then (c->compensate) folds the
 * removed channels' outputs into what follows them (ALGORITHMS.md c.4).
 *
 * A removed channel c of a BN output is modelled as N(beta_c, gamma_c^2) (its input follows the
 * running statistics), propagated through ReLU (Gaussian moments), adds (sums) and pooling; a
 * consumer conv loses sum_c mean_c * sum_hw W[o,c,h,w] from output o. Our convs have no bias, so
 * that constant goes into the next BN: BN(x + b) with running mean mu equals BN(x) with mu - b, so
 * running_mean[o] -= b[o]. A linear after GAP gets it in its bias. With gamma_c = 0 the channel is
 * the constant ReLU(beta_c) and the fold is exact wherever the consumer's window does not reach a
 * zero-padded border (1x1 convs, the fc: exact everywhere; 3x3 convs: inexact on the one-pixel
 * border, where the padding contributed 0 instead of the constant). */
static int slice_and_fold(const plan *p, fs_model *st, int compensate, fs_diag *d)
{
    const fs_model *t = p->t;
    int rc = 0;
    size_t *off = malloc((size_t)t->n_nodes * sizeof(size_t));
    size_t total = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        off[i] = total;
        total += (size_t)t->nodes[i].C;
    }
    double *mean = calloc(total ? total : 1, sizeof(double));
    double *var = calloc(total ? total : 1, sizeof(double));
    if (!off || !mean || !var) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < t->n_nodes && !rc; i++) {
        const fs_node *n = &t->nodes[i];
        int j = fs_model_node(st, n->name);
        FS_ASSERT(j >= 0);
        const fs_node *sn = &st->nodes[j];
        int sp = p->node_space[i];
        const uint8_t *mask = sp >= 0 ? p->sp[sp].mask : NULL;
        int in_sp = n->in0 >= 0 ? p->node_space[n->in0] : -1;
        const uint8_t *in_mask = in_sp >= 0 ? p->sp[in_sp].mask : NULL;
        int no = 0, ni = 0;
        int *oi = NULL, *ii = NULL;
        switch (n->op) {
        case FS_NODE_CONV: {
            oi = kept_index(p, t, i, &no);
            ii = kept_index(p, t, n->in0, &ni);
            if (!oi || !ii) {
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
                break;
            }
            FS_ASSERT(no == sn->conv.OC && ni == sn->conv.C);
            const float *w = t->params[n->p[0]].data;
            float *sw = st->params[sn->p[0]].data;
            size_t kk = (size_t)n->conv.KH * n->conv.KW;
            for (int o = 0; o < no; o++)
                for (int c = 0; c < ni; c++)
                    memcpy(sw + ((size_t)o * ni + c) * kk,
                           w + ((size_t)oi[o] * n->conv.C + ii[c]) * kk, kk * sizeof(float));
            if (n->p[1] >= 0)
                for (int o = 0; o < no; o++)
                    st->params[sn->p[1]].data[o] = t->params[n->p[1]].data[oi[o]];
            break;
        }
        case FS_NODE_BN: {
            oi = kept_index(p, t, i, &no);
            if (!oi) {
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
                break;
            }
            for (int k = 0; k < 4; k++)
                for (int o = 0; o < no; o++)
                    st->params[sn->p[k]].data[o] = t->params[n->p[k]].data[oi[o]];
            const float *g = t->params[n->p[0]].data, *b = t->params[n->p[1]].data;
            for (int c = 0; c < n->C; c++)
                if (mask && !mask[c]) {
                    mean[off[i] + c] = b[c];
                    var[off[i] + c] = (double)g[c] * g[c];
                }
            /* fold the producer conv's lost inputs into this BN's running mean */
            const fs_node *cv = &t->nodes[n->in0];
            int cin_sp = cv->in0 >= 0 ? p->node_space[cv->in0] : -1;
            if (!compensate || cin_sp < 0)
                break;
            const uint8_t *cm = p->sp[cin_sp].mask;
            const float *w = t->params[cv->p[0]].data;
            size_t kk = (size_t)cv->conv.KH * cv->conv.KW;
            float *rm = st->params[sn->p[2]].data;
            for (int o = 0; o < no; o++) {
                double bsum = 0;
                for (int c = 0; c < cv->conv.C; c++) {
                    if (cm[c])
                        continue;
                    const float *wk = w + ((size_t)oi[o] * cv->conv.C + c) * kk;
                    double ws = 0;
                    for (size_t k = 0; k < kk; k++)
                        ws += wk[k];
                    bsum += mean[off[cv->in0] + c] * ws;
                }
                rm[o] = (float)((double)rm[o] - bsum);
            }
            break;
        }
        case FS_NODE_RELU:
            for (int c = 0; c < n->C; c++)
                if (mask && !mask[c])
                    relu_gauss(mean[off[n->in0] + c], var[off[n->in0] + c], &mean[off[i] + c],
                               &var[off[i] + c]);
            break;
        case FS_NODE_ADD:
            for (int c = 0; c < n->C; c++)
                if (mask && !mask[c]) {
                    mean[off[i] + c] = mean[off[n->in0] + c] + mean[off[n->in1] + c];
                    var[off[i] + c] = var[off[n->in0] + c] + var[off[n->in1] + c];
                }
            break;
        case FS_NODE_MAXPOOL:
        case FS_NODE_GAP:
            for (int c = 0; c < n->C; c++)
                if (mask && !mask[c]) {
                    mean[off[i] + c] = mean[off[n->in0] + c];
                    var[off[i] + c] = var[off[n->in0] + c];
                }
            break;
        case FS_NODE_LINEAR: {
            FS_ASSERT(n->in0 >= 0);
            const fs_node *in = &t->nodes[n->in0];
            size_t hw = (size_t)in->H * in->W;
            ii = kept_index(p, t, n->in0, &ni);
            if (!ii) {
                rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
                break;
            }
            FS_ASSERT((size_t)sn->in_features == (size_t)ni * hw);
            const float *w = t->params[n->p[0]].data;
            float *sw = st->params[sn->p[0]].data;
            size_t IN = (size_t)n->in_features;
            for (int o = 0; o < n->out_features; o++)
                for (int c = 0; c < ni; c++)
                    memcpy(sw + (size_t)o * sn->in_features + (size_t)c * hw,
                           w + (size_t)o * IN + (size_t)ii[c] * hw, hw * sizeof(float));
            if (n->p[1] >= 0) {
                float *sb = st->params[sn->p[1]].data;
                memcpy(sb, t->params[n->p[1]].data, (size_t)n->out_features * sizeof(float));
                if (compensate && in_mask)
                    for (int o = 0; o < n->out_features; o++) {
                        double add = 0;
                        for (int c = 0; c < in->C; c++)
                            if (!in_mask[c])
                                for (size_t k = 0; k < hw; k++)
                                    add += mean[off[n->in0] + c] * w[(size_t)o * IN + c * hw + k];
                        sb[o] = (float)((double)sb[o] + add);
                    }
            }
            break;
        }
        default:
            break;
        }
        free(oi);
        free(ii);
    }
done:
    free(off);
    free(mean);
    free(var);
    return rc;
}

static int build_student(const plan *p, fs_model **out, int compensate, fs_diag *d)
{
    fs_arch a;
    int rc = plan_arch(p, &a, d);
    if (rc)
        return rc;
    fs_model *st = NULL;
    if ((rc = fs_model_build(&st, &a, NULL, 0, d)) != 0)
        return rc;
    if ((rc = slice_and_fold(p, st, compensate, d)) != 0) {
        fs_model_free(st);
        return rc;
    }
    *out = st;
    return 0;
}

/* fs_fit_latency's builder: a plan for a FLOPs goal, then the sliced student */
typedef struct {
    plan *p;
    const fs_prune_config *c;
} fit_ctx;

static int fit_build(void *ud, double goal, fs_model **out, fs_diag *d)
{
    fit_ctx *f = ud;
    int rc = plan_remove(f->p, FS_COST_FLOPS, goal, 0, f->c, d);
    return rc ? rc : build_student(f->p, out, f->c->compensate, d);
}

int fs_prune_channels(fs_model **out, const fs_model *teacher, const fs_prune_config *c,
                      fs_cost_kind kind, double target, fs_layer_change **changes, int *n_changes,
                      fs_diag *d)
{
    *out = NULL;
    if (changes)
        *changes = NULL;
    if (n_changes)
        *n_changes = 0;
    if (kind != FS_COST_FLOPS && kind != FS_COST_PARAMS && kind != FS_COST_LATENCY)
        return fs_diag_set(d, FS_EINVAL, "prune-channels: unknown target kind %d", (int)kind);
    if (!(target >= 0 && target <= 1))
        return fs_diag_set(d, FS_EINVAL, "prune-channels: target %g must be in (0, 1] (or 0 for "
                           "threshold mode)", target);
    if (!(c->min_fraction >= 0 && c->min_fraction <= 1))
        return fs_diag_set(d, FS_EINVAL, "prune-channels: min_fraction %g must be in [0, 1]",
                           (double)c->min_fraction);
    if (c->criterion != FS_PRUNE_BN_GAMMA && c->criterion != FS_PRUNE_L1)
        return fs_diag_set(d, FS_EINVAL, "prune-channels: unknown criterion %d",
                           (int)c->criterion);
    int rc = check_teacher(teacher, d);
    if (rc)
        return rc;
    plan p;
    fs_model *st = NULL;
    if ((rc = plan_init(&p, teacher, c, d)) != 0)
        goto done;
    if (kind != FS_COST_LATENCY || target == 0) {
        if ((rc = plan_remove(&p, kind == FS_COST_PARAMS ? FS_COST_PARAMS : FS_COST_FLOPS, target,
                              c->threshold, c, d)) != 0 ||
            (rc = build_student(&p, &st, c->compensate, d)) != 0)
            goto done;
    } else {
        /* latency: plan by FLOPs, measure, tighten the FLOPs goal by the miss */
        fit_ctx fc = {&p, c};
        fs_latency_fit fit = {"prune-channels", fit_build, &fc, c->latency, c->latency_ud,
                              c->latency_batch, c->latency_reps};
        if ((rc = fs_fit_latency(&st, teacher, target, &fit, d)) != 0)
            goto done;
    }
    if (changes) {
        fs_layer_change *ch = calloc((size_t)p.n_spaces, sizeof *ch);
        if (!ch) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < p.n_spaces; i++) {
            snprintf(ch[i].name, sizeof ch[i].name, "%s", p.sp[i].name);
            ch[i].before = p.sp[i].n;
            ch[i].after = p.sp[i].keep;
        }
        *changes = ch;
        if (n_changes)
            *n_changes = p.n_spaces;
    }
    *out = st;
    st = NULL;
done:
    fs_model_free(st);
    plan_free(&p);
    return rc;
}

/* ---- sparsity training ---------------------------------------------------------------------- */

static void sparsity_before(void *ud, fs_model *m, long it, float lr)
{
    (void)it;
    (void)lr;
    const fs_sparsity_config *c = ud;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (p->kind != FS_PARAM_BN_WEIGHT || !p->trainable || !p->grad)
            continue;
        for (size_t k = 0; k < p->numel; k++) {
            float g = p->data[k], s = (float)((g > 0) - (g < 0));
            if (c->kind == FS_SPARSITY_L1) {
                p->grad[k] += c->lambda * s;
            } else {
                float q = c->a + fabsf(g);
                p->grad[k] += c->lambda * c->a * (c->a + 1.0f) * s / (q * q);
            }
        }
    }
}

static void sparsity_prox(void *ud, fs_model *m, long it, float lr)
{
    (void)it;
    const fs_sparsity_config *c = ud;
    float t = lr * c->lambda;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (p->kind != FS_PARAM_BN_WEIGHT || !p->trainable)
            continue;
        for (size_t k = 0; k < p->numel; k++) {
            float g = p->data[k], a = fabsf(g) - t;
            p->data[k] = a > 0 ? (g > 0 ? a : -a) : 0.0f;
        }
    }
}

int fs_prune_sparsify(fs_source *src, fs_model *m, const fs_sparsity_config *sc,
                      const fs_recover_config *rc, fs_progress_fn progress, void *ud, fs_diag *d)
{
    if (sc->kind != FS_SPARSITY_L1 && sc->kind != FS_SPARSITY_TL1 &&
        sc->kind != FS_SPARSITY_PROX_L1)
        return fs_diag_set(d, FS_EINVAL, "sparsity: unknown penalty %d", (int)sc->kind);
    if (!(sc->lambda >= 0 && isfinite(sc->lambda)) ||
        (sc->kind == FS_SPARSITY_TL1 && !(sc->a > 0 && isfinite(sc->a))))
        return fs_diag_set(d, FS_EINVAL, "sparsity: lambda %g must be >= 0 and a %g > 0",
                           (double)sc->lambda, (double)sc->a);
    fs_recover_config c = *rc;
    c.local_steps = 0;      /* FedSGD: the penalty acts on the averaged gradient / update */
    if (sc->kind == FS_SPARSITY_PROX_L1) {
        c.after_step = sparsity_prox;
        c.after_step_ud = (void *)sc;
    } else {
        c.before_step = sparsity_before;
        c.before_step_ud = (void *)sc;
    }
    return fs_recover(src, m, &c, "sparsity", progress, ud, NULL, d);
}
