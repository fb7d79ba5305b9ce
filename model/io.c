/*
 * io.c — a model to and from safetensors: the architecture as JSON under
 * __metadata__["fedslim.arch"], tensors under their torchvision names. Loading checks every tensor
 * against the architecture and names the file and tensor in each error.
 * Compressed layers (docs/model-format.md, "Stored layers"): an int8 layer's weight is I8 on disk
 * (dequantized with its weight_scale on load); an N:M layer's weight holds only the kept values,
 * [OC, K*N/M], with their positions within their groups in "<name>.weight_nm_index" (U8, packed:
 * b bits per position, b = 1, 2, 4 or 8 the least with 2^b >= M, low bits first, each row starting
 * on a byte: [OC, ceil(K*N/M * b / 8)]); load decompresses to dense-with-zeros.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_model.h"
#include "fs_safetensors.h"

#define ARCH_KEY "fedslim.arch"

static int ignored_tensor(const char *name)
{
    const char *suffix = ".num_batches_tracked";
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && !strcmp(name + n - k, suffix);
}

#define NM_INDEX_SUFFIX "_nm_index"

/* bits per packed N:M position */
static size_t nm_bits(size_t M)
{
    return M <= 2 ? 1 : M <= 4 ? 2 : M <= 16 ? 4 : 8;
}

static size_t nm_row_bytes(size_t kept, size_t M)
{
    return (kept * nm_bits(M) + 7) / 8;
}

static unsigned nm_get(const uint8_t *row, size_t j, size_t b)
{
    size_t bit = j * b;
    return (row[bit / 8] >> (bit % 8)) & ((1u << b) - 1);
}

static void nm_put(uint8_t *row, size_t j, size_t b, unsigned v)
{
    size_t bit = j * b;
    row[bit / 8] = (uint8_t)(row[bit / 8] | (v << (bit % 8)));
}

/* The CONV/LINEAR node whose weight is param i if that layer is stored compressed (N:M or int8),
 * else -1. */
static int packed_node(const fs_model *m, int i)
{
    for (int k = 0; k < m->n_nodes; k++) {
        const fs_node *n = &m->nodes[k];
        if ((n->op == FS_NODE_CONV || n->op == FS_NODE_LINEAR) && n->p[0] == i &&
            (n->opts.nm_m > 0 || n->opts.qbits))
            return k;
    }
    return -1;
}

static void shape_text(char *buf, size_t n, const int64_t *shape, int ndim)
{
    buf[0] = 0;
    for (int k = 0; k < ndim; k++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%lld", k ? "," : "", (long long)shape[k]);
}

static int check_shape(const fs_st_tensor *t, const int64_t *shape, int ndim, const char *path,
                       fs_diag *d)
{
    int same = t->ndim == ndim;
    for (int k = 0; same && k < ndim; k++)
        same = t->shape[k] == shape[k];
    if (same)
        return 0;
    char want[96], got[96];
    shape_text(want, sizeof want, shape, ndim);
    shape_text(got, sizeof got, t->shape, t->ndim);
    return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' has shape [%s], the architecture needs [%s]",
                       path, t->name, got, want);
}

/* Quantization buffers of an int8 layer, checked after loading: scales positive and finite, zero
 * point an integer in 0..255. */
static int check_qparams(const fs_model *m, const fs_node *n, const char *path, fs_diag *d)
{
    const fs_param *ws = &m->params[n->q[0]], *is = &m->params[n->q[1]], *zp = &m->params[n->q[2]];
    for (size_t c = 0; c < ws->numel; c++)
        if (!(ws->data[c] > 0) || !isfinite(ws->data[c]))
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s'[%zu] = %g: a weight scale must be "
                               "positive and finite", path, ws->name, c, (double)ws->data[c]);
    if (!(is->data[0] > 0) || !isfinite(is->data[0]))
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' = %g: an input scale must be positive "
                           "and finite (the layer was not calibrated)", path, is->name,
                           (double)is->data[0]);
    float z = zp->data[0];
    if (!(z >= 0 && z <= 255) || z != floorf(z))
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' = %g: a uint8 zero point must be an "
                           "integer in 0..255", path, zp->name, (double)z);
    return 0;
}

/* Reads a compressed weight (N:M and/or int8) of node n into its dense float parameter. */
static int read_packed(fs_model *m, const fs_node *n, const fs_safetensors *st, const char *path,
                       fs_diag *d)
{
    fs_param *p = &m->params[n->p[0]];
    const fs_st_tensor *t = fs_safetensors_find(st, p->name);
    if (!t)
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is missing (the architecture needs "
                           "it)", path, p->name);
    int nm = n->opts.nm_m > 0, q8 = n->opts.qbits == 8;
    size_t OC = (size_t)p->shape[0], K = p->numel / OC;
    size_t N = nm ? (size_t)n->opts.nm_n : 1, M = nm ? (size_t)n->opts.nm_m : 1;
    size_t kept = K / M * N;    /* per row */
    int64_t shape[2] = {(int64_t)OC, (int64_t)kept};
    int rc = nm ? check_shape(t, shape, 2, path, d) : check_shape(t, p->shape, p->ndim, path, d);
    if (rc)
        return rc;
    size_t nv = OC * kept, rb = nm_row_bytes(kept, M), bits = nm_bits(M);
    int64_t ishape[2] = {(int64_t)OC, (int64_t)rb};
    float *vals = malloc((nv ? nv : 1) * sizeof(float));
    int8_t *q = malloc(nv ? nv : 1);
    uint8_t *idx = malloc(OC * rb + 1);
    if (!vals || !q || !idx) {
        rc = fs_diag_set(d, FS_ENOMEM, "%s: out of memory reading '%s'", path, p->name);
        goto done;
    }
    if (q8) {
        if (t->dtype != FS_ST_I8) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is %s; an int8 layer stores I8",
                             path, t->name, fs_st_dtype_name(t->dtype));
            goto done;
        }
        if ((rc = fs_safetensors_read_raw(st, t, q, nv, d)) != 0)
            goto done;
        const float *scale = m->params[n->q[0]].data;
        for (size_t o = 0; o < OC; o++)
            for (size_t k = 0; k < kept; k++) {
                int v = q[o * kept + k];
                if (v < -127) {
                    rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' holds -128; int8 weights are "
                                     "symmetric (-127..127)", path, t->name);
                    goto done;
                }
                vals[o * kept + k] = (float)v * scale[o];
            }
    } else if ((rc = fs_safetensors_read_f32(st, t, vals, nv, d)) != 0) {
        goto done;
    }
    if (!nm) {
        memcpy(p->data, vals, nv * sizeof(float));
        goto done;
    }
    char iname[160];
    snprintf(iname, sizeof iname, "%s" NM_INDEX_SUFFIX, p->name);
    const fs_st_tensor *ti = fs_safetensors_find(st, iname);
    if (!ti) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is missing (an N:M layer needs the "
                         "positions of its kept weights)", path, iname);
        goto done;
    }
    if ((rc = check_shape(ti, ishape, 2, path, d)) != 0)
        goto done;
    if (ti->dtype != FS_ST_U8) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is %s, expected U8", path, iname,
                         fs_st_dtype_name(ti->dtype));
        goto done;
    }
    if ((rc = fs_safetensors_read_raw(st, ti, idx, OC * rb, d)) != 0)
        goto done;
    memset(p->data, 0, p->numel * sizeof(float));
    for (size_t o = 0; o < OC; o++)
        for (size_t g = 0; g < K / M; g++) {
            unsigned prev = 0;
            for (size_t j = 0; j < N; j++) {
                unsigned ix = nm_get(idx + o * rb, g * N + j, bits);
                if (ix >= M || (j > 0 && ix <= prev)) {
                    rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': row %zu group %zu: positions "
                                     "must be ascending and below %zu", path, iname, o, g, M);
                    goto done;
                }
                prev = ix;
                p->data[o * K + g * M + ix] = vals[o * kept + g * N + j];
            }
        }
done:
    free(vals);
    free(q);
    free(idx);
    return rc;
}

static int fill_from(fs_model *m, const fs_safetensors *st, const char *path, fs_diag *d)
{
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (packed_node(m, i) >= 0)
            continue;   /* after the scales: read_packed below */
        const fs_st_tensor *t = fs_safetensors_find(st, p->name);
        if (!t)
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is missing (the architecture needs "
                               "it)", path, p->name);
        int rc = check_shape(t, p->shape, p->ndim, path, d);
        if (rc)
            return rc;
        rc = fs_safetensors_read_f32(st, t, p->data, p->numel, d);
        if (rc)
            return rc;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        const fs_node *n = &m->nodes[k];
        if (n->op != FS_NODE_CONV && n->op != FS_NODE_LINEAR)
            continue;
        int rc = n->q[0] >= 0 ? check_qparams(m, n, path, d) : 0;
        if (!rc && (n->opts.nm_m > 0 || n->opts.qbits))
            rc = read_packed(m, n, st, path, d);
        if (rc)
            return rc;
    }
    size_t n = fs_safetensors_count(st);
    for (size_t i = 0; i < n; i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(st, i);
        if (ignored_tensor(t->name) || fs_model_param(m, t->name))
            continue;
        /* "<weight>_nm_index" of an N:M layer */
        size_t len = strlen(t->name), sl = strlen(NM_INDEX_SUFFIX);
        if (len > sl && !strcmp(t->name + len - sl, NM_INDEX_SUFFIX) && len - sl < 160) {
            char wname[160];
            snprintf(wname, sizeof wname, "%.*s", (int)(len - sl), t->name);
            const fs_param *w = fs_model_param(m, wname);
            int node = w ? packed_node(m, (int)(w - m->params)) : -1;
            if (node >= 0 && m->nodes[node].opts.nm_m > 0)
                continue;
        }
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is not part of the architecture",
                           path, t->name);
    }
    return 0;
}

/* A dense float weight as stored for its layer: int8 codes q = clamp(rint(W / s), -127, 127)
 * with the layer's weight_scale, and/or only the N:M-kept values with their positions. Each kept
 * group lists its non-zero positions in ascending order, filled up to N with the first zero
 * positions; a group with more than N non-zeros is an error (the mask was not applied). */
static int write_packed(fs_safetensors_writer *w, const fs_model *m, const fs_node *n,
                        void **bufs, fs_diag *d)
{
    const fs_param *p = &m->params[n->p[0]];
    int nm = n->opts.nm_m > 0, q8 = n->opts.qbits == 8;
    size_t OC = (size_t)p->shape[0], K = p->numel / OC;
    size_t N = nm ? (size_t)n->opts.nm_n : 1, M = nm ? (size_t)n->opts.nm_m : 1;
    size_t kept = nm ? K / M * N : K, nv = OC * kept;
    size_t rb = nm_row_bytes(kept, M), bits = nm_bits(M);
    float *vals = malloc((nv ? nv : 1) * sizeof(float));
    uint8_t *ix = nm ? malloc(N) : NULL;
    uint8_t *idx = nm ? calloc(OC * rb + 1, 1) : NULL;
    bufs[0] = vals;
    bufs[1] = idx;
    if (!vals || (nm && (!idx || !ix))) {
        free(ix);
        return fs_diag_set(d, FS_ENOMEM, "out of memory writing '%s'", p->name);
    }
    int rc = 0;
    if (q8) {
        const fs_param *ws = &m->params[n->q[0]], *is = &m->params[n->q[1]];
        for (size_t o = 0; o < OC; o++)
            if (!(ws->data[o] > 0) || !isfinite(ws->data[o])) {
                rc = fs_diag_set(d, FS_EINVAL, "'%s': weight scale %g of channel %zu: the layer "
                                 "was not quantized", p->name, (double)ws->data[o], o);
                goto done;
            }
        if (!(is->data[0] > 0) || !isfinite(is->data[0])) {
            rc = fs_diag_set(d, FS_EINVAL, "'%s': input scale %g: the layer was not calibrated",
                             is->name, (double)is->data[0]);
            goto done;
        }
    }
    for (size_t o = 0; o < OC; o++) {
        for (size_t g = 0; g < K / M; g++) {
            const float *src = p->data + o * K + g * M;
            size_t j = 0;
            if (nm) {
                for (size_t k = 0; k < M; k++)
                    if (src[k] != 0.0f) {
                        if (j == N) {
                            rc = fs_diag_set(d, FS_EINVAL, "'%s': row %zu group %zu has more "
                                             "than %zu non-zero weights (the %zu:%zu mask was "
                                             "not applied)", p->name, o, g, N, N, M);
                            goto done;
                        }
                        ix[j++] = (uint8_t)k;
                    }
                /* fill up with zero positions, then restore ascending order */
                for (size_t k = 0; j < N && k < M; k++)
                    if (src[k] == 0.0f) {
                        size_t a = 0;
                        while (a < j && ix[a] != k)
                            a++;
                        if (a == j)
                            ix[j++] = (uint8_t)k;
                    }
                for (size_t a = 1; a < N; a++)
                    for (size_t b2 = a; b2 > 0 && ix[b2 - 1] > ix[b2]; b2--) {
                        uint8_t t = ix[b2];
                        ix[b2] = ix[b2 - 1];
                        ix[b2 - 1] = t;
                    }
                for (size_t a = 0; a < N; a++) {
                    vals[o * kept + g * N + a] = src[ix[a]];
                    nm_put(idx + o * rb, g * N + a, bits, ix[a]);
                }
            } else {
                memcpy(vals + o * kept + g * M, src, M * sizeof(float));
            }
        }
    }
    int64_t shape[2] = {(int64_t)OC, (int64_t)kept}, ishape[2] = {(int64_t)OC, (int64_t)rb};
    if (q8) {
        /* int8 codes in place of the floats (the buffer is large enough) */
        int8_t *q = (int8_t *)vals;
        const float *scale = m->params[n->q[0]].data;
        for (size_t o = 0; o < OC; o++)
            for (size_t k = 0; k < kept; k++) {
                float v = rintf(vals[o * kept + k] / scale[o]);
                v = v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
                q[o * kept + k] = (int8_t)v;
            }
        rc = fs_safetensors_writer_add(w, p->name, FS_ST_I8, nm ? 2 : p->ndim,
                                       nm ? shape : p->shape, q, d);
    } else {
        rc = fs_safetensors_writer_add(w, p->name, FS_ST_F32, 2, shape, vals, d);
    }
    if (rc == 0 && nm) {
        char iname[160];
        snprintf(iname, sizeof iname, "%s" NM_INDEX_SUFFIX, p->name);
        rc = fs_safetensors_writer_add(w, iname, FS_ST_U8, 2, ishape, idx, d);
    }
done:
    free(ix);
    return rc;
}

int fs_model_from_state_dict(fs_model **out, const fs_arch *a, const char *path, fs_diag *d)
{
    *out = NULL;
    fs_safetensors *st = NULL;
    fs_model *m = NULL;
    int rc = fs_safetensors_open(&st, path, d);
    if (rc)
        return rc;
    if ((rc = fs_model_build(&m, a, NULL, 0, d)) != 0) {
        fs_diag_prefix(d, "%s", path);
        goto done;
    }
    if ((rc = fill_from(m, st, path, d)) != 0)
        goto done;
    *out = m;
    m = NULL;
done:
    fs_model_free(m);
    fs_safetensors_free(st);
    return rc;
}

int fs_model_load(fs_model **out, const char *path, fs_diag *d)
{
    *out = NULL;
    fs_safetensors *st = NULL;
    fs_model *m = NULL;
    int rc = fs_safetensors_open(&st, path, d);
    if (rc)
        return rc;
    const char *json = fs_safetensors_meta(st, ARCH_KEY);
    fs_arch a;
    if (!json) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: no fedslim architecture (__metadata__ has no '%s'); "
                         "a PyTorch state_dict must first be converted with 'fedslim import'",
                         path, ARCH_KEY);
        goto done;
    }
    if ((rc = fs_arch_from_json(&a, json, strlen(json), d)) != 0) {
        fs_diag_prefix(d, "%s: %s", path, ARCH_KEY);
        goto done;
    }
    if ((rc = fs_model_build(&m, &a, NULL, 0, d)) != 0) {
        fs_diag_prefix(d, "%s", path);
        goto done;
    }
    if ((rc = fill_from(m, st, path, d)) != 0)
        goto done;
    *out = m;
    m = NULL;
done:
    fs_model_free(m);
    fs_safetensors_free(st);
    return rc;
}

int fs_model_save(const fs_model *m, const char *path, fs_diag *d)
{
    fs_safetensors_writer *w = NULL;
    char *json = NULL;
    /* buffers of compressed weights: the writer borrows them until it is freed */
    void **bufs = calloc(2 * (size_t)(m->n_params ? m->n_params : 1), sizeof(void *));
    if (!bufs)
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", path);
    int rc = fs_safetensors_writer_new(&w, d);
    if (rc) {
        free(bufs);
        return rc;
    }
    if ((rc = fs_arch_to_json(&m->arch, &json, d)) != 0)
        goto done;
    if ((rc = fs_safetensors_writer_meta(w, ARCH_KEY, json, d)) != 0)
        goto done;
    if ((rc = fs_safetensors_writer_meta(w, "format", "pt", d)) != 0)
        goto done;
    for (int i = 0; i < m->n_params; i++) {
        const fs_param *p = &m->params[i];
        int node = packed_node(m, i);
        if (node >= 0) {
            if ((rc = write_packed(w, m, &m->nodes[node], bufs + 2 * i, d)) != 0) {
                fs_diag_prefix(d, "%s", path);
                goto done;
            }
            continue;
        }
        rc = fs_safetensors_writer_add(w, p->name, FS_ST_F32, p->ndim, p->shape, p->data, d);
        if (rc)
            goto done;
    }
    rc = fs_safetensors_writer_write(w, path, d);
done:
    free(json);
    fs_safetensors_writer_free(w);
    for (int i = 0; i < 2 * m->n_params; i++)
        free(bufs[i]);
    free(bufs);
    return rc;
}
