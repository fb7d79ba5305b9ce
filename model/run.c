/*
 * run.c — forward and backward passes of a model's graph over a batch. Holds the activations
 * (every node's output, kept for backward), output gradients, BN batch statistics and max-pool
 * indices. Output gradients are zeroed lazily, when a node first receives one.
 * An int8 layer with a calibrated input scale sees its input fake-quantized to uint8 (kept for
 * backward, where the gradient passes straight through); its weights are already dequantized.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_model.h"

struct fs_run {
    int max_batch;
    int N;
    fs_mode mode;
    int last;                   /* last node computed by the latest forward */
    const float *input;         /* borrowed for the duration of forward + backward */
    float **out, **dout;
    float **bn_mean, **bn_invstd;
    float **qin;                /* int8 layers: the fake-quantized input */
    uint8_t *qused;             /* 1: the latest forward used qin for this node */
    int32_t **argmax;
    uint8_t *zeroed, *seeded, *active, *rg;
    float *work;
    float *act_block, *grad_block, *stat_block, *q_block;
    int32_t *idx_block;
    size_t *numel;              /* per-sample output size of each node */
    int n_nodes;
};

static size_t conv_work(const fs_node *n, int N)
{
    fs_conv2d_shape s = n->conv;
    s.N = N;
    return fs_conv2d_workspace(&s);
}

int fs_run_create(fs_run **out, const fs_model *m, int max_batch, fs_diag *d)
{
    *out = NULL;
    if (max_batch <= 0)
        return fs_diag_set(d, FS_EINVAL, "batch size %d must be positive", max_batch);
    fs_run *r = calloc(1, sizeof *r);
    if (!r)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    int n = m->n_nodes;
    r->n_nodes = n;
    r->max_batch = max_batch;
    r->out = calloc((size_t)n, sizeof(float *));
    r->dout = calloc((size_t)n, sizeof(float *));
    r->bn_mean = calloc((size_t)n, sizeof(float *));
    r->bn_invstd = calloc((size_t)n, sizeof(float *));
    r->argmax = calloc((size_t)n, sizeof(int32_t *));
    r->qin = calloc((size_t)n, sizeof(float *));
    r->qused = calloc((size_t)n, 1);
    r->zeroed = calloc((size_t)n, 1);
    r->seeded = calloc((size_t)n, 1);
    r->active = calloc((size_t)n, 1);
    r->rg = calloc((size_t)n, 1);
    r->numel = calloc((size_t)n, sizeof(size_t));
    if (!r->numel || !r->out || !r->dout || !r->bn_mean || !r->bn_invstd || !r->argmax || !r->zeroed ||
        !r->seeded || !r->active || !r->rg || !r->qin || !r->qused)
        goto oom;
    size_t act = 0, stats = 0, idx = 0, work = 0, qact = 0;
    for (int i = 0; i < n; i++) {
        const fs_node *nd = &m->nodes[i];
        act += fs_align_up((size_t)max_batch * fs_node_numel(m, i), 16);
        if (nd->op == FS_NODE_BN)
            stats += 2 * fs_align_up((size_t)nd->C, 16);
        if (nd->op == FS_NODE_MAXPOOL)
            idx += fs_align_up((size_t)max_batch * fs_node_numel(m, i), 16);
        if (nd->q[1] >= 0)
            qact += fs_align_up((size_t)max_batch * fs_node_numel(m, nd->in0), 16);
        if (nd->op == FS_NODE_CONV) {
            size_t w = conv_work(nd, max_batch);
            if (w > work)
                work = w;
        }
    }
    r->act_block = fs_alloc(act * sizeof(float));
    r->grad_block = fs_alloc(act * sizeof(float));
    r->stat_block = fs_alloc((stats + 16) * sizeof(float));
    r->idx_block = fs_alloc((idx + 16) * sizeof(int32_t));
    r->work = fs_alloc((work + 16) * sizeof(float));
    r->q_block = fs_alloc((qact + 16) * sizeof(float));
    if (!r->act_block || !r->grad_block || !r->stat_block || !r->idx_block || !r->work ||
        !r->q_block)
        goto oom;
    float *a = r->act_block, *g = r->grad_block, *s = r->stat_block, *qa = r->q_block;
    int32_t *ix = r->idx_block;
    for (int i = 0; i < n; i++) {
        const fs_node *nd = &m->nodes[i];
        r->numel[i] = fs_node_numel(m, i);
        size_t sz = fs_align_up((size_t)max_batch * r->numel[i], 16);
        r->out[i] = a;
        r->dout[i] = g;
        a += sz;
        g += sz;
        if (nd->op == FS_NODE_BN) {
            r->bn_mean[i] = s;
            s += fs_align_up((size_t)nd->C, 16);
            r->bn_invstd[i] = s;
            s += fs_align_up((size_t)nd->C, 16);
        }
        if (nd->op == FS_NODE_MAXPOOL) {
            r->argmax[i] = ix;
            ix += sz;
        }
        if (nd->q[1] >= 0) {
            r->qin[i] = qa;
            qa += fs_align_up((size_t)max_batch * fs_node_numel(m, nd->in0), 16);
        }
    }
    *out = r;
    return 0;
oom:
    fs_run_free(r);
    return fs_diag_set(d, FS_ENOMEM, "out of memory for activations of batch %d", max_batch);
}

void fs_run_free(fs_run *r)
{
    if (!r)
        return;
    free(r->out);
    free(r->dout);
    free(r->bn_mean);
    free(r->bn_invstd);
    free(r->argmax);
    free(r->qin);
    free(r->qused);
    free(r->zeroed);
    free(r->seeded);
    free(r->active);
    free(r->rg);
    free(r->numel);
    fs_free(r->act_block);
    fs_free(r->grad_block);
    fs_free(r->stat_block);
    fs_free(r->idx_block);
    fs_free(r->work);
    fs_free(r->q_block);
    free(r);
}

int fs_run_max_batch(const fs_run *r)
{
    return r->max_batch;
}

static const float *input_of(const fs_run *r, int node)
{
    return node < 0 ? r->input : r->out[node];
}

static float *param(fs_model *m, int idx)
{
    return idx >= 0 ? m->params[idx].data : NULL;
}

void fs_fake_quant_u8(float *y, const float *x, size_t n, float s, float z)
{
    FS_ASSERT(s > 0);
    for (size_t i = 0; i < n; i++) {
        float q = rintf(x[i] / s) + z;
        q = q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q;
        y[i] = (q - z) * s;
    }
}

/* The input a CONV/LINEAR node computes on: fake-quantized for a calibrated int8 layer. */
static const float *layer_input(fs_run *r, fs_model *m, int i, int N)
{
    const fs_node *n = &m->nodes[i];
    const float *in = input_of(r, n->in0);
    r->qused[i] = 0;
    if (n->q[1] < 0)
        return in;
    float s = m->params[n->q[1]].data[0], z = m->params[n->q[2]].data[0];
    if (!(s > 0))
        return in;      /* not calibrated yet: the float input (calibration itself runs so) */
    fs_fake_quant_u8(r->qin[i], in, (size_t)N * fs_node_numel(m, n->in0), s, z);
    r->qused[i] = 1;
    return r->qin[i];
}

void fs_run_forward_until(fs_run *r, fs_model *m, const float *x, int N, fs_mode mode, int last)
{
    FS_ASSERT(N > 0 && N <= r->max_batch && r->n_nodes == m->n_nodes);
    FS_ASSERT(last >= 0 && last < m->n_nodes);
    r->N = N;
    r->mode = mode;
    r->input = x;
    r->last = last;
    memset(r->zeroed, 0, (size_t)r->n_nodes);
    memset(r->seeded, 0, (size_t)r->n_nodes);
    for (int i = 0; i <= last; i++) {
        const fs_node *n = &m->nodes[i];
        const float *in = input_of(r, n->in0);
        float *y = r->out[i];
        size_t numel = (size_t)N * fs_node_numel(m, i);
        switch (n->op) {
        case FS_NODE_CONV: {
            fs_conv2d_shape s = n->conv;
            s.N = N;
            in = layer_input(r, m, i, N);
            fs_conv2d_forward(y, in, param(m, n->p[0]), param(m, n->p[1]), r->work, &s);
            break;
        }
        case FS_NODE_BN: {
            fs_bn_shape s = {.N = N, .C = n->C, .HW = n->H * n->W, .eps = 1e-5f, .momentum = 0.1f};
            if (mode == FS_MODE_EVAL)
                fs_bn_forward_eval(y, in, param(m, n->p[0]), param(m, n->p[1]), param(m, n->p[2]),
                                   param(m, n->p[3]), &s);
            else
                fs_bn_forward_train(y, r->bn_mean[i], r->bn_invstd[i],
                                    mode == FS_MODE_TRAIN ? param(m, n->p[2]) : NULL,
                                    mode == FS_MODE_TRAIN ? param(m, n->p[3]) : NULL, in,
                                    param(m, n->p[0]), param(m, n->p[1]), &s);
            break;
        }
        case FS_NODE_RELU:
            fs_relu_forward(y, in, numel);
            break;
        case FS_NODE_MAXPOOL: {
            fs_pool_shape s = n->pool;
            s.N = N;
            fs_maxpool_forward(y, r->argmax[i], in, &s);
            break;
        }
        case FS_NODE_ADD:
            fs_add_forward(y, in, input_of(r, n->in1), numel);
            break;
        case FS_NODE_GAP: {
            const fs_node *src = &m->nodes[n->in0];
            fs_gap_forward(y, in, N, src->C, src->H * src->W);
            break;
        }
        case FS_NODE_LINEAR:
            in = layer_input(r, m, i, N);
            fs_linear_forward(y, in, param(m, n->p[0]), param(m, n->p[1]), N, n->in_features,
                              n->out_features);
            break;
        }
    }
}

void fs_run_forward(fs_run *r, fs_model *m, const float *x, int N, fs_mode mode)
{
    fs_run_forward_until(r, m, x, N, mode, m->n_nodes - 1);
}

const float *fs_run_out(const fs_run *r, int node)
{
    FS_ASSERT(node >= 0 && node <= r->last);
    return r->out[node];
}

static float *grad_buf(fs_run *r, int node)
{
    if (!r->zeroed[node]) {
        memset(r->dout[node], 0, (size_t)r->N * r->numel[node] * sizeof(float));
        r->zeroed[node] = 1;
    }
    return r->dout[node];
}

float *fs_run_dout(fs_run *r, int node)
{
    FS_ASSERT(node >= 0 && node <= r->last);
    r->seeded[node] = 1;
    return grad_buf(r, node);
}

/* a parameter receives a gradient only if it has a gradient buffer and is trainable */
static float *pgrad(fs_model *m, int idx)
{
    return (idx >= 0 && m->params[idx].trainable) ? m->params[idx].grad : NULL;
}

void fs_run_backward(fs_run *r, fs_model *m)
{
    int last = r->last, N = r->N;
    /* requires-grad: a node depends on a trainable parameter at or before it */
    for (int i = 0; i <= last; i++) {
        const fs_node *n = &m->nodes[i];
        int g = 0;
        for (int k = 0; k < 2; k++)
            g |= n->p[k] >= 0 && m->params[n->p[k]].trainable;
        if (n->in0 >= 0)
            g |= r->rg[n->in0];
        if (n->in1 >= 0)
            g |= r->rg[n->in1];
        r->rg[i] = (uint8_t)g;
        r->active[i] = r->seeded[i];
    }
    for (int i = last; i >= 0; i--) {
        if (!r->active[i] || !r->rg[i])
            continue;
        const fs_node *n = &m->nodes[i];
        const float *dy = r->dout[i];
        const float *in = r->qused[i] ? r->qin[i] : input_of(r, n->in0);
        float *din = NULL;
        if (n->in0 >= 0 && r->rg[n->in0]) {
            din = grad_buf(r, n->in0);
            r->active[n->in0] = 1;
        }
        size_t numel = (size_t)N * fs_node_numel(m, i);
        switch (n->op) {
        case FS_NODE_CONV: {
            fs_conv2d_shape s = n->conv;
            s.N = N;
            float *dw = pgrad(m, n->p[0]), *db = pgrad(m, n->p[1]);
            if (din || dw || db)
                fs_conv2d_backward(din, dw, db, dy, in, param(m, n->p[0]), r->work, &s);
            break;
        }
        case FS_NODE_BN: {
            fs_bn_shape s = {.N = N, .C = n->C, .HW = n->H * n->W, .eps = 1e-5f, .momentum = 0.1f};
            float *dg = pgrad(m, n->p[0]), *db = pgrad(m, n->p[1]);
            if (r->mode == FS_MODE_EVAL)
                fs_bn_backward_eval(din, dg, db, dy, in, param(m, n->p[0]), param(m, n->p[2]),
                                    param(m, n->p[3]), &s);
            else
                fs_bn_backward_train(din, dg, db, dy, in, r->bn_mean[i], r->bn_invstd[i],
                                     param(m, n->p[0]), &s);
            break;
        }
        case FS_NODE_RELU:
            if (din)
                fs_relu_backward(din, dy, r->out[i], numel);
            break;
        case FS_NODE_MAXPOOL:
            if (din) {
                fs_pool_shape s = n->pool;
                s.N = N;
                fs_maxpool_backward(din, dy, r->argmax[i], &s);
            }
            break;
        case FS_NODE_ADD:
            if (din)
                fs_axpy(din, 1.0f, dy, numel);
            if (n->in1 >= 0 && r->rg[n->in1]) {
                float *d1 = grad_buf(r, n->in1);
                r->active[n->in1] = 1;
                fs_axpy(d1, 1.0f, dy, numel);
            }
            break;
        case FS_NODE_GAP:
            if (din) {
                const fs_node *src = &m->nodes[n->in0];
                fs_gap_backward(din, dy, N, src->C, src->H * src->W);
            }
            break;
        case FS_NODE_LINEAR:
            fs_linear_backward(din, pgrad(m, n->p[0]), pgrad(m, n->p[1]), dy, in,
                               param(m, n->p[0]), N, n->in_features, n->out_features);
            break;
        }
    }
}
