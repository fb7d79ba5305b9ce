/*
 * arch_infer.c — infer an fs_arch from a PyTorch state_dict saved as safetensors with torchvision
 * names, then check every tensor of the file against it. Widths come from the tensor shapes (so a
 * channel-pruned model imports); strides cannot be seen in weights and follow torchvision (stage 1
 * stride 1, block 0 of later stages stride 2). Handles dense layers only: a fedslim-compressed
 * model carries its architecture in __metadata__["fedslim.arch"] and is never inferred.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_arch.h"

/* One tensor the architecture needs. */
typedef struct {
    char name[64];
    int ndim;
    int64_t shape[4];
} want;

typedef struct {
    want *w;
    size_t n, cap;
} want_list;

static int want_add(want_list *l, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                    const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int want_add(want_list *l, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                    const char *fmt, ...)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        want *nw = realloc(l->w, nc * sizeof *nw);
        if (!nw) {
            return FS_ENOMEM;
        }
        l->w = nw;
        l->cap = nc;
    }
    want *w = &l->w[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    va_end(ap);
    w->ndim = ndim;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->shape[2] = d2;
    w->shape[3] = d3;
    return 0;
}

static int want_bn(want_list *l, int64_t c, const char *prefix)
{
    int rc = 0;
    rc |= want_add(l, 1, c, 0, 0, 0, "%s.weight", prefix);
    rc |= want_add(l, 1, c, 0, 0, 0, "%s.bias", prefix);
    rc |= want_add(l, 1, c, 0, 0, 0, "%s.running_mean", prefix);
    rc |= want_add(l, 1, c, 0, 0, 0, "%s.running_var", prefix);
    return rc ? FS_ENOMEM : 0;
}

/* The dense tensors of `a`, with torchvision names and PyTorch layouts. */
static int expected_tensors(const fs_arch *a, want_list *l)
{
    int rc = 0;
    if (a->type == FS_ARCH_MLP) {
        int64_t in = (int64_t)a->in_c * a->in_h * a->in_w;
        for (int i = 0; i <= a->n_hidden; i++) {
            int64_t out = i < a->n_hidden ? a->hidden[i] : a->num_classes;
            rc |= want_add(l, 2, out, in, 0, 0, "fc%d.weight", i + 1);
            rc |= want_add(l, 1, out, 0, 0, 0, "fc%d.bias", i + 1);
            in = out;
        }
        return rc ? FS_ENOMEM : 0;
    }
    int k = a->stem == FS_STEM_IMAGENET ? 7 : 3;
    rc |= want_add(l, 4, a->stem_width, a->in_c, k, k, "conv1.weight");
    rc |= want_bn(l, a->stem_width, "bn1");
    int64_t cin = a->stem_width;
    for (int s = 0; s < a->n_stages; s++) {
        const fs_stage_arch *st = &a->stages[s];
        for (int b = 0; b < st->n_blocks; b++) {
            const fs_block_arch *bl = &st->blocks[b];
            char p[48];
            char q[64];
            snprintf(p, sizeof p, "layer%d.%d", s + 1, b);
            if (a->block == FS_BLOCK_BOTTLENECK) {
                rc |= want_add(l, 4, bl->mid[0], cin, 1, 1, "%s.conv1.weight", p);
                snprintf(q, sizeof q, "%s.bn1", p);
                rc |= want_bn(l, bl->mid[0], q);
                rc |= want_add(l, 4, bl->mid[1], bl->mid[0], 3, 3, "%s.conv2.weight", p);
                snprintf(q, sizeof q, "%s.bn2", p);
                rc |= want_bn(l, bl->mid[1], q);
                rc |= want_add(l, 4, st->width, bl->mid[1], 1, 1, "%s.conv3.weight", p);
                snprintf(q, sizeof q, "%s.bn3", p);
                rc |= want_bn(l, st->width, q);
            } else {
                rc |= want_add(l, 4, bl->mid[0], cin, 3, 3, "%s.conv1.weight", p);
                snprintf(q, sizeof q, "%s.bn1", p);
                rc |= want_bn(l, bl->mid[0], q);
                rc |= want_add(l, 4, st->width, bl->mid[0], 3, 3, "%s.conv2.weight", p);
                snprintf(q, sizeof q, "%s.bn2", p);
                rc |= want_bn(l, st->width, q);
            }
            if (bl->downsample) {
                rc |= want_add(l, 4, st->width, cin, 1, 1, "%s.downsample.0.weight", p);
                snprintf(q, sizeof q, "%s.downsample.1", p);
                rc |= want_bn(l, st->width, q);
            }
            cin = st->width;
        }
    }
    rc |= want_add(l, 2, a->num_classes, cin, 0, 0, "fc.weight");
    rc |= want_add(l, 1, a->num_classes, 0, 0, 0, "fc.bias");
    return rc ? FS_ENOMEM : 0;
}

static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && off < cap; i++) {
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    }
    if (off < cap) {
        snprintf(buf + off, cap - off, "]");
    }
    return buf;
}

/* The tensor `name` with `ndim` dimensions, each in 1..65536, or an error. */
static int need(const fs_safetensors *st, const char *name, int ndim, const fs_st_tensor **out,
                const char *why, fs_diag *d)
{
    const fs_st_tensor *t = fs_safetensors_find(st, name);
    char sb[128];
    if (!t) {
        return fs_diag_set(d, FS_EFORMAT, "%s: missing tensor '%s' (%s)", fs_safetensors_name(st),
                           name, why);
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) {
        ok = t->shape[i] >= 1 && t->shape[i] <= 65536;
    }
    if (!ok) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s' has shape %s: expected %d dimensions, each 1..65536",
                           fs_safetensors_name(st), name,
                           shape_str(sb, sizeof sb, t->ndim, t->shape), ndim);
    }
    *out = t;
    return 0;
}

/* "layer<S>.<B>." prefix: S (1-based) and B, or 0 if `name` does not start like that. */
static int parse_layer_name(const char *name, long *s, long *b)
{
    if (strncmp(name, "layer", 5) != 0) {
        return 0;
    }
    char *end;
    const char *p = name + 5;
    if (*p < '0' || *p > '9') {
        return 0;
    }
    *s = strtol(p, &end, 10);
    if (*end != '.' || end[1] < '0' || end[1] > '9') {
        return 0;
    }
    *b = strtol(end + 1, &end, 10);
    return *end == '.';
}

static int has_prefix(const fs_safetensors *st, const char *prefix)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        if (strncmp(fs_safetensors_tensor(st, i)->name, prefix, n) == 0) {
            return 1;
        }
    }
    return 0;
}

static int infer_resnet(fs_arch *a, const fs_safetensors *st, int in_c, fs_diag *d)
{
    const char *file = fs_safetensors_name(st);
    const fs_st_tensor *t;
    char sb[128];
    char name[96];
    int rc;
    if ((rc = need(st, "conv1.weight", 4, &t, "the stem convolution", d)) != 0) {
        return rc;
    }
    if (t->shape[2] != t->shape[3] || (t->shape[2] != 7 && t->shape[2] != 3)) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor 'conv1.weight' has shape %s: a 7x7 (ImageNet) or 3x3 "
                           "(CIFAR) stem kernel expected",
                           file, shape_str(sb, sizeof sb, t->ndim, t->shape));
    }
    a->type = FS_ARCH_RESNET;
    a->stem = t->shape[2] == 7 ? FS_STEM_IMAGENET : FS_STEM_CIFAR;
    a->stem_width = (int)t->shape[0];
    if (in_c <= 0) {
        in_c = (int)t->shape[1];
    } else if (t->shape[1] != in_c) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor 'conv1.weight' has shape %s (%lld input channels), but "
                           "the input has %d channels",
                           file, shape_str(sb, sizeof sb, t->ndim, t->shape),
                           (long long)t->shape[1], in_c);
    }
    a->in_c = in_c;

    /* stage and block counts from the names */
    long depth[FS_MAX_STAGES] = {0};
    int n_stages = 0;
    int bottleneck = 0;
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *u = fs_safetensors_tensor(st, i);
        long s;
        long b;
        if (!parse_layer_name(u->name, &s, &b)) {
            continue;
        }
        if (s < 1 || s > FS_MAX_STAGES || b < 0 || b >= FS_MAX_BLOCKS) {
            return fs_diag_set(d, FS_EFORMAT,
                               "%s: tensor '%s': stage %ld block %ld is beyond the supported %d "
                               "stages of %d blocks",
                               file, u->name, s, b, FS_MAX_STAGES, FS_MAX_BLOCKS);
        }
        if (b + 1 > depth[s - 1]) {
            depth[s - 1] = b + 1;
        }
        if (s > n_stages) {
            n_stages = (int)s;
        }
        const char *rest = strchr(strchr(u->name, '.') + 1, '.') + 1;
        if (strncmp(rest, "conv3.", 6) == 0) {
            bottleneck = 1;
        }
    }
    if (n_stages == 0) {
        return fs_diag_set(d, FS_EFORMAT, "%s: no 'layer1.*' tensors: not a torchvision ResNet",
                           file);
    }
    for (int s = 0; s < n_stages; s++) {
        if (depth[s] == 0) {
            return fs_diag_set(d, FS_EFORMAT, "%s: no tensors for 'layer%d', but 'layer%d' exists",
                               file, s + 1, n_stages);
        }
    }
    a->block = bottleneck ? FS_BLOCK_BOTTLENECK : FS_BLOCK_BASIC;
    a->n_stages = n_stages;
    const char *kind = bottleneck ? "a Bottleneck block" : "a BasicBlock";
    int cin = a->stem_width;
    for (int s = 0; s < n_stages; s++) {
        fs_stage_arch *sa = &a->stages[s];
        sa->n_blocks = (int)depth[s];
        for (int b = 0; b < sa->n_blocks; b++) {
            fs_block_arch *bl = &sa->blocks[b];
            snprintf(name, sizeof name, "layer%d.%d.conv1.weight", s + 1, b);
            if ((rc = need(st, name, 4, &t, kind, d)) != 0) {
                return rc;
            }
            bl->mid[0] = (int)t->shape[0];
            snprintf(name, sizeof name, "layer%d.%d.conv2.weight", s + 1, b);
            if ((rc = need(st, name, 4, &t, kind, d)) != 0) {
                return rc;
            }
            int out = (int)t->shape[0];
            if (bottleneck) {
                bl->mid[1] = out;
                snprintf(name, sizeof name, "layer%d.%d.conv3.weight", s + 1, b);
                if ((rc = need(st, name, 4, &t, kind, d)) != 0) {
                    return rc;
                }
                out = (int)t->shape[0];
            }
            if (b == 0) {
                sa->width = out;
            }
            /* a different width in a later block shows up in the shape check below */
            bl->stride = (s > 0 && b == 0) ? 2 : 1;
            /* any downsample.* tensor means a downsample; a missing one is then reported by
             * name in the shape check */
            snprintf(name, sizeof name, "layer%d.%d.downsample.", s + 1, b);
            bl->downsample = has_prefix(st, name);
            cin = sa->width;
        }
    }
    (void)cin;
    if ((rc = need(st, "fc.weight", 2, &t, "the classifier", d)) != 0) {
        return rc;
    }
    a->num_classes = (int)t->shape[0];
    return 0;
}

static int infer_mlp(fs_arch *a, const fs_safetensors *st, int in_c, int in_h, int in_w,
                     fs_diag *d)
{
    const char *file = fs_safetensors_name(st);
    const fs_st_tensor *t;
    char name[32];
    char sb[128];
    int n_layers = 0;
    int rc;
    a->type = FS_ARCH_MLP;
    for (;;) {
        snprintf(name, sizeof name, "fc%d.weight", n_layers + 1);
        if (!fs_safetensors_find(st, name)) {
            break;
        }
        if (++n_layers > FS_MAX_HIDDEN + 1) {
            return fs_diag_set(d, FS_EFORMAT, "%s: more than %d linear layers (fc1..fc%d)", file,
                               FS_MAX_HIDDEN + 1, n_layers);
        }
        if ((rc = need(st, name, 2, &t, "a linear layer", d)) != 0) {
            return rc;
        }
        if (n_layers == 1) {
            int64_t feat = t->shape[1];
            int64_t hw = (int64_t)in_h * in_w;
            if (in_c <= 0) {
                if (feat % hw != 0) {
                    return fs_diag_set(d, FS_EFORMAT,
                                       "%s: tensor 'fc1.weight' has shape %s: %lld input "
                                       "features are not a multiple of %dx%d",
                                       file, shape_str(sb, sizeof sb, t->ndim, t->shape),
                                       (long long)feat, in_h, in_w);
                }
                in_c = (int)(feat / hw);
            }
            a->in_c = in_c;
        }
        if (n_layers > 1) {
            a->hidden[n_layers - 2] = (int)t->shape[1];
        }
        a->num_classes = (int)t->shape[0];
    }
    a->n_hidden = n_layers - 1;
    return 0;
}

int fs_arch_infer(fs_arch *a, const fs_safetensors *st, int in_c, int in_h, int in_w,
                  const float *mean, const float *std, int n_mean, fs_diag *d)
{
    const char *file = fs_safetensors_name(st);
    char s1[128];
    char s2[128];
    if (in_h < 1 || in_w < 1) {
        return fs_diag_set(d, FS_EINVAL, "%s: input size %dx%d: both must be positive", file, in_h,
                           in_w);
    }
    fs_arch *t = calloc(1, sizeof *t);
    want_list wl = {0};
    int rc = 0;
    if (!t) {
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    t->version = FS_ARCH_VERSION;
    t->in_h = in_h;
    t->in_w = in_w;
    if (fs_safetensors_find(st, "conv1.weight")) {
        rc = infer_resnet(t, st, in_c, d);
    } else if (fs_safetensors_find(st, "fc1.weight")) {
        rc = infer_mlp(t, st, in_c, in_h, in_w, d);
    } else {
        rc = fs_diag_set(d, FS_EFORMAT,
                         "%s: cannot infer the architecture: neither 'conv1.weight' (ResNet) nor "
                         "'fc1.weight' (MLP) is present",
                         file);
    }
    if (rc != 0) {
        goto out;
    }
    for (int c = 0; c < FS_MAX_CHANNELS_IN; c++) {
        t->mean[c] = 0.0f;
        t->std[c] = 1.0f;
    }
    if (n_mean != 0 && n_mean != 1 && n_mean != t->in_c) {
        rc = fs_diag_set(d, FS_EINVAL, "%s: %d mean/std values for %d input channels", file,
                         n_mean, t->in_c);
        goto out;
    }
    for (int c = 0; n_mean > 0 && c < t->in_c && c < FS_MAX_CHANNELS_IN; c++) {
        t->mean[c] = mean[n_mean == 1 ? 0 : c];
        t->std[c] = std[n_mean == 1 ? 0 : c];
    }
    if ((rc = fs_arch_validate(t, d)) != 0) {
        /* the widths came from the file: an inconsistent architecture is a bad file */
        fs_diag_prefix(d, "%s: the inferred architecture is invalid", file);
        rc = FS_EFORMAT;
        if (d) {
            d->code = rc;
        }
        goto out;
    }

    /* every tensor the architecture needs, with its exact shape and a float dtype ... */
    if ((rc = expected_tensors(t, &wl)) != 0) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < wl.n; i++) {
        const want *w = &wl.w[i];
        const fs_st_tensor *u = fs_safetensors_find(st, w->name);
        if (!u) {
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: missing tensor '%s' (shape %s expected by the inferred "
                             "architecture)",
                             file, w->name, shape_str(s2, sizeof s2, w->ndim, w->shape));
            goto out;
        }
        int same = u->ndim == w->ndim;
        for (int k = 0; same && k < w->ndim; k++) {
            same = u->shape[k] == w->shape[k];
        }
        if (!same) {
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: tensor '%s' has shape %s in the file, the inferred architecture "
                             "needs %s",
                             file, w->name, shape_str(s1, sizeof s1, u->ndim, u->shape),
                             shape_str(s2, sizeof s2, w->ndim, w->shape));
            goto out;
        }
        if (u->dtype != FS_ST_F32 && u->dtype != FS_ST_F16 && u->dtype != FS_ST_BF16) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' has dtype %s, a float dtype expected",
                             file, w->name, fs_st_dtype_name(u->dtype));
            goto out;
        }
    }
    /* ... and nothing else, except the batch-norm step counters PyTorch saves */
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *u = fs_safetensors_tensor(st, i);
        int known = 0;
        for (size_t k = 0; !known && k < wl.n; k++) {
            known = strcmp(wl.w[k].name, u->name) == 0;
        }
        const char *suffix = ".num_batches_tracked";
        size_t nl = strlen(u->name);
        size_t sl = strlen(suffix);
        if (!known && nl > sl && strcmp(u->name + nl - sl, suffix) == 0 && nl - sl < 80) {
            char rm[96];
            snprintf(rm, sizeof rm, "%.*s.running_mean", (int)(nl - sl), u->name);
            for (size_t k = 0; !known && k < wl.n; k++) {
                known = strcmp(wl.w[k].name, rm) == 0;
            }
        }
        if (!known) {
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: unexpected tensor '%s' with shape %s: not part of the inferred "
                             "%s architecture",
                             file, u->name, shape_str(s1, sizeof s1, u->ndim, u->shape),
                             t->type == FS_ARCH_MLP ? "MLP"
                             : t->block == FS_BLOCK_BOTTLENECK ? "Bottleneck ResNet"
                                                               : "BasicBlock ResNet");
            goto out;
        }
    }
    *a = *t;
out:
    free(wl.w);
    free(t);
    return rc;
}
