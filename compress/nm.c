/*
 * nm.c — N:M sparsity (ALGORITHMS.md d.1): magnitude masks in groups of M consecutive weights
 * along the reduction dimension (PyTorch flatten order C,KH,KW; IN for linear), masked
 * fine-tuning with SR-STE through fs_recover's hooks, and the pipeline's post-training steps
 * (N:M, then int8) applied to whatever student the pipeline made. Data-free except the
 * fine-tuning, which is an ordinary recovery on the source. No sparse kernels: the gain is the
 * file size (the forward pass runs dense, with exact zeros).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_pipeline.h"

static fs_nm_config nm_defaults(const fs_nm_config *c) {
    fs_nm_config r = {0};
    if (c)
        r = *c;
    if (r.n <= 0 || r.m <= 0) {
        r.n = 2;
        r.m = 4;
    }
    if (r.decay == 0)
        r.decay = 2e-4f;
    return r;
}

void fs_nm_mask_row(uint8_t *mask, const float *w, size_t K, int n, int m) {
    for (size_t g = 0; g + (size_t)m <= K; g += (size_t)m) {
        for (int j = 0; j < m; j++) {
            float aj = fabsf(w[g + (size_t)j]);
            int rank = 0; /* weights of the group ranked before j */
            for (int k = 0; k < m; k++) {
                float ak = fabsf(w[g + (size_t)k]);
                rank += ak > aj || (ak == aj && k < j);
            }
            mask[g + (size_t)j] = rank < n;
        }
    }
}

/* the layer options a plain node belongs to (factorized "x.0"/"x.1" -> "x") */
static fs_layer_opts *opts_of(fs_arch *a, const char *node) {
    fs_layer_opts *o = fs_arch_layer_opts(a, node);
    if (o)
        return o;
    char nm[96];
    snprintf(nm, sizeof nm, "%s", node);
    char *dot = strrchr(nm, '.');
    if (!dot)
        return NULL;
    *dot = 0;
    return fs_arch_layer_opts(a, nm);
}

static size_t reduction(const fs_model *m, const fs_node *n) {
    const fs_param *w = &m->params[n->p[0]];
    return w->numel / (size_t)w->shape[0];
}

static void mask_node(fs_model *m, const fs_node *n, uint8_t *mask) {
    fs_param *w = &m->params[n->p[0]];
    size_t OC = (size_t)w->shape[0], K = w->numel / OC;
    for (size_t o = 0; o < OC; o++) {
        fs_nm_mask_row(mask, w->data + o * K, K, n->opts.nm_n, n->opts.nm_m);
        for (size_t k = 0; k < K; k++)
            if (!mask[k])
                w->data[o * K + k] = 0.0f;
    }
}

int fs_nm_apply(fs_model **out, const fs_model *m, const fs_nm_config *cfg, int *n_layers,
                fs_diag *d) {
    *out = NULL;
    fs_nm_config c = nm_defaults(cfg);
    if (!(c.n >= 1 && c.n < c.m && c.m <= 64))
        return fs_diag_set(d, FS_EINVAL, "nm: %d:%d, expected 1 <= N < M <= 64", c.n, c.m);
    fs_arch a = m->arch;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->n_nodes; i++) {
            const fs_node *n = &m->nodes[i];
            if (n->op != FS_NODE_CONV && n->op != FS_NODE_LINEAR)
                continue;
            if (strstr(n->name, ".adaptor_"))
                return fs_diag_set(d, FS_EINVAL, "nm: the model has adaptors ('%s')", n->name);
            fs_layer_opts *o = opts_of(&a, n->name);
            FS_ASSERT(o != NULL);
            if (pass == 0) {
                if (n->opts.nm_m)
                    return fs_diag_set(d, FS_EINVAL, "nm: layer '%s' is %d:%d sparse already",
                                       n->name, n->opts.nm_n, n->opts.nm_m);
                int last_linear = n->op == FS_NODE_LINEAR && i == m->logits_node;
                int want = o != &a.stem_opts && (!last_linear || c.fc);
                if (a.type == FS_ARCH_RESNET && n->op == FS_NODE_LINEAR)
                    want = c.fc;
                if (want) {
                    o->nm_n = c.n;
                    o->nm_m = c.m;
                }
            } else if (o->nm_m && reduction(m, n) % (size_t)c.m != 0) {
                o->nm_n = o->nm_m = 0; /* K not a whole number of groups: stays dense */
            }
        }
    }
    fs_model *s = NULL;
    int rc = fs_model_build(&s, &a, NULL, 0, d);
    if (rc)
        return rc;
    fs_model_copy_matching(s, m);
    size_t maxk = 1;
    for (int i = 0; i < s->n_nodes; i++)
        if (s->nodes[i].opts.nm_m)
            maxk = reduction(s, &s->nodes[i]) > maxk ? reduction(s, &s->nodes[i]) : maxk;
    uint8_t *mask = malloc(maxk);
    if (!mask) {
        fs_model_free(s);
        return fs_diag_set(d, FS_ENOMEM, "nm: out of memory");
    }
    int count = 0;
    for (int i = 0; i < s->n_nodes; i++)
        if (s->nodes[i].opts.nm_m) {
            mask_node(s, &s->nodes[i], mask);
            count++;
        }
    free(mask);
    if (n_layers)
        *n_layers = count;
    *out = s;
    return 0;
}

int fs_nm_check(const fs_model *m, fs_diag *d) {
    for (int i = 0; i < m->n_nodes; i++) {
        const fs_node *n = &m->nodes[i];
        if (!n->opts.nm_m || (n->op != FS_NODE_CONV && n->op != FS_NODE_LINEAR))
            continue;
        const fs_param *w = &m->params[n->p[0]];
        size_t OC = (size_t)w->shape[0], K = w->numel / OC, M = (size_t)n->opts.nm_m;
        for (size_t o = 0; o < OC; o++)
            for (size_t g = 0; g < K / M; g++) {
                int nz = 0;
                for (size_t k = 0; k < M; k++)
                    nz += w->data[o * K + g * M + k] != 0.0f;
                if (nz > n->opts.nm_n)
                    return fs_diag_set(d, FS_EINVAL,
                                       "'%s': row %zu group %zu has %d non-zero "
                                       "weights, more than %d",
                                       w->name, o, g, nz, n->opts.nm_n);
            }
    }
    return 0;
}

/* ---- masked fine-tuning (SR-STE) ---------------------------------------------------------- */

typedef struct {
    int n;      /* N:M layers */
    int *param; /* weight parameter of each */
    int *node;
    float **dense; /* the dense shadow weights */
    uint8_t **mask;
    float decay;
    const fs_recover_hooks *user; /* the caller's checkpoint/resume hooks, or NULL */
} nm_train;

static void train_free(nm_train *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->dense ? t->dense[i] : NULL);
        free(t->mask ? t->mask[i] : NULL);
    }
    free(t->param);
    free(t->node);
    free(t->dense);
    free(t->mask);
}

static void remask(nm_train *t, fs_model *m, int i) {
    const fs_node *n = &m->nodes[t->node[i]];
    fs_param *w = &m->params[t->param[i]];
    size_t OC = (size_t)w->shape[0], K = w->numel / OC;
    for (size_t o = 0; o < OC; o++)
        fs_nm_mask_row(t->mask[i] + o * K, t->dense[i] + o * K, K, n->opts.nm_n, n->opts.nm_m);
    for (size_t k = 0; k < w->numel; k++)
        w->data[k] = t->mask[i][k] ? t->dense[i][k] : 0.0f;
}

/* before the optimizer step: the gradient (taken at W*mask, applied to the dense W: STE) gets the
 * SR-STE decay on pruned weights, and the weights become the dense ones for the step */
static void nm_before(void *ud, fs_model *m, long it, float lr) {
    (void)it;
    (void)lr;
    nm_train *t = ud;
    for (int i = 0; i < t->n; i++) {
        fs_param *w = &m->params[t->param[i]];
        if (w->trainable && w->grad && t->decay > 0)
            for (size_t k = 0; k < w->numel; k++)
                if (!t->mask[i][k])
                    w->grad[k] += t->decay * t->dense[i][k];
        memcpy(w->data, t->dense[i], w->numel * sizeof(float));
    }
}

/* after it: keep the new dense weights, recompute the mask from them, forward with W*mask */
static void nm_after(void *ud, fs_model *m, long it, float lr) {
    (void)it;
    (void)lr;
    nm_train *t = ud;
    for (int i = 0; i < t->n; i++) {
        fs_param *w = &m->params[t->param[i]];
        memcpy(t->dense[i], w->data, w->numel * sizeof(float));
        remask(t, m, i);
    }
}

/* Checkpoints of a masked fine-tuning hold the DENSE weights: after a step the state is the dense
 * weights alone (the mask is recomputed from them), while the model shows W*mask. The caller's
 * hooks see the dense weights in the model during the call. */
static int nm_resume(void *ud, fs_model *m, fs_optimizer *opt, long total, long *start,
                     fs_diag *d) {
    nm_train *t = ud;
    int rc = t->user->resume ? t->user->resume(t->user->ud, m, opt, total, start, d) : 0;
    if (rc == 0 && *start > 0)      /* restored: the model now holds the dense weights */
        for (int i = 0; i < t->n; i++) {
            fs_param *w = &m->params[t->param[i]];
            memcpy(t->dense[i], w->data, w->numel * sizeof(float));
            remask(t, m, i);
        }
    return rc;
}

static int nm_checkpoint(void *ud, fs_model *m, fs_optimizer *opt, long done, long total,
                         double loss, fs_diag *d) {
    nm_train *t = ud;
    if (!t->user->checkpoint)
        return 0;
    for (int i = 0; i < t->n; i++) {
        fs_param *w = &m->params[t->param[i]];
        memcpy(w->data, t->dense[i], w->numel * sizeof(float));
    }
    int rc = t->user->checkpoint(t->user->ud, m, opt, done, total, loss, d);
    for (int i = 0; i < t->n; i++)
        remask(t, m, i);
    return rc;
}

int fs_nm_finetune(fs_source *src, fs_model *m, const fs_nm_config *cfg,
                   const fs_recover_config *rc, fs_progress_fn progress, void *ud,
                   double *final_loss, fs_diag *d) {
    fs_nm_config c = nm_defaults(cfg);
    if (rc->after_step || rc->before_step)
        return fs_diag_set(d, FS_EINVAL, "nm fine-tuning uses the recovery's step hooks itself");
    nm_train t = {0};
    t.user = rc->hooks;
    t.decay = c.decay;
    int n = 0, ret = 0;
    for (int i = 0; i < m->n_nodes; i++)
        n += m->nodes[i].opts.nm_m > 0 && m->nodes[i].p[0] >= 0;
    t.param = calloc((size_t)(n ? n : 1), sizeof(int));
    t.node = calloc((size_t)(n ? n : 1), sizeof(int));
    t.dense = calloc((size_t)(n ? n : 1), sizeof(float *));
    t.mask = calloc((size_t)(n ? n : 1), sizeof(uint8_t *));
    if (!t.param || !t.node || !t.dense || !t.mask)
        goto oom;
    for (int i = 0; i < m->n_nodes; i++) {
        const fs_node *nd = &m->nodes[i];
        if (!(nd->opts.nm_m > 0 && nd->p[0] >= 0))
            continue;
        fs_param *w = &m->params[nd->p[0]];
        t.param[t.n] = nd->p[0];
        t.node[t.n] = i;
        t.dense[t.n] = malloc(w->numel * sizeof(float));
        t.mask[t.n] = malloc(w->numel);
        t.n++;
        if (!t.dense[t.n - 1] || !t.mask[t.n - 1])
            goto oom;
        memcpy(t.dense[t.n - 1], w->data, w->numel * sizeof(float));
        remask(&t, m, t.n - 1);
    }
    fs_recover_config r = *rc;
    r.local_steps = 0;      /* FedSGD: the SR-STE term edits the averaged gradient each step */
    r.before_step = nm_before;
    r.before_step_ud = &t;
    r.after_step = nm_after;
    r.after_step_ud = &t;
    fs_recover_hooks wrapped = {nm_resume, nm_checkpoint, &t};
    r.hooks = t.user ? &wrapped : NULL;
    ret = fs_recover(src, m, &r, "nm fine-tune", progress, ud, final_loss, d);
    /* whatever happened, the model leaves with its pruned weights exactly zero */
    for (int i = 0; i < t.n; i++)
        remask(&t, m, i);
    train_free(&t);
    return ret;
oom:
    train_free(&t);
    return fs_diag_set(d, FS_ENOMEM, "nm: out of memory");
}

/* ---- the pipeline's post-training steps --------------------------------------------------------
 */

static int measure(fs_model *m, const fs_practise_config *pc, double *b1, double *b64, fs_diag *d) {
    fs_latency_fn f = pc->latency;
    int rc = f ? f(pc->latency_ud, b1, m, 1, 3 * pc->latency_reps, d)
               : fs_latency(b1, m, 1, 3 * pc->latency_reps, d);
    if (rc == 0)
        rc = f ? f(pc->latency_ud, b64, m, pc->latency_batch, pc->latency_reps, d)
               : fs_latency(b64, m, pc->latency_batch, pc->latency_reps, d);
    return rc;
}

static fs_objective objective_of(fs_recover_kind k) {
    return k == FS_RECOVER_KD ? FS_OBJ_KD : k == FS_RECOVER_CE ? FS_OBJ_CE : FS_OBJ_MIMIC;
}

int fs_pipeline_posttrain(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                          fs_progress_fn progress, void *ud, fs_pipeline_output *out, fs_diag *d) {
    int rc;
    if (out->n_results == 0) {
        /* N:M and/or int8 alone: the teacher is the student they start from */
        if ((rc = measure(teacher, &c->practise, &out->latency_b1, &out->latency_b64, d)) != 0)
            return rc;
        out->params = fs_model_num_params(teacher);
        out->flops = fs_model_flops(teacher);
        if ((rc = fs_source_set_student(src, teacher, d)) != 0 ||
            (rc = fs_source_evaluate(src, teacher, &out->on_source, d)) != 0)
            return rc;
        fs_pipeline_result *r = &out->results[0];
        memset(r, 0, sizeof *r);
        r->target = 1.0f;
        if ((rc = fs_model_clone(&r->model, teacher, d)) != 0)
            return rc;
        out->n_results = 1;
    }
    fs_objective obj = objective_of(c->recover);
    float T = c->recovery.temperature > 0 ? c->recovery.temperature : 4.0f;
    for (int i = 0; i < out->n_results; i++) {
        fs_pipeline_result *r = &out->results[i];
        int fresh = c->methods == (c->methods & (FS_METHOD_NM | FS_METHOD_INT8));
        if (c->methods & FS_METHOD_NM) {
            fs_model *s = NULL;
            int nl = 0;
            if ((rc = fs_nm_apply(&s, r->model, &c->nm, &nl, d)) != 0)
                return rc;
            fs_model_free(r->model);
            r->model = s;
            if (progress)
                progress(ud, "nm masks", nl, nl, 0, 0);
            if ((rc = fs_source_set_student(src, s, d)) != 0)
                return rc;
            if (fresh && c->recover != FS_RECOVER_CE &&
                (rc = fs_objective_mean(src, s, obj, T, &r->objective_before, d)) != 0)
                return rc;
            /* the masks change every layer's output statistics: re-estimate BN first (exact,
             * one pass per BN layer unless configured), as the structural methods do */
            int rounds = c->bn_rounds;
            if (rounds <= 0)
                for (int k = 0; k < s->n_nodes; k++)
                    rounds += s->nodes[k].op == FS_NODE_BN;
            if (c->recover != FS_RECOVER_NONE && (rc = fs_bn_reestimate(src, s, rounds, d)) != 0)
                return rc;
            if (c->recover != FS_RECOVER_NONE && c->recover != FS_RECOVER_BN) {
                fs_recover_config rcfg = c->recovery;
                rcfg.hooks = c->practise.hooks;     /* resumable, as structural recovery */
                rcfg.after_step = rcfg.before_step = NULL;
                rcfg.objective = obj;
                rcfg.temperature = T;
                fs_model_set_trainable(s, 1);
                if ((rc = fs_nm_finetune(src, s, &c->nm, &rcfg, progress, ud, NULL, d)) != 0)
                    return rc;
                if (rcfg.mode != FS_MODE_EVAL && (rc = fs_bn_reestimate(src, s, rounds, d)) != 0)
                    return rc;
            }
        }
        if (c->methods & FS_METHOD_INT8) {
            fs_model *q = NULL;
            if (progress)
                progress(ud, "int8 calibration", 0, 1, 0, 0);
            if ((rc = fs_quant_int8(&q, src, r->model, &c->quant, d)) != 0)
                return rc;
            fs_model_free(r->model);
            r->model = q;
        }
        if ((rc = fs_source_set_student(src, r->model, d)) != 0)
            return rc;
        if (c->recover != FS_RECOVER_CE &&
            (rc = fs_objective_mean(src, r->model, obj, T, &r->objective_after, d)) != 0)
            return rc;
        r->params = fs_model_num_params(r->model);
        r->flops = fs_model_flops(r->model);
        if ((rc = measure(r->model, &c->practise, &r->latency_b1, &r->latency_b64, d)) != 0 ||
            (rc = fs_source_evaluate(src, r->model, &r->on_source, d)) != 0)
            return rc;
    }
    return 0;
}
