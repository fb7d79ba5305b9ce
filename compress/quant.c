/*
 * quant.c — int8 post-training quantization (ALGORITHMS.md f.1, calibrated as g says): batch
 * norms folded into the convs before them, per-output-channel symmetric int8 weights, per-tensor
 * asymmetric uint8 input activations whose ranges come from summed histograms on a public grid
 * (min-max, percentile or MSE clip). The quantized model is evaluated with fake quantization in
 * the float forward pass (model/run.c); it does not run integer kernels.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_compress.h"

#define BN_EPS 1e-5 /* as model/run.c's batch norm */

/* ---- layer options by module name ------------------------------------------------------------ */

fs_layer_opts *fs_arch_layer_opts(fs_arch *a, const char *layer) {
    char nm[96];
    if (a->type == FS_ARCH_MLP) {
        for (int i = 0; i <= a->n_hidden; i++) {
            snprintf(nm, sizeof nm, "fc%d", i + 1);
            if (!strcmp(nm, layer))
                return &a->mlp_opts[i];
        }
        return NULL;
    }
    if (!strcmp(layer, "conv1"))
        return &a->stem_opts;
    if (!strcmp(layer, "fc"))
        return &a->fc_opts;
    int nconv = a->block == FS_BLOCK_BASIC ? 2 : 3;
    for (int s = 0; s < a->n_stages; s++)
        for (int i = 0; i < a->stages[s].n_blocks; i++) {
            fs_block_arch *b = &a->stages[s].blocks[i];
            for (int k = 0; k < nconv; k++) {
                snprintf(nm, sizeof nm, "layer%d.%d.conv%d", s + 1, i, k + 1);
                if (!strcmp(nm, layer))
                    return &b->conv[k];
            }
            snprintf(nm, sizeof nm, "layer%d.%d.downsample.0", s + 1, i);
            if (b->downsample && !strcmp(nm, layer))
                return &b->ds;
        }
    return NULL;
}

/* ---- calibration method names ---------------------------------------------------------------- */

static const char *CALIB_NAMES[] = {"?", "minmax", "percentile", "mse"};

const char *fs_calib_name(fs_calib_method m) { return (unsigned)m <= 3 ? CALIB_NAMES[m] : "?"; }

int fs_calib_parse(fs_calib_method *m, const char *s, fs_diag *d) {
    for (int i = 1; i <= 3; i++)
        if (!strcmp(s, CALIB_NAMES[i])) {
            *m = (fs_calib_method)i;
            return 0;
        }
    return fs_diag_set(d, FS_EINVAL, "calibration '%s' is not one of minmax, percentile, mse", s);
}

static fs_quant_config with_defaults(const fs_quant_config *c) {
    fs_quant_config q = {0};
    if (c)
        q = *c;
    if (!q.method)
        q.method = FS_CALIB_PERCENTILE;
    if (!(q.percentile > 0))
        q.percentile = 99.99f;
    if (q.bins <= 0)
        q.bins = 2048;
    return q;
}

/* ---- BN folding --------------------------------------------------------------------------------
 */

static int has_adaptors(const fs_model *m) {
    for (int i = 0; i < m->n_nodes; i++)
        if (strstr(m->nodes[i].name, ".adaptor_"))
            return 1;
    return 0;
}

/* the module name of the layer a plain node belongs to ("x.0"/"x.1" of a factorized layer -> "x")
 */
static fs_layer_opts *node_layer_opts(fs_arch *a, const char *node) {
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

int fs_quant_fold(fs_model **out, const fs_model *m, const fs_quant_config *cfg, fs_diag *d) {
    *out = NULL;
    fs_quant_config c = with_defaults(cfg);
    if (has_adaptors(m))
        return fs_diag_set(d, FS_EINVAL, "int8: the model has adaptors (train or drop them first)");
    fs_arch a = m->arch;
    for (int i = 0; i < m->n_nodes; i++) {
        const fs_node *n = &m->nodes[i];
        if (n->op != FS_NODE_CONV && n->op != FS_NODE_LINEAR)
            continue;
        if (n->opts.qbits)
            return fs_diag_set(d, FS_EINVAL, "int8: layer '%s' is int8 already", n->name);
        fs_layer_opts *o = node_layer_opts(&a, n->name);
        FS_ASSERT(o != NULL);
        if (n->op == FS_NODE_CONV && (n->in0 >= 0 || !c.keep_stem_float))
            o->qbits = 8;
        if (n->op == FS_NODE_LINEAR && !c.keep_linear_float)
            o->qbits = 8;
    }
    /* a factorized stem: the .1 factor's input is not the model input, but the layer is the stem */
    if (c.keep_stem_float && a.type == FS_ARCH_RESNET)
        a.stem_opts.qbits = 0;
    fs_model *q = NULL;
    int rc = fs_model_build(&q, &a, NULL, 0, d);
    if (rc)
        return rc;
    fs_model_copy_matching(q, m);
    for (int i = 0; i < q->n_nodes; i++) {
        const fs_node *n = &q->nodes[i];
        if (n->op != FS_NODE_CONV || n->q[0] < 0 || n->p[1] < 0)
            continue;
        /* the folded BN: the node of `m` that consumed the same-named conv */
        int oc = fs_model_node(m, n->name), bn = -1;
        for (int k = oc + 1; oc >= 0 && k < m->n_nodes; k++)
            if (m->nodes[k].op == FS_NODE_BN && m->nodes[k].in0 == oc) {
                bn = k;
                break;
            }
        if (bn < 0) {
            fs_model_free(q);
            return fs_diag_set(d, FS_EINVAL, "int8: no batch norm after '%s' to fold", n->name);
        }
        const fs_node *b = &m->nodes[bn];
        const float *g = m->params[b->p[0]].data, *beta = m->params[b->p[1]].data;
        const float *mu = m->params[b->p[2]].data, *var = m->params[b->p[3]].data;
        const fs_node *mo = &m->nodes[oc];
        const float *b0 = mo->p[1] >= 0 ? m->params[mo->p[1]].data : NULL;
        fs_param *w = &q->params[n->p[0]];
        float *bias = q->params[n->p[1]].data;
        size_t OC = (size_t)w->shape[0], K = w->numel / OC;
        for (size_t o = 0; o < OC; o++) {
            double sc = (double)g[o] / sqrt((double)var[o] + BN_EPS);
            for (size_t k = 0; k < K; k++)
                w->data[o * K + k] = (float)((double)w->data[o * K + k] * sc);
            bias[o] = (float)((double)beta[o] + ((b0 ? (double)b0[o] : 0.0) - mu[o]) * sc);
        }
    }
    *out = q;
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------------
 */

void fs_quant_weights(fs_model *m) {
    for (int i = 0; i < m->n_nodes; i++) {
        const fs_node *n = &m->nodes[i];
        if (n->q[0] < 0)
            continue;
        fs_param *w = &m->params[n->p[0]];
        float *scale = m->params[n->q[0]].data;
        size_t OC = (size_t)w->shape[0], K = w->numel / OC;
        for (size_t o = 0; o < OC; o++) {
            float *row = w->data + o * K, mx = 0;
            for (size_t k = 0; k < K; k++)
                mx = fmaxf(mx, fabsf(row[k]));
            float s = mx > 0 ? mx / 127.0f : 1.0f;
            for (size_t k = 0; k < K; k++) {
                float q = rintf(row[k] / s);
                q = q < -127.0f ? -127.0f : q > 127.0f ? 127.0f : q;
                row[k] = q * s + 0.0f; /* -0 -> +0: as the int8 code 0 loads back */
            }
            scale[o] = s;
        }
    }
}

/* ---- activation ranges from histograms ------------------------------------------------------- */

void fs_quant_act_params(float a, float b, float *scale, float *zero_point) {
    float s = (b - a) / 255.0f;
    if (!(s > 0))
        s = 1.0f;
    float z = rintf(-a / s);
    *scale = s;
    *zero_point = z < 0 ? 0 : z > 255 ? 255 : z;
}

/* value below which a fraction `f` of the histogram's mass lies (linear within a bin) */
static double quantile(const int64_t *c, int bins, double lo, double w, double total, double f) {
    double want = f * total, acc = 0;
    for (int i = 0; i < bins; i++) {
        if (c[i] > 0 && acc + (double)c[i] >= want)
            return lo + w * (i + (want - acc) / (double)c[i]);
        acc += (double)c[i];
    }
    return lo + w * bins;
}

/* expected squared error of quantizing the histogram's values to 255 steps over [a, b] */
static double clip_error(const int64_t *c, int bins, double lo, double w, double a, double b) {
    double s = (b - a) / 255.0, e = 0;
    for (int i = 0; i < bins; i++) {
        if (!c[i])
            continue;
        double x = lo + w * (i + 0.5);
        double err = x < a   ? (a - x) * (a - x) + w * w / 12
                     : x > b ? (x - b) * (x - b) + w * w / 12
                             : s * s / 12;
        e += (double)c[i] * err;
    }
    return e;
}

int fs_calib_clip(const int64_t *counts, int bins, float lo, float hi, const fs_quant_config *cfg,
                  float *a, float *b, fs_diag *d) {
    fs_quant_config c = with_defaults(cfg);
    double total = 0, w = ((double)hi - lo) / bins;
    int first = -1, last = -1;
    for (int i = 0; i < bins; i++)
        if (counts[i] > 0) {
            total += (double)counts[i];
            if (first < 0)
                first = i;
            last = i;
        }
    if (first < 0 || !(w >= 0))
        return fs_diag_set(d, FS_EINVAL, "calibration: empty histogram");
    double mn = lo + w * first, mx = lo + w * (last + 1);
    double ra = mn, rb = mx;
    if (c.method == FS_CALIB_PERCENTILE) {
        double p = c.percentile / 100.0;
        ra = quantile(counts, bins, lo, w, total, 1.0 - p);
        rb = quantile(counts, bins, lo, w, total, p);
    } else if (c.method == FS_CALIB_MSE) {
        double best = INFINITY;
        double a0 = fmin(mn, 0), b0 = fmax(mx, 0);
        for (int k = 200; k >= 1; k--) {
            double t = k / 200.0;
            double e = clip_error(counts, bins, lo, w, t * a0, t * b0);
            if (e < best) {
                best = e;
                ra = t * a0;
                rb = t * b0;
            }
        }
    }
    *a = (float)fmin(ra, 0);
    *b = (float)fmax(rb, 0);
    return 0;
}

/* the int8 layers and the distinct producers of their inputs */
typedef struct {
    int n_q, n_prod;
    int *qnode;    /* [n_q] */
    int *prod;     /* [n_prod] producer node of each distinct input (-1: the model input) */
    int *consumer; /* [n_prod] one int8 layer reading it */
} calib_plan;

static void plan_free(calib_plan *p) {
    free(p->qnode);
    free(p->prod);
    free(p->consumer);
}

static int plan_make(calib_plan *p, const fs_model *m) {
    memset(p, 0, sizeof *p);
    size_t n = (size_t)(m->n_nodes ? m->n_nodes : 1);
    p->qnode = malloc(n * sizeof(int));
    p->prod = malloc(n * sizeof(int));
    p->consumer = malloc(n * sizeof(int));
    if (!p->qnode || !p->prod || !p->consumer)
        return FS_ENOMEM;
    for (int i = 0; i < m->n_nodes; i++) {
        if (m->nodes[i].q[1] < 0)
            continue;
        p->qnode[p->n_q++] = i;
        int in = m->nodes[i].in0, seen = 0;
        for (int k = 0; k < p->n_prod; k++)
            seen |= p->prod[k] == in;
        if (!seen) {
            p->prod[p->n_prod] = in;
            p->consumer[p->n_prod++] = i;
        }
    }
    return 0;
}

/* data-free range of the normalised input image [0, 1] */
static void input_range(const fs_model *m, float *a, float *b) {
    float lo = INFINITY, hi = -INFINITY;
    for (int c = 0; c < m->arch.in_c; c++) {
        float s = m->arch.std[c], mu = m->arch.mean[c];
        float v0 = (0.0f - mu) / s, v1 = (1.0f - mu) / s;
        lo = fminf(lo, fminf(v0, v1));
        hi = fmaxf(hi, fmaxf(v0, v1));
    }
    *a = fminf(lo, 0);
    *b = fmaxf(hi, 0);
}

int fs_quant_calibrate(fs_source *src, fs_model *m, const fs_quant_config *cfg, fs_diag *d) {
    fs_quant_config c = with_defaults(cfg);
    calib_plan pl;
    int rc = plan_make(&pl, m);
    int B = c.bins, nh = 0;
    int *hnode = NULL, *hcons = NULL, *hslot = NULL, *pending = NULL;
    float *lo = NULL, *hi = NULL, *ca = NULL, *cb = NULL, *hlo = NULL, *hhi = NULL;
    double *sum = NULL, *sumsq = NULL;
    int64_t *cnt = NULL, *counts = NULL;
    if (rc)
        goto oom;
    for (int i = 0; i < pl.n_q; i++) /* calibrate on the unquantized activations */
        m->params[m->nodes[pl.qnode[i]].q[1]].data[0] = 0.0f;
    if (pl.n_q == 0)
        goto done;
    size_t np = (size_t)pl.n_prod;
    hnode = malloc(np * sizeof(int));
    hcons = malloc(np * sizeof(int));
    hslot = malloc(np * sizeof(int));
    pending = malloc(np * sizeof(int));
    lo = malloc(np * sizeof(float));
    hi = malloc(np * sizeof(float));
    ca = malloc(np * sizeof(float));
    cb = malloc(np * sizeof(float));
    hlo = malloc(np * sizeof(float));
    hhi = malloc(np * sizeof(float));
    cnt = malloc(np * sizeof(int64_t));
    counts = malloc(np * (size_t)B * sizeof(int64_t));
    size_t channels = 0;
    for (int k = 0; k < pl.n_prod; k++)
        channels += pl.prod[k] >= 0 ? (size_t)m->nodes[pl.prod[k]].C : 0;
    sum = malloc((channels + 1) * sizeof(double));
    sumsq = malloc((channels + 1) * sizeof(double));
    if (!hnode || !hcons || !hslot || !pending || !lo || !hi || !ca || !cb || !hlo || !hhi ||
        !cnt || !counts || !sum || !sumsq)
        goto oom;
    if ((rc = fs_source_set_student(src, m, d)) != 0)
        goto done;
    /* the model input: data-free; the others: histogrammed */
    for (int k = 0; k < pl.n_prod; k++) {
        if (pl.prod[k] < 0) {
            input_range(m, &ca[k], &cb[k]);
        } else {
            hslot[nh] = k;
            hnode[nh] = pl.prod[k];
            hcons[nh++] = pl.consumer[k];
        }
    }
    if (nh == 0)
        goto apply;
    /* pass 0: moments of each input -> mean +- 8 sd per channel, with 0 inside an interior bin */
    if ((rc = fs_source_moments(src, m, hcons, nh, sum, sumsq, cnt, d)) != 0)
        goto done;
    size_t off = 0;
    for (int j = 0; j < nh; j++) {
        int C = m->nodes[hnode[j]].C;
        double l = 0, h = 0, n = cnt[j] > 0 ? (double)cnt[j] : 1;
        for (int ch = 0; ch < C; ch++) {
            double mu = sum[off + ch] / n, var = fmax(sumsq[off + ch] / n - mu * mu, 0);
            l = fmin(l, mu - 8 * sqrt(var));
            h = fmax(h, mu + 8 * sqrt(var));
        }
        off += (size_t)C;
        double wdt = h - l > 1e-6 ? h - l : 1.0;
        lo[j] = (float)(l - 0.05 * wdt - 1e-6);
        hi[j] = (float)(h + 0.05 * wdt + 1e-6);
    }
    /* pass 1: histograms on those ranges; the end bins also count values outside, so a range
     * whose end bin is not empty is widened and measured again */
    int n_pend = nh;
    for (int j = 0; j < nh; j++)
        pending[j] = j;
    for (int round = 0; n_pend > 0; round++) {
        for (int t = 0; t < n_pend; t++) {
            hcons[t] = hnode[pending[t]];
            hlo[t] = lo[pending[t]];
            hhi[t] = hi[pending[t]];
        }
        if ((rc = fs_source_histogram(src, m, hcons, n_pend, hlo, hhi, B, counts, d)) != 0)
            goto done;
        int still = 0;
        for (int t = 0; t < n_pend; t++) {
            int j = pending[t];
            const int64_t *h = counts + (size_t)t * (size_t)B;
            int first = -1, last = -1;
            for (int i = 0; i < B; i++)
                if (h[i] > 0) {
                    if (first < 0)
                        first = i;
                    last = i;
                }
            float wdt = hi[j] - lo[j], w = wdt / (float)B;
            if (first < 0) { /* no samples: keep the range */
                ca[hslot[j]] = lo[j];
                cb[hslot[j]] = hi[j];
                continue;
            }
            int grow_lo = first == 0, grow_hi = last == B - 1;
            if ((grow_lo || grow_hi) && round < 6) {
                if (grow_lo)
                    lo[j] -= 4 * wdt;
                if (grow_hi)
                    hi[j] += 4 * wdt;
                pending[still++] = j;
                continue;
            }
            /* the observed range, to one bin */
            ca[hslot[j]] = lo[j] + w * (float)first;
            cb[hslot[j]] = lo[j] + w * (float)(last + 1);
        }
        if (still == n_pend && round >= 6)
            break;
        n_pend = still;
    }
    /* pass 2: histograms on the observed ranges -> the clip of the method */
    for (int j = 0; j < nh; j++) {
        hcons[j] = hnode[j];
        hlo[j] = ca[hslot[j]];
        hhi[j] = cb[hslot[j]];
        if (!(hhi[j] > hlo[j]))
            hhi[j] = hlo[j] + 1e-6f;
    }
    if ((rc = fs_source_histogram(src, m, hcons, nh, hlo, hhi, B, counts, d)) != 0)
        goto done;
    for (int j = 0; j < nh; j++) {
        const int64_t *h = counts + (size_t)j * (size_t)B;
        int k = hslot[j];
        if (fs_calib_clip(h, B, hlo[j], hhi[j], &c, &ca[k], &cb[k], NULL) != 0) {
            ca[k] = fminf(hlo[j], 0); /* no samples: the coarse range */
            cb[k] = fmaxf(hhi[j], 0);
        }
    }
apply:
    for (int i = 0; i < pl.n_q; i++) {
        const fs_node *n = &m->nodes[pl.qnode[i]];
        int k = 0;
        while (pl.prod[k] != n->in0)
            k++;
        fs_quant_act_params(ca[k], cb[k], &m->params[n->q[1]].data[0], &m->params[n->q[2]].data[0]);
    }
    goto done;
oom:
    rc = fs_diag_set(d, FS_ENOMEM, "calibration: out of memory");
done:
    plan_free(&pl);
    free(hnode);
    free(hcons);
    free(hslot);
    free(pending);
    free(lo);
    free(hi);
    free(ca);
    free(cb);
    free(hlo);
    free(hhi);
    free(cnt);
    free(counts);
    free(sum);
    free(sumsq);
    return rc;
}

int fs_quant_int8(fs_model **out, fs_source *src, const fs_model *m, const fs_quant_config *c,
                  fs_diag *d) {
    *out = NULL;
    fs_model *q = NULL;
    int rc = fs_quant_fold(&q, m, c, d);
    if (rc)
        return rc;
    fs_quant_weights(q);
    if ((rc = fs_quant_calibrate(src, q, c, d)) != 0) {
        fs_model_free(q);
        return rc;
    }
    *out = q;
    return 0;
}
