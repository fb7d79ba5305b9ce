/*
 * local.c — fs_local: answers the engine's data requests from a dataset on this machine.
 * Teacher outputs are cached per sample when no augmentation is used (metric passes, BN moments,
 * evaluation), since they are then a pure function of the sample.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_local.h"
#include "fs_optim.h"

struct fs_local {
    const fs_model *teacher;
    fs_model *teacher_rw;       /* the same model: fs_run_forward needs a non-const pointer for BN
                                   updates, which eval mode never makes */
    const fs_dataset *ds;
    int max_batch;
    uint64_t site_tag;
    fs_run *trun, *srun;
    const fs_model *student_graph;  /* the graph srun was made for */
    float *x;
    int32_t *labels, *idx, *pred, *tpred;
    size_t feat_n, logit_n;     /* per-sample teacher feature and logit sizes */
    float *tcache_feat, *tcache_logits;     /* [n, feat_n], [n, logit_n] */
    uint8_t *tcached;
};

int fs_local_create(fs_local **out, const fs_model *teacher, const fs_dataset *ds, int max_batch,
                    uint64_t site_tag, fs_diag *d)
{
    *out = NULL;
    const fs_arch *a = &teacher->arch;
    if (ds->c != a->in_c || ds->h != a->in_h || ds->w != a->in_w)
        return fs_diag_set(d, FS_EINVAL, "%s: images are %dx%dx%d but the model takes %dx%dx%d",
                           ds->source, ds->c, ds->h, ds->w, a->in_c, a->in_h, a->in_w);
    if (ds->n <= 0)
        return fs_diag_set(d, FS_EINVAL, "%s: no samples", ds->source);
    if (ds->labels && ds->num_classes > a->num_classes)
        return fs_diag_set(d, FS_EINVAL, "%s: labels go up to %d but the model has %d classes",
                           ds->source, ds->num_classes - 1, a->num_classes);
    fs_local *L = calloc(1, sizeof *L);
    if (!L)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    L->teacher = teacher;
    L->teacher_rw = (fs_model *)teacher;
    L->ds = ds;
    L->max_batch = max_batch > 0 ? max_batch : 64;
    L->site_tag = site_tag;
    size_t per = (size_t)ds->c * ds->h * ds->w;
    L->feat_n = teacher->feat_node >= 0 ? fs_node_numel(teacher, teacher->feat_node) : 0;
    L->logit_n = fs_node_numel(teacher, teacher->logits_node);
    L->x = fs_alloc((size_t)L->max_batch * per * sizeof(float));
    L->labels = calloc((size_t)L->max_batch, sizeof(int32_t));
    L->pred = calloc((size_t)L->max_batch, sizeof(int32_t));
    L->tpred = calloc((size_t)L->max_batch, sizeof(int32_t));
    L->idx = calloc((size_t)ds->n, sizeof(int32_t));
    L->tcache_feat = fs_alloc((size_t)ds->n * (L->feat_n ? L->feat_n : 1) * sizeof(float));
    L->tcache_logits = fs_alloc((size_t)ds->n * L->logit_n * sizeof(float));
    L->tcached = calloc((size_t)ds->n, 1);
    int rc = FS_ENOMEM;
    if (!L->x || !L->labels || !L->pred || !L->tpred || !L->idx || !L->tcache_feat ||
        !L->tcache_logits || !L->tcached) {
        fs_diag_set(d, rc, "out of memory for %d samples", ds->n);
        goto fail;
    }
    if ((rc = fs_run_create(&L->trun, teacher, L->max_batch, d)) != 0)
        goto fail;
    *out = L;
    return 0;
fail:
    fs_local_free(L);
    return rc;
}

void fs_local_free(fs_local *L)
{
    if (!L)
        return;
    fs_run_free(L->trun);
    fs_run_free(L->srun);
    fs_free(L->x);
    free(L->labels);
    free(L->pred);
    free(L->tpred);
    free(L->idx);
    fs_free(L->tcache_feat);
    fs_free(L->tcache_logits);
    free(L->tcached);
    free(L);
}

int64_t fs_local_count(const fs_local *L)
{
    return L->ds->n;
}

int fs_local_set_student(fs_local *L, const fs_model *student, fs_diag *d)
{
    const fs_arch *a = &student->arch, *t = &L->teacher->arch;
    if (a->in_c != t->in_c || a->in_h != t->in_h || a->in_w != t->in_w ||
        a->num_classes != t->num_classes)
        return fs_diag_set(d, FS_EINVAL, "student and teacher differ in input or classes");
    fs_run_free(L->srun);
    L->srun = NULL;
    L->student_graph = NULL;
    int rc = fs_run_create(&L->srun, student, L->max_batch, d);
    if (rc == 0)
        L->student_graph = student;
    return rc;
}

static int ensure_student(fs_local *L, const fs_model *student, fs_diag *d)
{
    if (L->student_graph == student && L->srun)
        return 0;
    return fs_local_set_student(L, student, d);
}

/* The indices of this step's samples (ascending); returns their count. */
static int pick_samples(fs_local *L, const fs_sample_spec *s, int64_t total_n)
{
    int n = L->ds->n;
    for (int i = 0; i < n; i++)
        L->idx[i] = i;
    if (s->batch <= 0)
        return n;
    if (total_n < n)
        total_n = n;
    int k = (int)llround((double)s->batch * (double)n / (double)total_n);
    if (k > n)
        k = n;
    if (k <= 0)
        return 0;
    fs_rng rng, base;
    fs_rng_seed(&base, s->seed);
    fs_rng_fork(&rng, &base, ((uint64_t)s->step << 16) ^ (L->site_tag * 0x9E37u) ^ 0x5A3);
    /* partial Fisher-Yates: the first k of a seeded shuffle */
    for (int i = 0; i < k; i++) {
        int j = i + (int)fs_rng_below(&rng, (uint64_t)(n - i));
        int32_t t = L->idx[i];
        L->idx[i] = L->idx[j];
        L->idx[j] = t;
    }
    /* ascending order keeps results independent of the shuffle's permutation within the batch */
    for (int i = 1; i < k; i++) {
        int32_t v = L->idx[i];
        int j = i - 1;
        while (j >= 0 && L->idx[j] > v) {
            L->idx[j + 1] = L->idx[j];
            j--;
        }
        L->idx[j + 1] = v;
    }
    return k;
}

/* A gathered copy of cached teacher outputs for a batch (contiguous). */
typedef struct {
    float *feat, *logits;
    size_t cap_feat, cap_logits;
} gather_buf;

static int gather(gather_buf *g, const fs_local *L, const int32_t *idx, int b)
{
    size_t nf = (size_t)b * L->feat_n, nl = (size_t)b * L->logit_n;
    if (nf > g->cap_feat) {
        fs_free(g->feat);
        g->feat = fs_alloc((nf ? nf : 1) * sizeof(float));
        g->cap_feat = g->feat ? nf : 0;
    }
    if (nl > g->cap_logits) {
        fs_free(g->logits);
        g->logits = fs_alloc(nl * sizeof(float));
        g->cap_logits = g->logits ? nl : 0;
    }
    if ((nf && !g->feat) || !g->logits)
        return FS_ENOMEM;
    for (int k = 0; k < b; k++) {
        if (L->feat_n)
            memcpy(g->feat + (size_t)k * L->feat_n, L->tcache_feat + (size_t)idx[k] * L->feat_n,
                   L->feat_n * sizeof(float));
        memcpy(g->logits + (size_t)k * L->logit_n, L->tcache_logits + (size_t)idx[k] * L->logit_n,
               L->logit_n * sizeof(float));
    }
    return 0;
}

static void gather_free(gather_buf *g)
{
    fs_free(g->feat);
    fs_free(g->logits);
}

/* Teacher features and logits for the batch in L->x: computed by a forward pass (and cached when
 * the batch is not augmented), or gathered from the cache when every sample is cached. The
 * pointers stay valid until the next teacher forward or gather. */
static int teacher_batch(fs_local *L, gather_buf *g, const int32_t *idx, int b, int augmented,
                         const float **feat, const float **logits)
{
    int cached = !augmented;
    for (int k = 0; k < b && cached; k++)
        cached = L->tcached[idx[k]];
    if (cached) {
        int rc = gather(g, L, idx, b);
        if (rc)
            return rc;
        *feat = g->feat;
        *logits = g->logits;
        return 0;
    }
    fs_run_forward(L->trun, L->teacher_rw, L->x, b, FS_MODE_EVAL);
    const float *f = L->feat_n ? fs_run_out(L->trun, L->teacher->feat_node) : NULL;
    const float *lg = fs_run_out(L->trun, L->teacher->logits_node);
    for (int k = 0; k < b && !augmented; k++) {
        if (f)
            memcpy(L->tcache_feat + (size_t)idx[k] * L->feat_n, f + (size_t)k * L->feat_n,
                   L->feat_n * sizeof(float));
        memcpy(L->tcache_logits + (size_t)idx[k] * L->logit_n, lg + (size_t)k * L->logit_n,
               L->logit_n * sizeof(float));
        L->tcached[idx[k]] = 1;
    }
    *feat = f;
    *logits = lg;
    return 0;
}

int fs_local_loss(fs_local *L, fs_model *student, const fs_loss_req *req, int64_t total_n,
                  fs_loss_sum *out, fs_diag *d)
{
    memset(out, 0, sizeof *out);
    int rc = ensure_student(L, student, d);
    if (rc)
        return rc;
    if (req->objective == FS_OBJ_CE && !L->ds->labels)
        return fs_diag_set(d, FS_EINVAL, "%s: cross-entropy needs labels; this data is unlabeled",
                           L->ds->source);
    if (req->objective == FS_OBJ_MIMIC && (student->feat_node < 0 || L->feat_n == 0 ||
        fs_node_numel(student, student->feat_node) != L->feat_n))
        return fs_diag_set(d, FS_EINVAL, "feature mimicking needs student and teacher pre-GAP "
                           "features of the same shape");
    int n = pick_samples(L, &req->sample, total_n);
    int augmented = req->sample.pad > 0 || req->sample.hflip;
    fs_augment aug = {.pad = req->sample.pad, .hflip = req->sample.hflip};
    fs_rng rng, base;
    fs_rng_seed(&base, req->sample.seed);
    fs_rng_fork(&rng, &base, ((uint64_t)req->sample.step << 16) ^ (L->site_tag * 0x9E37u) ^ 0xA06);
    gather_buf g = {0};
    int K = student->arch.num_classes;
    /* with batch statistics, the whole step's samples must be one forward pass */
    int chunk = L->max_batch;
    if (req->mode != FS_MODE_EVAL && n > chunk)
        return fs_diag_set(d, FS_EINVAL, "batch-statistics BN needs the step's %d samples in one "
                           "pass (max batch %d)", n, chunk);
    for (int s = 0; s < n; s += chunk) {
        int b = n - s < chunk ? n - s : chunk;
        const int32_t *idx = L->idx + s;
        rc = fs_batch_fill(L->x, L->labels, L->ds, idx, b, student->arch.mean, student->arch.std,
                           augmented ? &aug : NULL, augmented ? &rng : NULL, d);
        if (rc)
            goto done;
        const float *tf = NULL, *tl = NULL;
        if (req->objective != FS_OBJ_CE) {
            if ((rc = teacher_batch(L, &g, idx, b, augmented, &tf, &tl)) != 0) {
                fs_diag_set(d, rc, "out of memory");
                goto done;
            }
        }
        fs_run_forward(L->srun, student, L->x, b, req->mode);
        float *grad = NULL;
        switch (req->objective) {
        case FS_OBJ_MIMIC: {
            if (req->want_grad)
                grad = fs_run_dout(L->srun, student->feat_node);
            out->loss_sum += fs_mse(grad, fs_run_out(L->srun, student->feat_node), tf,
                                    (size_t)b * L->feat_n, 1.0f / (float)L->feat_n) /
                             (double)L->feat_n;
            break;
        }
        case FS_OBJ_KD:
            if (req->want_grad)
                grad = fs_run_dout(L->srun, student->logits_node);
            out->loss_sum += fs_kl_div_t(grad, fs_run_out(L->srun, student->logits_node), tl, b, K,
                                         req->temperature, 1.0f);
            break;
        case FS_OBJ_CE:
            if (req->want_grad)
                grad = fs_run_dout(L->srun, student->logits_node);
            out->loss_sum += fs_softmax_xent(grad, NULL, fs_run_out(L->srun, student->logits_node),
                                             L->labels, b, K, 1.0f);
            break;
        }
        out->count += b;
        if (req->want_grad)
            fs_run_backward(L->srun, student);
    }
done:
    gather_free(&g);
    return rc;
}

int fs_local_moments(fs_local *L, fs_model *student, const int *nodes, int n_nodes, double *sum,
                     double *sumsq, int64_t *count, fs_diag *d)
{
    int rc = ensure_student(L, student, d);
    if (rc)
        return rc;
    size_t off = 0;
    for (int i = 0; i < n_nodes; i++) {
        FS_ASSERT(nodes[i] >= 0 && nodes[i] < student->n_nodes);
        const fs_node *nd = &student->nodes[nodes[i]];
        int C = nd->in0 >= 0 ? student->nodes[nd->in0].C : student->arch.in_c;
        memset(sum + off, 0, (size_t)C * sizeof(double));
        memset(sumsq + off, 0, (size_t)C * sizeof(double));
        count[i] = 0;
        off += (size_t)C;
    }
    int n = L->ds->n;
    for (int s = 0; s < n; s += L->max_batch) {
        int b = n - s < L->max_batch ? n - s : L->max_batch;
        for (int k = 0; k < b; k++)
            L->idx[k] = s + k;
        if ((rc = fs_batch_fill(L->x, NULL, L->ds, L->idx, b, student->arch.mean,
                                student->arch.std, NULL, NULL, d)) != 0)
            return rc;
        fs_run_forward(L->srun, student, L->x, b, FS_MODE_EVAL);
        off = 0;
        for (int i = 0; i < n_nodes; i++) {
            const fs_node *nd = &student->nodes[nodes[i]];
            int C, HW;
            const float *x;
            if (nd->in0 >= 0) {
                const fs_node *src = &student->nodes[nd->in0];
                C = src->C;
                HW = src->H * src->W;
                x = fs_run_out(L->srun, nd->in0);
            } else {
                C = student->arch.in_c;
                HW = student->arch.in_h * student->arch.in_w;
                x = L->x;
            }
            fs_channel_moments(sum + off, sumsq + off, x, b, C, HW);
            count[i] += (int64_t)b * HW;
            off += (size_t)C;
        }
    }
    return 0;
}

int fs_local_histogram(fs_local *L, fs_model *student, const int *nodes, int n_nodes,
                       const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d)
{
    int rc = ensure_student(L, student, d);
    if (rc)
        return rc;
    if (bins <= 0)
        return fs_diag_set(d, FS_EINVAL, "histogram needs at least one bin");
    memset(counts, 0, (size_t)n_nodes * (size_t)bins * sizeof(int64_t));
    int n = L->ds->n;
    for (int s = 0; s < n; s += L->max_batch) {
        int b = n - s < L->max_batch ? n - s : L->max_batch;
        for (int k = 0; k < b; k++)
            L->idx[k] = s + k;
        if ((rc = fs_batch_fill(L->x, NULL, L->ds, L->idx, b, student->arch.mean,
                                student->arch.std, NULL, NULL, d)) != 0)
            return rc;
        fs_run_forward(L->srun, student, L->x, b, FS_MODE_EVAL);
        for (int i = 0; i < n_nodes; i++) {
            const float *y = nodes[i] >= 0 ? fs_run_out(L->srun, nodes[i]) : L->x;
            size_t m = (size_t)b * fs_node_numel(student, nodes[i]);
            int64_t *c = counts + (size_t)i * (size_t)bins;
            float scale = hi[i] > lo[i] ? (float)bins / (hi[i] - lo[i]) : 0.0f;
            for (size_t k = 0; k < m; k++) {
                float v = (y[k] - lo[i]) * scale;
                int bi = v <= 0 ? 0 : v >= (float)(bins - 1) ? bins - 1 : (int)v;
                c[bi]++;
            }
        }
    }
    return 0;
}

int fs_local_evaluate(fs_local *L, fs_model *student, fs_eval_sum *out, fs_diag *d)
{
    memset(out, 0, sizeof *out);
    int rc = ensure_student(L, student, d);
    if (rc)
        return rc;
    gather_buf g = {0};
    int n = L->ds->n, K = student->arch.num_classes;
    for (int s = 0; s < n; s += L->max_batch) {
        int b = n - s < L->max_batch ? n - s : L->max_batch;
        for (int k = 0; k < b; k++)
            L->idx[k] = s + k;
        if ((rc = fs_batch_fill(L->x, L->labels, L->ds, L->idx, b, student->arch.mean,
                                student->arch.std, NULL, NULL, d)) != 0)
            break;
        const float *tf, *tl;
        if ((rc = teacher_batch(L, &g, L->idx, b, 0, &tf, &tl)) != 0) {
            fs_diag_set(d, rc, "out of memory");
            break;
        }
        fs_argmax_rows(L->tpred, tl, b, K);
        fs_run_forward(L->srun, student, L->x, b, FS_MODE_EVAL);
        const float *logits = fs_run_out(L->srun, student->logits_node);
        fs_argmax_rows(L->pred, logits, b, K);
        for (int k = 0; k < b; k++)
            out->agree += L->pred[k] == L->tpred[k];
        if (L->ds->labels) {
            int64_t corr = 0;
            out->loss_sum += fs_softmax_xent(NULL, &corr, logits, L->labels, b, K, 0.0f);
            out->correct += corr;
            out->n_labeled += b;
        }
        out->n += b;
    }
    gather_free(&g);
    return rc;
}

int fs_local_update(fs_local *L, fs_model *student, const fs_update_req *req, int64_t total_n,
                    fs_update_sum *out, fs_diag *d)
{
    memset(out, 0, sizeof *out);
    if (req->steps < 1)
        return fs_diag_set(d, FS_EINVAL, "local update: %d local steps (at least 1)", req->steps);
    if (req->sample.step > INT64_MAX / req->steps)
        return fs_diag_set(d, FS_EINVAL, "local update: round %lld too large",
                           (long long)req->sample.step);
    int rc = ensure_student(L, student, d);
    if (rc)
        return rc;
    fs_optimizer *opt = NULL;
    fs_optim_config oc = {.kind = FS_OPT_SGD, .lr = req->lr, .momentum = req->momentum,
                          .weight_decay = req->weight_decay};
    if ((rc = fs_optimizer_create(&opt, student, &oc, d)) != 0)
        return rc;
    /* the round's starting weights, at each parameter's offset in the gradient block */
    float *w0 = fs_alloc((student->grad_floats ? student->grad_floats : 1) * sizeof(float));
    if (!w0) {
        fs_optimizer_free(opt);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    for (int i = 0; i < student->n_params; i++) {
        const fs_param *p = &student->params[i];
        if (p->grad && p->trainable)
            memcpy(w0 + (p->grad - student->grad_block), p->data, p->numel * sizeof(float));
    }
    int took_part = 1;
    for (int t = 0; t < req->steps; t++) {
        fs_loss_req q = {.objective = req->objective, .temperature = req->temperature,
                         .mode = req->mode, .want_grad = 1, .sample = req->sample};
        q.sample.step = req->sample.step * req->steps + t;
        fs_loss_sum ls;
        fs_model_zero_grad(student);
        if ((rc = fs_local_loss(L, student, &q, total_n, &ls, d)) != 0)
            goto restore;
        if (t == 0) {
            out->loss_sum = ls.loss_sum;
            out->loss_count = ls.count;
        }
        if (ls.count <= 0) {
            /* the share depends only on batch, n and total_n: no step of this round has samples */
            took_part = 0;
            break;
        }
        if (!isfinite(ls.loss_sum)) {
            rc = fs_diag_set(d, FS_EDIVERGED, "the loss is not finite at local step %d (training "
                             "diverged)", t);
            goto restore;
        }
        /* the mean gradient, scaled exactly as fs_recover scales the summed one */
        float s = 1.0f / (float)ls.count;
        for (int i = 0; i < student->n_params; i++) {
            fs_param *p = &student->params[i];
            if (!p->grad || !p->trainable)
                continue;
            for (size_t k = 0; k < p->numel; k++)
                p->grad[k] *= s;
        }
        fs_optimizer_step(opt, student, req->lr);
    }
    float n = took_part ? (float)L->ds->n : 0.0f;
    for (int i = 0; i < student->n_params && rc == 0; i++) {
        fs_param *p = &student->params[i];
        if (!p->grad || !p->trainable)
            continue;
        const float *w = w0 + (p->grad - student->grad_block);
        for (size_t k = 0; k < p->numel; k++) {
            p->grad[k] = n * (p->data[k] - w[k]);
            if (!isfinite(p->grad[k]))
                rc = fs_diag_set(d, FS_EDIVERGED, "'%s' is not finite after the local steps "
                                 "(training diverged)", p->name);
        }
    }
    if (rc == 0)
        out->n = took_part ? L->ds->n : 0;
restore:
    for (int i = 0; i < student->n_params; i++) {
        fs_param *p = &student->params[i];
        if (p->grad && p->trainable)
            memcpy(p->data, w0 + (p->grad - student->grad_block), p->numel * sizeof(float));
    }
    fs_free(w0);
    fs_optimizer_free(opt);
    return rc;
}

/* ---- the local fs_source -------------------------------------------------------------------- */

static int src_set_student(void *self, const fs_model *student, fs_diag *d)
{
    return fs_local_set_student(self, student, d);
}

static int src_loss(void *self, fs_model *student, const fs_loss_req *req, fs_loss_sum *out,
                    fs_diag *d)
{
    fs_local *L = self;
    return fs_local_loss(L, student, req, L->ds->n, out, d);
}

static int src_moments(void *self, fs_model *student, const int *nodes, int n_nodes, double *sum,
                       double *sumsq, int64_t *count, fs_diag *d)
{
    return fs_local_moments(self, student, nodes, n_nodes, sum, sumsq, count, d);
}

static int src_histogram(void *self, fs_model *student, const int *nodes, int n_nodes,
                         const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d)
{
    return fs_local_histogram(self, student, nodes, n_nodes, lo, hi, bins, counts, d);
}

static int src_evaluate(void *self, fs_model *student, fs_eval_sum *out, fs_diag *d)
{
    return fs_local_evaluate(self, student, out, d);
}

static int src_local_update(void *self, fs_model *student, const fs_update_req *req,
                            fs_update_sum *out, fs_diag *d)
{
    fs_local *L = self;
    return fs_local_update(L, student, req, L->ds->n, out, d);
}

static int64_t src_count(void *self)
{
    return fs_local_count(self);
}

static void src_free(void *self)
{
    fs_local_free(self);
}

static const fs_source_ops LOCAL_OPS = {src_set_student, src_loss,  src_moments, src_histogram,
                                        src_evaluate,    src_count, src_free,    src_local_update};

int fs_source_local(fs_source **out, fs_local *L, fs_diag *d)
{
    fs_source *s = calloc(1, sizeof *s);
    if (!s)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    s->ops = &LOCAL_OPS;
    s->self = L;
    *out = s;
    return 0;
}
