/*
 * graph.c — builds the layer graph of an fs_arch (ResNet family, MLP) with torchvision names,
 * allocates parameters in one block, initialises them, and answers size/FLOP questions.
 * It does not run anything (run.c) and does not read files (io.c).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_model.h"
#include "fs_rng.h"

typedef struct {
    fs_model *m;
    int cap_nodes, cap_params;
    const fs_adaptor_spec *adaptors;
    int n_adaptors;
    int cur_block;
    fs_diag *d;
    int err;
} builder;

/* snprintf that flags truncation: names are bounded, and a name that does not fit is our bug
 * (architectures are validated, so their names are short). */
static void name_fmt(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void name_fmt(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    FS_ASSERT(k >= 0 && (size_t)k < n);
}

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return 0;
    int nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q)
        return FS_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static int add_param(builder *b, const char *name, fs_param_kind kind, int ndim, const int64_t *shape)
{
    fs_model *m = b->m;
    if (b->err || grow((void **)&m->params, &b->cap_params, m->n_params + 1, sizeof(fs_param))) {
        b->err = FS_ENOMEM;
        return -1;
    }
    fs_param *p = &m->params[m->n_params];
    memset(p, 0, sizeof *p);
    name_fmt(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    p->trainable = !fs_param_is_buffer(kind);
    return m->n_params++;
}

static int add_node(builder *b, fs_node_op op, const char *name, int in0, int in1)
{
    fs_model *m = b->m;
    if (b->err || grow((void **)&m->nodes, &b->cap_nodes, m->n_nodes + 1, sizeof(fs_node))) {
        b->err = FS_ENOMEM;
        return -1;
    }
    fs_node *n = &m->nodes[m->n_nodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    name_fmt(n->name, sizeof n->name, "%s", name);
    n->in0 = in0;
    n->in1 = in1;
    n->p[0] = n->p[1] = n->p[2] = n->p[3] = -1;
    n->q[0] = n->q[1] = n->q[2] = -1;
    n->block = b->cur_block;
    return m->n_nodes++;
}

/* shape of a node's output (or of the model input for -1) */
static void shape_of(const builder *b, int node, int *C, int *H, int *W)
{
    if (node < 0) {
        *C = b->m->arch.in_c;
        *H = b->m->arch.in_h;
        *W = b->m->arch.in_w;
    } else {
        *C = b->m->nodes[node].C;
        *H = b->m->nodes[node].H;
        *W = b->m->nodes[node].W;
    }
}

/* int8 layers: weight_scale [OC], input_scale [1], input_zero_point [1] after the weight and bias.
 * N:M layers: the reduction dimension K must split into whole groups of M. */
static void layer_opts(builder *b, int n, const char *name, int OC, int64_t K, const fs_layer_opts *o)
{
    if (b->err || !o)
        return;
    if (o->nm_m > 0 && K % o->nm_m != 0) {
        b->err = fs_diag_set(b->d, FS_EINVAL, "%s: N:M sparsity %d:%d needs the reduction "
                             "dimension (%lld) to be a multiple of %d", name, o->nm_n, o->nm_m,
                             (long long)K, o->nm_m);
        return;
    }
    int q[3] = {-1, -1, -1};
    if (o->qbits) {
        static const char *suffix[3] = {"weight_scale", "input_scale", "input_zero_point"};
        static const fs_param_kind kinds[3] = {FS_PARAM_WEIGHT_SCALE, FS_PARAM_INPUT_SCALE,
                                               FS_PARAM_INPUT_ZERO_POINT};
        char pname[128];
        for (int i = 0; i < 3; i++) {
            int64_t s[1] = {i == 0 ? OC : 1};
            name_fmt(pname, sizeof pname, "%s.%s", name, suffix[i]);
            q[i] = add_param(b, pname, kinds[i], 1, s);
        }
    }
    if (b->err)
        return;
    fs_node *nd = &b->m->nodes[n];
    nd->opts = *o;
    nd->opts.rank = 0;
    for (int i = 0; i < 3; i++)
        nd->q[i] = q[i];
}

static int plain_conv(builder *b, const char *name, int in, int OC, int K, int stride, int pad,
                      int bias, const fs_layer_opts *o)
{
    if (b->err)
        return -1;
    int C, H, W;
    shape_of(b, in, &C, &H, &W);
    int n = add_node(b, FS_NODE_CONV, name, in, -1);
    if (n < 0)
        return -1;
    fs_node *nd = &b->m->nodes[n];
    nd->conv = (fs_conv2d_shape){.N = 1, .C = C, .H = H, .W = W, .OC = OC, .KH = K, .KW = K,
                                 .stride = stride, .pad = pad, .groups = 1};
    if (fs_conv2d_shape_init(&nd->conv) != 0) {
        b->err = fs_diag_set(b->d, FS_EINVAL, "%s: impossible convolution (%dx%dx%d input, %dx%d "
                             "kernel, stride %d, pad %d)", name, C, H, W, K, K, stride, pad);
        return -1;
    }
    nd->C = OC;
    nd->H = nd->conv.OH;
    nd->W = nd->conv.OW;
    char pname[128];
    name_fmt(pname, sizeof pname, "%s.weight", name);
    int64_t ws[4] = {OC, C, K, K};
    int pw = add_param(b, pname, FS_PARAM_WEIGHT, 4, ws);
    int pb = -1;
    if (bias) {
        name_fmt(pname, sizeof pname, "%s.bias", name);
        int64_t bs[1] = {OC};
        pb = add_param(b, pname, FS_PARAM_BIAS, 1, bs);
    }
    nd = &b->m->nodes[n];
    nd->p[0] = pw;
    nd->p[1] = pb;
    layer_opts(b, n, name, OC, (int64_t)C * K * K, o);
    return n;
}

static const fs_adaptor_spec *find_adaptor(const builder *b, const char *conv, fs_adaptor_pos pos)
{
    for (int i = 0; i < b->n_adaptors; i++)
        if (b->adaptors[i].pos == pos && !strcmp(b->adaptors[i].conv, conv))
            return &b->adaptors[i];
    return NULL;
}

/* A conv as the architecture stores it: plain, factorized (name.0 + name.1), with adaptors.
 * An int8 conv (qbits 8) has its batch norm folded in: it gets a bias (on the last factor) and the
 * caller adds no BN node after it (conv_bn). */
static int conv(builder *b, const char *name, int in, int OC, int K, int stride, int pad,
                const fs_layer_opts *o)
{
    int folded = o && o->qbits;
    char sub[96];
    if (find_adaptor(b, name, FS_ADAPTOR_PRE)) {
        int C, H, W;
        shape_of(b, in, &C, &H, &W);
        name_fmt(sub, sizeof sub, "%s.adaptor_pre", name);
        in = plain_conv(b, sub, in, C, 1, 1, 0, 0, NULL);
    }
    int out;
    if (o && o->rank > 0) {
        name_fmt(sub, sizeof sub, "%s.0", name);
        int mid = plain_conv(b, sub, in, o->rank, K, stride, pad, 0, o);
        name_fmt(sub, sizeof sub, "%s.1", name);
        out = plain_conv(b, sub, mid, OC, 1, 1, 0, folded, o);
    } else {
        out = plain_conv(b, name, in, OC, K, stride, pad, folded, o);
    }
    if (find_adaptor(b, name, FS_ADAPTOR_AFTER)) {
        name_fmt(sub, sizeof sub, "%s.adaptor_after", name);
        out = plain_conv(b, sub, out, OC, 1, 1, 0, 0, NULL);
    }
    return out;
}

static int bn(builder *b, const char *name, int in)
{
    if (b->err)
        return -1;
    int C, H, W;
    shape_of(b, in, &C, &H, &W);
    int n = add_node(b, FS_NODE_BN, name, in, -1);
    if (n < 0)
        return -1;
    char pname[128];
    int64_t s[1] = {C};
    static const char *suffix[4] = {"weight", "bias", "running_mean", "running_var"};
    static const fs_param_kind kinds[4] = {FS_PARAM_BN_WEIGHT, FS_PARAM_BN_BIAS, FS_PARAM_BN_MEAN,
                                           FS_PARAM_BN_VAR};
    int p[4];
    for (int i = 0; i < 4; i++) {
        name_fmt(pname, sizeof pname, "%s.%s", name, suffix[i]);
        p[i] = add_param(b, pname, kinds[i], 1, s);
    }
    fs_node *nd = &b->m->nodes[n];
    for (int i = 0; i < 4; i++)
        nd->p[i] = p[i];
    nd->C = C;
    nd->H = H;
    nd->W = W;
    return n;
}

/* conv + its batch norm, or the conv alone when the BN is folded into it (int8). */
static int conv_bn(builder *b, const char *cname, const char *bname, int in, int OC, int K,
                   int stride, int pad, const fs_layer_opts *o)
{
    int y = conv(b, cname, in, OC, K, stride, pad, o);
    return o && o->qbits ? y : bn(b, bname, y);
}

static int unary(builder *b, fs_node_op op, const char *name, int in)
{
    if (b->err)
        return -1;
    int C, H, W;
    shape_of(b, in, &C, &H, &W);
    int n = add_node(b, op, name, in, -1);
    if (n < 0)
        return -1;
    fs_node *nd = &b->m->nodes[n];
    nd->C = C;
    nd->H = H;
    nd->W = W;
    if (op == FS_NODE_GAP) {
        nd->H = nd->W = 1;
    } else if (op == FS_NODE_MAXPOOL) {
        nd->pool = (fs_pool_shape){.N = 1, .C = C, .H = H, .W = W, .K = 3, .stride = 2, .pad = 1};
        if (fs_pool_shape_init(&nd->pool) != 0) {
            b->err = fs_diag_set(b->d, FS_EINVAL, "%s: input %dx%d too small", name, H, W);
            return -1;
        }
        nd->H = nd->pool.OH;
        nd->W = nd->pool.OW;
    }
    return n;
}

static int add(builder *b, const char *name, int a, int c)
{
    if (b->err)
        return -1;
    int n = add_node(b, FS_NODE_ADD, name, a, c);
    if (n < 0)
        return -1;
    int C, H, W;
    shape_of(b, a, &C, &H, &W);
    fs_node *nd = &b->m->nodes[n];
    nd->C = C;
    nd->H = H;
    nd->W = W;
    return n;
}

static int plain_linear(builder *b, const char *name, int in, int OUT, int bias,
                        const fs_layer_opts *o)
{
    if (b->err)
        return -1;
    int C, H, W;
    shape_of(b, in, &C, &H, &W);
    int IN = C * H * W;
    int n = add_node(b, FS_NODE_LINEAR, name, in, -1);
    if (n < 0)
        return -1;
    char pname[128];
    name_fmt(pname, sizeof pname, "%s.weight", name);
    int64_t ws[2] = {OUT, IN};
    int pw = add_param(b, pname, FS_PARAM_WEIGHT, 2, ws);
    int pb = -1;
    if (bias) {
        name_fmt(pname, sizeof pname, "%s.bias", name);
        int64_t bs[1] = {OUT};
        pb = add_param(b, pname, FS_PARAM_BIAS, 1, bs);
    }
    fs_node *nd = &b->m->nodes[n];
    nd->in_features = IN;
    nd->out_features = OUT;
    nd->C = OUT;
    nd->H = nd->W = 1;
    nd->p[0] = pw;
    nd->p[1] = pb;
    layer_opts(b, n, name, OUT, IN, o);
    return n;
}

static int linear(builder *b, const char *name, int in, int OUT, const fs_layer_opts *o)
{
    if (o && o->rank > 0) {
        char sub[96];
        name_fmt(sub, sizeof sub, "%s.0", name);
        int mid = plain_linear(b, sub, in, o->rank, 0, o);
        name_fmt(sub, sizeof sub, "%s.1", name);
        return plain_linear(b, sub, mid, OUT, 1, o);
    }
    return plain_linear(b, name, in, OUT, 1, o);
}

static int add_block(builder *b, int cur, int s, int i)
{
    fs_model *m = b->m;
    const fs_arch *a = &m->arch;
    const fs_stage_arch *st = &a->stages[s];
    const fs_block_arch *blk = &st->blocks[i];
    char pre[32], nm[96], bnm[96];
    name_fmt(pre, sizeof pre, "layer%d.%d", s + 1, i);
    fs_block_info *info = &m->blocks[m->n_blocks];
    memset(info, 0, sizeof *info);
    name_fmt(info->name, sizeof info->name, "%s", pre);
    info->stage = s;
    info->index = i;
    info->identity = !blk->downsample;
    info->first_node = m->n_nodes;
    b->cur_block = m->n_blocks++;

    int x = cur, y;
    if (a->block == FS_BLOCK_BASIC) {
        name_fmt(nm, sizeof nm, "%s.conv1", pre);
        name_fmt(bnm, sizeof bnm, "%s.bn1", pre);
        y = conv_bn(b, nm, bnm, x, blk->mid[0], 3, blk->stride, 1, &blk->conv[0]);
        name_fmt(nm, sizeof nm, "%s.relu1", pre);
        y = unary(b, FS_NODE_RELU, nm, y);
        name_fmt(nm, sizeof nm, "%s.conv2", pre);
        name_fmt(bnm, sizeof bnm, "%s.bn2", pre);
        y = conv_bn(b, nm, bnm, y, st->width, 3, 1, 1, &blk->conv[1]);
    } else {
        name_fmt(nm, sizeof nm, "%s.conv1", pre);
        name_fmt(bnm, sizeof bnm, "%s.bn1", pre);
        y = conv_bn(b, nm, bnm, x, blk->mid[0], 1, 1, 0, &blk->conv[0]);
        name_fmt(nm, sizeof nm, "%s.relu1", pre);
        y = unary(b, FS_NODE_RELU, nm, y);
        name_fmt(nm, sizeof nm, "%s.conv2", pre);
        name_fmt(bnm, sizeof bnm, "%s.bn2", pre);
        y = conv_bn(b, nm, bnm, y, blk->mid[1], 3, blk->stride, 1, &blk->conv[1]);
        name_fmt(nm, sizeof nm, "%s.relu2", pre);
        y = unary(b, FS_NODE_RELU, nm, y);
        name_fmt(nm, sizeof nm, "%s.conv3", pre);
        name_fmt(bnm, sizeof bnm, "%s.bn3", pre);
        y = conv_bn(b, nm, bnm, y, st->width, 1, 1, 0, &blk->conv[2]);
    }
    int sc = x;
    if (blk->downsample) {
        name_fmt(nm, sizeof nm, "%s.downsample.0", pre);
        name_fmt(bnm, sizeof bnm, "%s.downsample.1", pre);
        sc = conv_bn(b, nm, bnm, x, st->width, 1, blk->stride, 0, &blk->ds);
    }
    name_fmt(nm, sizeof nm, "%s.add", pre);
    y = add(b, nm, y, sc);
    name_fmt(nm, sizeof nm, "%s.relu", pre);
    y = unary(b, FS_NODE_RELU, nm, y);
    info->last_node = m->n_nodes - 1;
    b->cur_block = -1;
    return y;
}

static int build_resnet(builder *b)
{
    fs_model *m = b->m;
    const fs_arch *a = &m->arch;
    int total = 0;
    for (int s = 0; s < a->n_stages; s++)
        total += a->stages[s].n_blocks;
    m->blocks = calloc((size_t)(total ? total : 1), sizeof(fs_block_info));
    if (!m->blocks)
        return FS_ENOMEM;
    int y;
    if (a->stem == FS_STEM_IMAGENET)
        y = conv_bn(b, "conv1", "bn1", -1, a->stem_width, 7, 2, 3, &a->stem_opts);
    else
        y = conv_bn(b, "conv1", "bn1", -1, a->stem_width, 3, 1, 1, &a->stem_opts);
    y = unary(b, FS_NODE_RELU, "relu", y);
    if (a->stem == FS_STEM_IMAGENET)
        y = unary(b, FS_NODE_MAXPOOL, "maxpool", y);
    for (int s = 0; s < a->n_stages; s++)
        for (int i = 0; i < a->stages[s].n_blocks; i++)
            y = add_block(b, y, s, i);
    m->feat_node = y;
    y = unary(b, FS_NODE_GAP, "avgpool", y);
    y = linear(b, "fc", y, a->num_classes, &a->fc_opts);
    m->logits_node = y;
    return b->err;
}

static int build_mlp(builder *b)
{
    fs_model *m = b->m;
    const fs_arch *a = &m->arch;
    m->blocks = calloc(1, sizeof(fs_block_info));
    if (!m->blocks)
        return FS_ENOMEM;
    int y = -1;
    char nm[32];
    m->feat_node = -1;
    for (int i = 0; i < a->n_hidden; i++) {
        name_fmt(nm, sizeof nm, "fc%d", i + 1);
        y = linear(b, nm, y, a->hidden[i], &a->mlp_opts[i]);
        name_fmt(nm, sizeof nm, "relu%d", i + 1);
        y = unary(b, FS_NODE_RELU, nm, y);
        m->feat_node = y;
    }
    name_fmt(nm, sizeof nm, "fc%d", a->n_hidden + 1);
    y = linear(b, nm, y, a->num_classes, &a->mlp_opts[a->n_hidden]);
    m->logits_node = y;
    return b->err;
}

static int allocate_params(fs_model *m)
{
    size_t total = 0, gtotal = 0;
    for (int i = 0; i < m->n_params; i++) {
        total += fs_align_up(m->params[i].numel, 16);
        if (!fs_param_is_buffer(m->params[i].kind))
            gtotal += fs_align_up(m->params[i].numel, 16);
    }
    m->param_block = fs_alloc(total * sizeof(float));
    m->grad_block = fs_alloc((gtotal ? gtotal : 16) * sizeof(float));
    if (!m->param_block || !m->grad_block)
        return FS_ENOMEM;
    m->param_floats = total;
    m->grad_floats = gtotal;
    float *p = m->param_block, *g = m->grad_block;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *pr = &m->params[i];
        pr->data = p;
        p += fs_align_up(pr->numel, 16);
        if (!fs_param_is_buffer(pr->kind)) {
            pr->grad = g;
            g += fs_align_up(pr->numel, 16);
        }
        float fill = (pr->kind == FS_PARAM_BN_VAR || pr->kind == FS_PARAM_BN_WEIGHT) ? 1.0f : 0.0f;
        for (size_t k = 0; k < pr->numel; k++)
            pr->data[k] = fill;
    }
    return 0;
}

int fs_model_build(fs_model **out, const fs_arch *a, const fs_adaptor_spec *adaptors,
                   int n_adaptors, fs_diag *d)
{
    *out = NULL;
    int rc = fs_arch_validate(a, d);
    if (rc)
        return rc;
    fs_model *m = calloc(1, sizeof *m);
    if (!m)
        return fs_diag_set(d, FS_ENOMEM, "out of memory building the model");
    m->arch = *a;
    builder b = {.m = m, .adaptors = adaptors, .n_adaptors = n_adaptors, .cur_block = -1, .d = d};
    rc = a->type == FS_ARCH_RESNET ? build_resnet(&b) : build_mlp(&b);
    for (int i = 0; !rc && i < n_adaptors; i++)
        if (fs_model_node(m, adaptors[i].conv) < 0)
            rc = fs_diag_set(d, FS_EINVAL, "adaptor on '%s': no such conv", adaptors[i].conv);
    if (!rc && (rc = allocate_params(m)) != 0)
        fs_diag_set(d, rc, "out of memory allocating %d parameters", m->n_params);
    if (rc) {
        if (rc == FS_ENOMEM && d && !d->msg[0])
            fs_diag_set(d, rc, "out of memory building the model");
        fs_model_free(m);
        return rc;
    }
    fs_model_init(m, 0);
    *out = m;
    return 0;
}

void fs_model_free(fs_model *m)
{
    if (!m)
        return;
    free(m->nodes);
    free(m->params);
    free(m->blocks);
    fs_free(m->param_block);
    fs_free(m->grad_block);
    free(m);
}

static int is_adaptor(const char *name)
{
    return strstr(name, ".adaptor_") != NULL;
}

void fs_model_init(fs_model *m, uint64_t seed)
{
    fs_rng rng;
    fs_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_nodes; i++) {
        fs_node *n = &m->nodes[i];
        if (n->op == FS_NODE_CONV) {
            fs_param *w = &m->params[n->p[0]];
            if (is_adaptor(n->name)) {
                memset(w->data, 0, w->numel * sizeof(float));
                for (int c = 0; c < n->conv.OC; c++)
                    w->data[(size_t)c * n->conv.C + c] = 1.0f;
            } else {
                double fan_out = (double)n->conv.OC * n->conv.KH * n->conv.KW / n->conv.groups;
                float std = (float)sqrt(2.0 / fan_out);
                for (size_t k = 0; k < w->numel; k++)
                    w->data[k] = std * fs_rng_normal(&rng);
            }
            if (n->p[1] >= 0)
                memset(m->params[n->p[1]].data, 0, m->params[n->p[1]].numel * sizeof(float));
        } else if (n->op == FS_NODE_LINEAR) {
            float bound = 1.0f / sqrtf((float)n->in_features);
            fs_param *w = &m->params[n->p[0]];
            for (size_t k = 0; k < w->numel; k++)
                w->data[k] = bound * (2.0f * fs_rng_uniform(&rng) - 1.0f);
            if (n->p[1] >= 0) {
                fs_param *bb = &m->params[n->p[1]];
                for (size_t k = 0; k < bb->numel; k++)
                    bb->data[k] = bound * (2.0f * fs_rng_uniform(&rng) - 1.0f);
            }
        } else if (n->op == FS_NODE_BN) {
            for (int k = 0; k < 4; k++) {
                fs_param *p = &m->params[n->p[k]];
                float v = (k == 0 || k == 3) ? 1.0f : 0.0f;
                for (size_t j = 0; j < p->numel; j++)
                    p->data[j] = v;
            }
        }
    }
}

int fs_model_clone(fs_model **out, const fs_model *m, fs_diag *d)
{
    *out = NULL;
    fs_model *c = calloc(1, sizeof *c);
    if (!c)
        return fs_diag_set(d, FS_ENOMEM, "out of memory cloning the model");
    *c = *m;
    c->nodes = malloc((size_t)m->n_nodes * sizeof(fs_node));
    c->params = malloc((size_t)m->n_params * sizeof(fs_param));
    c->blocks = malloc((size_t)(m->n_blocks ? m->n_blocks : 1) * sizeof(fs_block_info));
    c->param_block = fs_alloc(m->param_floats * sizeof(float));
    c->grad_block = fs_alloc((m->grad_floats ? m->grad_floats : 16) * sizeof(float));
    if (!c->nodes || !c->params || !c->blocks || !c->param_block || !c->grad_block) {
        c->n_nodes = 0;
        fs_model_free(c);
        return fs_diag_set(d, FS_ENOMEM, "out of memory cloning the model");
    }
    memcpy(c->nodes, m->nodes, (size_t)m->n_nodes * sizeof(fs_node));
    memcpy(c->params, m->params, (size_t)m->n_params * sizeof(fs_param));
    memcpy(c->blocks, m->blocks, (size_t)m->n_blocks * sizeof(fs_block_info));
    memcpy(c->param_block, m->param_block, m->param_floats * sizeof(float));
    for (int i = 0; i < m->n_params; i++) {
        c->params[i].data = c->param_block + (m->params[i].data - m->param_block);
        if (m->params[i].grad)
            c->params[i].grad = c->grad_block + (m->params[i].grad - m->grad_block);
    }
    *out = c;
    return 0;
}

fs_param *fs_model_param(fs_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name))
            return &m->params[i];
    return NULL;
}

const fs_param *fs_model_param_c(const fs_model *m, const char *name)
{
    return fs_model_param((fs_model *)m, name);
}

int fs_model_node(const fs_model *m, const char *name)
{
    for (int i = 0; i < m->n_nodes; i++)
        if (!strcmp(m->nodes[i].name, name))
            return i;
    return -1;
}

int fs_model_copy_matching(fs_model *dst, const fs_model *src)
{
    int copied = 0;
    for (int i = 0; i < dst->n_params; i++) {
        const fs_param *s = fs_model_param_c(src, dst->params[i].name);
        if (!s || s->ndim != dst->params[i].ndim)
            continue;
        int same = 1;
        for (int k = 0; k < s->ndim; k++)
            same &= s->shape[k] == dst->params[i].shape[k];
        if (!same)
            continue;
        memcpy(dst->params[i].data, s->data, s->numel * sizeof(float));
        copied++;
    }
    return copied;
}

void fs_model_set_trainable(fs_model *m, int trainable)
{
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            m->params[i].trainable = trainable;
}

void fs_model_zero_grad(fs_model *m)
{
    memset(m->grad_block, 0, m->grad_floats * sizeof(float));
}

int64_t fs_model_num_params(const fs_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!fs_param_is_buffer(m->params[i].kind))
            n += (int64_t)m->params[i].numel;
    return n;
}

size_t fs_node_numel(const fs_model *m, int node)
{
    if (node < 0)
        return (size_t)m->arch.in_c * m->arch.in_h * m->arch.in_w;
    const fs_node *n = &m->nodes[node];
    return (size_t)n->C * n->H * n->W;
}

int64_t fs_node_flops(const fs_model *m, int node)
{
    const fs_node *n = &m->nodes[node];
    int64_t out = (int64_t)fs_node_numel(m, node);
    switch (n->op) {
    case FS_NODE_CONV:
        return 2 * out * (n->conv.C / n->conv.groups) * n->conv.KH * n->conv.KW +
               (n->p[1] >= 0 ? out : 0);
    case FS_NODE_LINEAR:
        return 2 * (int64_t)n->in_features * n->out_features + n->out_features;
    case FS_NODE_BN:
        return 2 * out;
    case FS_NODE_GAP:
        return (int64_t)fs_node_numel(m, n->in0);
    case FS_NODE_MAXPOOL:
        return out * n->pool.K * n->pool.K;
    default:
        return out;
    }
}

int64_t fs_model_flops(const fs_model *m)
{
    int64_t f = 0;
    for (int i = 0; i < m->n_nodes; i++)
        f += fs_node_flops(m, i);
    return f;
}
