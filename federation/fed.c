/*
 * fed.c — the engine's data requests as COMPUTE_REQ/COMPUTE_REPLY: the federated fs_source
 * (coordinator) and the request server (agent). See fs_fed.h for the message contents.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_fed.h"

#define MAX_ARGS 16

/* ---- shared helpers ------------------------------------------------------------------------ */

static int64_t tensor_numel(const fs_wire_tensor *t)
{
    int64_t n = 1;
    for (uint32_t i = 0; i < t->ndim; i++)
        n *= (int64_t)t->shape[i];
    return n;
}

static const fs_wire_tensor *find_tensor(const fs_wire_msg *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name))
            return &m->tensors[i];
    return NULL;
}

/* The adaptor specs of a graph, as text lines "pre CONV" / "after CONV". returns owned. */
static char *adaptor_text(const fs_model *m)
{
    size_t cap = 64, len = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    s[0] = '\0';
    for (int i = 0; i < m->n_nodes; i++) {
        const char *nm = m->nodes[i].name;
        const char *pre = strstr(nm, ".adaptor_pre"), *after = strstr(nm, ".adaptor_after");
        const char *cut = pre ? pre : after;
        if (!cut || (pre && pre[12]) || (after && after[14]))
            continue;
        size_t need = len + (size_t)(cut - nm) + 8;
        if (need > cap) {
            while (cap < need)
                cap *= 2;
            char *t = realloc(s, cap);
            if (!t) {
                free(s);
                return NULL;
            }
            s = t;
        }
        len += (size_t)sprintf(s + len, "%s %.*s\n", pre ? "pre" : "after", (int)(cut - nm), nm);
    }
    return s;
}

static void set_f32_tensor(fs_wire_tensor *t, const char *name, const fs_param *p, float *data)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = FS_WIRE_F32;
    t->ndim = (uint32_t)p->ndim;
    for (int k = 0; k < p->ndim; k++)
        t->shape[k] = (uint64_t)p->shape[k];
    t->data = data;
    t->nbytes = p->numel * sizeof(float);
}

static void set_raw_tensor(fs_wire_tensor *t, const char *name, fs_wire_dtype dt, void *data,
                           size_t n)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = 1;
    t->shape[0] = n;
    t->data = data;
    t->nbytes = n * fs_wire_dtype_size(dt);
}

/* ---- coordinator side: the federated source ------------------------------------------------- */

typedef struct {
    fs_fed_transport t;
    char *graph_key;                    /* arch JSON + adaptors last announced to the agents */
    int n_params;
    uint8_t (*sent)[FS_WIRE_DIGEST_BYTES];  /* digest of each parameter as the agents hold it */
    uint8_t *have;                      /* 1: sent[i] valid */
    fs_wire_tensor *tensors;
    size_t cap_tensors;
    int32_t *trainable;
    /* accumulators of the current request */
    double loss_sum;
    int64_t count;
    int64_t loss_count;                 /* "local": samples of the sites' first local steps */
    const char *prefix;                 /* tensors summed into gacc: "grad/" or "delta/" */
    double *gacc;                       /* [grad_floats] gradient (or weighted delta) sums */
    size_t gacc_n;
    fs_model *student;
    double *sum, *sumsq;
    int64_t *cnt;
    size_t n_channels;
    int n_nodes;
    int64_t *hist;
    size_t n_hist;
    fs_eval_sum ev;
} fed_src;

/* A COMPUTE_REQ of `kind` with these arguments and the first nt of f->tensors (job, round, step
 * and seq are the transport's). */
static void make_req(fs_wire_msg *req, const char *kind, fs_kv *kv, size_t nk, fed_src *f,
                     size_t nt)
{
    memset(req, 0, sizeof *req);
    req->type = FS_MSG_COMPUTE_REQ;
    snprintf(req->u.compute_req.kind, sizeof req->u.compute_req.kind, "%s", kind);
    req->u.compute_req.args.items = kv;
    req->u.compute_req.args.n = nk;
    req->tensors = f->tensors;
    req->n_tensors = nt;
}

static int ensure_tensors(fed_src *f, size_t n, fs_diag *d)
{
    if (n <= f->cap_tensors)
        return 0;
    fs_wire_tensor *t = realloc(f->tensors, n * sizeof *t);
    if (!t)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    f->tensors = t;
    f->cap_tensors = n;
    return 0;
}

/* Only gradient replies are asked to stream; anything else must arrive whole. */
static int need_whole(const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    if (r->type == FS_MSG_COMPUTE_REPLY)
        return 0;
    return fs_diag_set(d, FS_EPROTO, "agent %s: %s to a request that asked for a whole reply",
                       agent, fs_msg_type_name(r->type));
}

static int reply_count(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    if (need_whole(agent, r, d))
        return FS_EPROTO;
    fed_src *f = ud;
    f->count += (int64_t)r->u.compute_reply.count;
    return 0;
}

/* Announces the graph when it changed; then includes every parameter whose value changed since
 * the agents last received it. Returns the number of tensors placed in f->tensors. */
static int sync_student(fed_src *f, const fs_model *m, size_t *n_out, fs_diag *d)
{
    char *json = NULL, *ad = adaptor_text(m);
    int rc = ad ? fs_arch_to_json(&m->arch, &json, d) : fs_diag_set(d, FS_ENOMEM, "out of memory");
    if (rc) {
        free(ad);
        return rc;
    }
    size_t kl = strlen(json) + strlen(ad) + 2;
    char *key = malloc(kl);
    if (!key) {
        free(ad);
        free(json);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    snprintf(key, kl, "%s\n%s", json, ad);
    if (!f->graph_key || strcmp(f->graph_key, key) || f->n_params != m->n_params) {
        /* new graph: announce it with every parameter */
        if ((rc = ensure_tensors(f, (size_t)m->n_params + 2, d)) != 0)
            goto done;
        size_t nt = 0;
        set_raw_tensor(&f->tensors[nt++], "arch.json", FS_WIRE_U8, json, strlen(json));
        if (ad[0])  /* a graph without adaptors sends no adaptor list (tensors are never empty) */
            set_raw_tensor(&f->tensors[nt++], "adaptors", FS_WIRE_U8, ad, strlen(ad));
        for (int i = 0; i < m->n_params; i++)
            set_f32_tensor(&f->tensors[nt++], m->params[i].name, &m->params[i],
                           m->params[i].data);
        fs_wire_msg req;
        memset(&req, 0, sizeof req);
        req.type = FS_MSG_COMPUTE_REQ;
        snprintf(req.u.compute_req.kind, sizeof req.u.compute_req.kind, "student");
        req.tensors = f->tensors;
        req.n_tensors = nt;
        f->count = 0;
        if ((rc = f->t.exchange(f->t.ud, &req, reply_count, f, d)) != 0)
            goto done;
        free(f->sent);
        free(f->have);
        f->sent = calloc((size_t)m->n_params, sizeof *f->sent);
        f->have = calloc((size_t)m->n_params, 1);
        if (!f->sent || !f->have) {
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
            goto done;
        }
        f->n_params = m->n_params;
        for (int i = 0; i < m->n_params; i++) {
            fs_wire_digest(m->params[i].data, m->params[i].numel * sizeof(float), f->sent[i]);
            f->have[i] = 1;
        }
        free(f->graph_key);
        f->graph_key = key;
        key = NULL;
    }
    size_t n = 0;
    if ((rc = ensure_tensors(f, (size_t)m->n_params + 4, d)) != 0)
        goto done;
    for (int i = 0; i < m->n_params; i++) {
        uint8_t dg[FS_WIRE_DIGEST_BYTES];
        fs_wire_digest(m->params[i].data, m->params[i].numel * sizeof(float), dg);
        if (f->have[i] && !memcmp(dg, f->sent[i], sizeof dg))
            continue;
        memcpy(f->sent[i], dg, sizeof dg);   /* committed only if the exchange succeeds: */
        f->have[i] = 0;                     /* marked unknown until then */
        set_f32_tensor(&f->tensors[n++], m->params[i].name, &m->params[i], m->params[i].data);
    }
    *n_out = n;
done:
    free(key);
    free(json);
    free(ad);
    return rc;
}

static void commit_sent(fed_src *f)
{
    for (int i = 0; i < f->n_params; i++)
        f->have[i] = 1;
}

static int src_set_student(void *self, const fs_model *student, fs_diag *d)
{
    (void)self;
    (void)student;
    (void)d;
    return 0;   /* the graph is announced lazily, with the first request that needs it */
}

/* One request to every agent. `reset` (may be NULL) zeroes the sums before a repeat: the transport
 * returns FS_EAGAIN when an agent left after part of its streamed reply had been added. */
static int exchange_retry(fed_src *f, fs_wire_msg *req, fs_fed_reply_fn fn,
                          void (*reset)(fed_src *), fs_diag *d)
{
    int rc = f->t.exchange(f->t.ud, req, fn, f, d);
    for (int k = 1; rc == FS_EAGAIN && reset && k < FS_FED_RETRIES; k++) {
        reset(f);
        rc = f->t.exchange(f->t.ud, req, fn, f, d);
    }
    if (rc == FS_EAGAIN)   /* not repeatable here, or repeated enough: a plain protocol failure */
        rc = FS_EPROTO;
    if (rc == 0)
        commit_sent(f);
    else {
        /* what the agents hold is unknown now: resend everything next time */
        free(f->graph_key);
        f->graph_key = NULL;
    }
    return rc;
}

static int exchange(fed_src *f, fs_wire_msg *req, fs_fed_reply_fn fn, fs_diag *d)
{
    return exchange_retry(f, req, fn, NULL, d);
}

static void put_int(fs_kv *kv, size_t *n, const char *key, int64_t v)
{
    memset(&kv[*n], 0, sizeof kv[*n]);
    snprintf(kv[*n].key, sizeof kv[*n].key, "%s", key);
    kv[*n].kind = FS_KV_INT;
    kv[*n].i = v;
    (*n)++;
}

static void put_float(fs_kv *kv, size_t *n, const char *key, double v)
{
    memset(&kv[*n], 0, sizeof kv[*n]);
    snprintf(kv[*n].key, sizeof kv[*n].key, "%s", key);
    kv[*n].kind = FS_KV_FLOAT;
    kv[*n].f = v;
    (*n)++;
}

/* The minibatch a request draws at every site, and the total the shares are taken of. */
static void put_sample(fed_src *f, fs_kv *kv, size_t *n, const fs_sample_spec *sp)
{
    put_int(kv, n, "batch", sp->batch);
    put_int(kv, n, "seed", (int64_t)(sp->seed & 0x7fffffffffffffffull));
    put_int(kv, n, "step", sp->step);
    put_int(kv, n, "pad", sp->pad);
    put_int(kv, n, "hflip", sp->hflip);
    put_int(kv, n, "total_n", f->t.total_samples(f->t.ud));
}

static void put_nums(fs_kv *kv, size_t *n, const char *key, const double *v, size_t k)
{
    memset(&kv[*n], 0, sizeof kv[*n]);
    snprintf(kv[*n].key, sizeof kv[*n].key, "%s", key);
    kv[*n].kind = FS_KV_NUMS;
    kv[*n].nums = v;
    kv[*n].n_nums = k;
    (*n)++;
}

/* acc[k] += src[k] for n floats; src may be unaligned (a slice inside a received frame). */
static void add_f32(double *restrict acc, const void *src, size_t n)
{
    if ((uintptr_t)src % _Alignof(float) == 0) {
        const float *g = src;
        for (size_t k = 0; k < n; k++)
            acc[k] += g[k];
        return;
    }
    float buf[1024];
    for (size_t k = 0; k < n; k += 1024) {
        size_t m = n - k < 1024 ? n - k : 1024;
        memcpy(buf, (const uint8_t *)src + k * sizeof(float), m * sizeof(float));
        for (size_t i = 0; i < m; i++)
            acc[k + i] += buf[i];
    }
}

/* The student parameter a gradient (or delta) tensor announces, or NULL if it is not an expected
 * one: named f->prefix + a trainable parameter's name, float32, exactly its size. */
static fs_param *grad_param(fed_src *f, const fs_wire_tensor *t)
{
    size_t pl = strlen(f->prefix);
    if (strncmp(t->name, f->prefix, pl))
        return NULL;
    fs_param *p = fs_model_param(f->student, t->name + pl);
    if (!p || !p->grad || !p->trainable || t->dtype != FS_WIRE_F32 ||
        tensor_numel(t) != (int64_t)p->numel)
        return NULL;
    return p;
}

/* Whole replies, and streamed ones: the head is checked completely (every announced tensor an
 * expected gradient) before anything is added; each part was checked by fs_fed_feed against the
 * head (order, offsets, sizes), so its slices land inside the announced gradients. */
static int reply_loss(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    fed_src *f = ud;
    size_t pl = strlen(f->prefix);
    const char *what = !strcmp(f->prefix, "grad/") ? "gradient" : "delta";
    if (r->type == FS_MSG_COMPUTE_PART) {
        const typeof(r->u.compute_part) *pt = &r->u.compute_part;
        for (size_t i = 0; i < pt->n_slices; i++) {
            const fs_wire_slice *sl = &pt->slices[i];
            fs_param *p =
                strncmp(sl->name, f->prefix, pl) ? NULL : fs_model_param(f->student, sl->name + pl);
            if (!p || !p->grad || sl->offset % sizeof(float) || sl->len % sizeof(float) ||
                sl->offset / sizeof(float) + sl->len / sizeof(float) > p->numel)
                return fs_diag_set(d, FS_EPROTO, "agent %s: slice of '%s' outside its gradient",
                                   agent, sl->name);   /* cannot happen after fs_fed_feed */
        }
        for (size_t i = 0; i < pt->n_slices; i++) {
            const fs_wire_slice *sl = &pt->slices[i];
            fs_param *p = fs_model_param(f->student, sl->name + pl);
            double *acc = f->gacc + (p->grad - f->student->grad_block) +
                          sl->offset / sizeof(float);
            add_f32(acc, sl->data, sl->len / sizeof(float));
        }
        return 0;
    }
    const fs_kvlist *sc = r->type == FS_MSG_COMPUTE_HEAD ? &r->u.compute_head.scalars
                                                         : &r->u.compute_reply.scalars;
    uint64_t count = r->type == FS_MSG_COMPUTE_HEAD ? r->u.compute_head.count
                                                    : r->u.compute_reply.count;
    double ls;
    if (fs_kv_get_f64(sc, "loss_sum", &ls) != 0)
        return fs_diag_set(d, FS_EPROTO, "agent %s: loss reply without loss_sum", agent);
    for (size_t i = 0; i < r->n_tensors; i++) {
        const fs_wire_tensor *t = &r->tensors[i];
        if (strncmp(t->name, f->prefix, pl))
            continue;
        if (!grad_param(f, t))
            return fs_diag_set(d, FS_EPROTO, "agent %s: unexpected %s tensor '%s'", agent, what,
                               t->name);
    }
    if (r->type == FS_MSG_COMPUTE_HEAD) {
        for (size_t i = 0; i < r->n_tensors; i++)
            if (strncmp(r->tensors[i].name, f->prefix, pl))
                return fs_diag_set(d, FS_EPROTO, "agent %s: streamed tensor '%s' is not a %s",
                                   agent, r->tensors[i].name, what);
    }
    f->loss_sum += ls;
    f->count += (int64_t)count;
    if (r->type == FS_MSG_COMPUTE_HEAD)
        return 0;   /* the bytes follow in parts */
    for (size_t i = 0; i < r->n_tensors; i++) {
        const fs_wire_tensor *t = &r->tensors[i];
        fs_param *p = grad_param(f, t);
        if (p)
            add_f32(f->gacc + (p->grad - f->student->grad_block), t->data, p->numel);
    }
    return 0;
}

static void reset_loss(fed_src *f)
{
    f->loss_sum = 0;
    f->count = 0;
    if (f->gacc && f->gacc_n >= f->student->grad_floats)
        memset(f->gacc, 0, f->student->grad_floats * sizeof(double));
}

/* Appends the "trainable" tensor (I32 parameter indices) after the nt tensors of sync_student. */
static int put_trainable(fed_src *f, const fs_model *student, size_t *nt, fs_diag *d)
{
    free(f->trainable);
    f->trainable = malloc((size_t)(student->n_params ? student->n_params : 1) * sizeof(int32_t));
    if (!f->trainable)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    size_t ntr = 0;
    for (int i = 0; i < student->n_params; i++)
        if (student->params[i].grad && student->params[i].trainable)
            f->trainable[ntr++] = i;
    set_raw_tensor(&f->tensors[(*nt)++], "trainable", FS_WIRE_I32, f->trainable, ntr);
    return 0;
}

/* gacc sized for the student's gradient block and zeroed */
static int zero_gacc(fed_src *f, const fs_model *student, fs_diag *d)
{
    if (f->gacc_n < student->grad_floats) {
        free(f->gacc);
        f->gacc = malloc(student->grad_floats * sizeof(double));
        f->gacc_n = f->gacc ? student->grad_floats : 0;
        if (!f->gacc)
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    memset(f->gacc, 0, student->grad_floats * sizeof(double));
    return 0;
}

static int src_loss(void *self, fs_model *student, const fs_loss_req *q, fs_loss_sum *out,
                    fs_diag *d)
{
    fed_src *f = self;
    size_t nt = 0;
    int rc = sync_student(f, student, &nt, d);
    if (rc)
        return rc;
    /* the trainable set, as parameter indices */
    if ((rc = put_trainable(f, student, &nt, d)) != 0)
        return rc;
    fs_kv kv[MAX_ARGS];
    size_t nk = 0;
    put_int(kv, &nk, "objective", q->objective);
    put_float(kv, &nk, "temperature", q->temperature);
    put_int(kv, &nk, "mode", q->mode);
    put_int(kv, &nk, "want_grad", q->want_grad);
    put_sample(f, kv, &nk, &q->sample);
    if (q->want_grad && f->t.stream_bytes)
        put_int(kv, &nk, "stream", (int64_t)f->t.stream_bytes);
    fs_wire_msg req;
    make_req(&req, "loss", kv, nk, f, nt);
    f->loss_sum = 0;
    f->count = 0;
    f->student = student;
    f->prefix = "grad/";
    if (q->want_grad && (rc = zero_gacc(f, student, d)) != 0)
        return rc;
    if ((rc = exchange_retry(f, &req, reply_loss, reset_loss, d)) != 0)
        return rc;
    if (q->want_grad)
        for (size_t k = 0; k < student->grad_floats; k++)
            student->grad_block[k] += (float)f->gacc[k];
    out->loss_sum = f->loss_sum;
    out->count = f->count;
    return 0;
}

/* A "local" reply: what a loss reply carries (count = the site's n_k, loss_sum, tensors named
 * "delta/PARAM" instead of "grad/PARAM") plus the scalar loss_count. Parts go through reply_loss,
 * which adds them exactly as gradient parts. */
static int reply_local(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    fed_src *f = ud;
    if (r->type == FS_MSG_COMPUTE_PART)
        return reply_loss(ud, agent, r, d);
    const fs_kvlist *sc = r->type == FS_MSG_COMPUTE_HEAD ? &r->u.compute_head.scalars
                                                         : &r->u.compute_reply.scalars;
    double lc;
    if (fs_kv_get_f64(sc, "loss_count", &lc) != 0 || !(lc >= 0 && lc < 9e15))
        return fs_diag_set(d, FS_EPROTO, "agent %s: local-update reply without loss_count",
                           agent);
    int rc = reply_loss(ud, agent, r, d);
    if (rc == 0)
        f->loss_count += (int64_t)lc;
    return rc;
}

static void reset_local(fed_src *f)
{
    reset_loss(f);
    f->loss_count = 0;
}

static int src_local_update(void *self, fs_model *student, const fs_update_req *q,
                            fs_update_sum *out, fs_diag *d)
{
    fed_src *f = self;
    memset(out, 0, sizeof *out);
    size_t nt = 0;
    int rc = sync_student(f, student, &nt, d);
    if (rc || (rc = put_trainable(f, student, &nt, d)) != 0)
        return rc;
    fs_kv kv[MAX_ARGS];
    size_t nk = 0;
    put_int(kv, &nk, "objective", q->objective);
    put_float(kv, &nk, "temperature", q->temperature);
    put_int(kv, &nk, "mode", q->mode);
    put_sample(f, kv, &nk, &q->sample);
    put_int(kv, &nk, "steps", q->steps);
    put_float(kv, &nk, "lr", q->lr);
    put_float(kv, &nk, "momentum", q->momentum);
    put_float(kv, &nk, "weight_decay", q->weight_decay);
    if (f->t.stream_bytes)
        put_int(kv, &nk, "stream", (int64_t)f->t.stream_bytes);
    fs_wire_msg req;
    make_req(&req, "local", kv, nk, f, nt);
    f->loss_sum = 0;
    f->count = 0;
    f->loss_count = 0;
    f->student = student;
    f->prefix = "delta/";
    if ((rc = zero_gacc(f, student, d)) != 0)
        return rc;
    if ((rc = exchange_retry(f, &req, reply_local, reset_local, d)) != 0)
        return rc;
    for (int i = 0; i < student->n_params; i++) {
        fs_param *p = &student->params[i];
        if (!p->grad || !p->trainable)
            continue;
        const double *acc = f->gacc + (p->grad - student->grad_block);
        for (size_t k = 0; k < p->numel; k++)
            p->grad[k] = (float)acc[k];
    }
    out->n = f->count;
    out->loss_sum = f->loss_sum;
    out->loss_count = f->loss_count;
    return 0;
}

static int reply_moments(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    if (need_whole(agent, r, d))
        return FS_EPROTO;
    fed_src *f = ud;
    const fs_wire_tensor *s = find_tensor(r, "sum"), *q = find_tensor(r, "sumsq"),
                         *c = find_tensor(r, "count");
    if (!s || !q || !c || s->dtype != FS_WIRE_F64 || q->dtype != FS_WIRE_F64 ||
        c->dtype != FS_WIRE_I64 || tensor_numel(s) != (int64_t)f->n_channels ||
        tensor_numel(q) != (int64_t)f->n_channels || tensor_numel(c) != f->n_nodes)
        return fs_diag_set(d, FS_EPROTO, "agent %s: malformed moments reply", agent);
    const double *sv = s->data, *qv = q->data;
    const int64_t *cv = c->data;
    for (size_t k = 0; k < f->n_channels; k++) {
        f->sum[k] += sv[k];
        f->sumsq[k] += qv[k];
    }
    for (int k = 0; k < f->n_nodes; k++)
        f->cnt[k] += cv[k];
    f->count += (int64_t)r->u.compute_reply.count;
    return 0;
}

static int nodes_args(fs_kv *kv, size_t *nk, double **buf, const int *nodes, int n, fs_diag *d)
{
    if (n < 0 || n > 1024)
        return fs_diag_set(d, FS_EINVAL, "%d nodes: at most 1024 per request", n);
    *buf = malloc((size_t)(n ? n : 1) * sizeof(double));
    if (!*buf)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        (*buf)[i] = nodes[i];
    put_nums(kv, nk, "nodes", *buf, (size_t)n);
    return 0;
}

static int src_moments(void *self, fs_model *student, const int *nodes, int n_nodes, double *sum,
                       double *sumsq, int64_t *count, fs_diag *d)
{
    fed_src *f = self;
    size_t nt = 0;
    int rc = sync_student(f, student, &nt, d);
    if (rc)
        return rc;
    size_t channels = 0;
    for (int i = 0; i < n_nodes; i++) {
        const fs_node *nd = &student->nodes[nodes[i]];
        channels += (size_t)(nd->in0 >= 0 ? student->nodes[nd->in0].C : student->arch.in_c);
    }
    fs_kv kv[MAX_ARGS];
    size_t nk = 0;
    double *nb = NULL;
    if ((rc = nodes_args(kv, &nk, &nb, nodes, n_nodes, d)) != 0)
        return rc;
    memset(sum, 0, channels * sizeof(double));
    memset(sumsq, 0, channels * sizeof(double));
    memset(count, 0, (size_t)n_nodes * sizeof(int64_t));
    f->sum = sum;
    f->sumsq = sumsq;
    f->cnt = count;
    f->n_channels = channels;
    f->n_nodes = n_nodes;
    f->count = 0;
    fs_wire_msg req;
    make_req(&req, "moments", kv, nk, f, nt);
    rc = exchange(f, &req, reply_moments, d);
    free(nb);
    return rc;
}

static int reply_hist(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    if (need_whole(agent, r, d))
        return FS_EPROTO;
    fed_src *f = ud;
    const fs_wire_tensor *c = find_tensor(r, "counts");
    if (!c || c->dtype != FS_WIRE_I64 || tensor_numel(c) != (int64_t)f->n_hist)
        return fs_diag_set(d, FS_EPROTO, "agent %s: malformed histogram reply", agent);
    const int64_t *cv = c->data;
    for (size_t k = 0; k < f->n_hist; k++)
        f->hist[k] += cv[k];
    f->count += (int64_t)r->u.compute_reply.count;
    return 0;
}

static int src_histogram(void *self, fs_model *student, const int *nodes, int n_nodes,
                         const float *lo, const float *hi, int bins, int64_t *counts, fs_diag *d)
{
    fed_src *f = self;
    size_t nt = 0;
    int rc = sync_student(f, student, &nt, d);
    if (rc)
        return rc;
    fs_kv kv[MAX_ARGS];
    size_t nk = 0;
    double *nb = NULL, *lb = malloc((size_t)(n_nodes ? n_nodes : 1) * 2 * sizeof(double));
    if (!lb)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    if ((rc = nodes_args(kv, &nk, &nb, nodes, n_nodes, d)) != 0) {
        free(lb);
        return rc;
    }
    for (int i = 0; i < n_nodes; i++) {
        lb[i] = lo[i];
        lb[n_nodes + i] = hi[i];
    }
    put_nums(kv, &nk, "lo", lb, (size_t)n_nodes);
    put_nums(kv, &nk, "hi", lb + n_nodes, (size_t)n_nodes);
    put_int(kv, &nk, "bins", bins);
    f->hist = counts;
    f->n_hist = (size_t)n_nodes * (size_t)bins;
    memset(counts, 0, f->n_hist * sizeof(int64_t));
    f->count = 0;
    fs_wire_msg req;
    make_req(&req, "hist", kv, nk, f, nt);
    rc = exchange(f, &req, reply_hist, d);
    free(nb);
    free(lb);
    return rc;
}

static int reply_eval(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    if (need_whole(agent, r, d))
        return FS_EPROTO;
    fed_src *f = ud;
    const fs_kvlist *s = &r->u.compute_reply.scalars;
    double n, nl, c, a, l;
    if (fs_kv_get_f64(s, "n", &n) || fs_kv_get_f64(s, "n_labeled", &nl) ||
        fs_kv_get_f64(s, "correct", &c) || fs_kv_get_f64(s, "agree", &a) ||
        fs_kv_get_f64(s, "loss_sum", &l))
        return fs_diag_set(d, FS_EPROTO, "agent %s: malformed eval reply", agent);
    f->ev.n += (int64_t)n;
    f->ev.n_labeled += (int64_t)nl;
    f->ev.correct += (int64_t)c;
    f->ev.agree += (int64_t)a;
    f->ev.loss_sum += l;
    return 0;
}

static int src_evaluate(void *self, fs_model *student, fs_eval_sum *out, fs_diag *d)
{
    fed_src *f = self;
    size_t nt = 0;
    int rc = sync_student(f, student, &nt, d);
    if (rc)
        return rc;
    memset(&f->ev, 0, sizeof f->ev);
    fs_wire_msg req;
    memset(&req, 0, sizeof req);
    req.type = FS_MSG_COMPUTE_REQ;
    snprintf(req.u.compute_req.kind, sizeof req.u.compute_req.kind, "eval");
    req.tensors = f->tensors;
    req.n_tensors = nt;
    if ((rc = exchange(f, &req, reply_eval, d)) != 0)
        return rc;
    *out = f->ev;
    return 0;
}

static int64_t src_count(void *self)
{
    fed_src *f = self;
    return f->t.total_samples(f->t.ud);
}

static void src_free(void *self)
{
    fed_src *f = self;
    free(f->graph_key);
    free(f->sent);
    free(f->have);
    free(f->tensors);
    free(f->trainable);
    free(f->gacc);
    free(f);
}

static const fs_source_ops FED_OPS = {src_set_student, src_loss,  src_moments, src_histogram,
                                      src_evaluate,    src_count, src_free,    src_local_update};

int fs_fed_source(fs_source **out, const fs_fed_transport *t, fs_diag *d)
{
    *out = NULL;
    fed_src *f = calloc(1, sizeof *f);
    fs_source *s = calloc(1, sizeof *s);
    if (!f || !s) {
        free(f);
        free(s);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    f->t = *t;
    s->ops = &FED_OPS;
    s->self = f;
    *out = s;
    return 0;
}

void fs_fed_source_reset(fs_source *s)
{
    fed_src *f = s->self;
    free(f->graph_key);
    f->graph_key = NULL;
}

/* ---- agent side ---------------------------------------------------------------------------- */

struct fs_fed_agent {
    fs_local *L;
    fs_model *student;
    fs_wire_tensor *out;
    size_t cap_out;
    char (*names)[FS_WIRE_TENSOR_NAME_MAX + 1];
    fs_kv scalars[8];
    double *sum, *sumsq;
    int64_t *cnt, *hist;
};

int fs_fed_agent_create(fs_fed_agent **out, const fs_model *teacher, const fs_dataset *data,
                        int max_batch, uint64_t site_tag, fs_diag *d)
{
    *out = NULL;
    fs_fed_agent *a = calloc(1, sizeof *a);
    if (!a)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    int rc = fs_local_create(&a->L, teacher, data, max_batch, site_tag, d);
    if (rc) {
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

static void release_outputs(fs_fed_agent *a)
{
    free(a->sum);
    free(a->sumsq);
    free(a->cnt);
    free(a->hist);
    a->sum = a->sumsq = NULL;
    a->cnt = a->hist = NULL;
}

void fs_fed_agent_free(fs_fed_agent *a)
{
    if (!a)
        return;
    release_outputs(a);
    fs_local_free(a->L);
    fs_model_free(a->student);
    free(a->out);
    free(a->names);
    free(a);
}

/* Copies tensors named like parameters into the student (all must match exactly). */
static int apply_params(fs_model *m, const fs_wire_msg *req, int require_all, fs_diag *d)
{
    int applied = 0;
    for (size_t i = 0; i < req->n_tensors; i++) {
        const fs_wire_tensor *t = &req->tensors[i];
        if (!strcmp(t->name, "arch.json") || !strcmp(t->name, "adaptors") ||
            !strcmp(t->name, "trainable"))
            continue;
        fs_param *p = fs_model_param(m, t->name);
        if (!p)
            return fs_diag_set(d, FS_EPROTO, "tensor '%s' is not a parameter of the student",
                               t->name);
        int same = t->dtype == FS_WIRE_F32 && (int)t->ndim == p->ndim;
        for (int k = 0; same && k < p->ndim; k++)
            same = (int64_t)t->shape[k] == p->shape[k];
        if (!same || t->nbytes != p->numel * sizeof(float))
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': shape or dtype differs from the "
                               "student's parameter", t->name);
        memcpy(p->data, t->data, t->nbytes);
        applied++;
    }
    if (require_all && applied != m->n_params)
        return fs_diag_set(d, FS_EPROTO, "student announced with %d of its %d parameters", applied,
                           m->n_params);
    return 0;
}

static int serve_student(fs_fed_agent *a, const fs_wire_msg *req, fs_diag *d)
{
    const fs_wire_tensor *aj = find_tensor(req, "arch.json"), *ad = find_tensor(req, "adaptors");
    if (!aj || aj->dtype != FS_WIRE_U8 || (ad && ad->dtype != FS_WIRE_U8))
        return fs_diag_set(d, FS_EPROTO, "student request without its arch.json");
    fs_arch arch;
    int rc = fs_arch_from_json(&arch, aj->data, aj->nbytes, d);
    if (rc)
        return rc;
    fs_adaptor_spec specs[256];
    int ns = 0;
    const char *p = ad ? ad->data : "", *end = p + (ad ? ad->nbytes : 0);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char line[128];
        if (len >= sizeof line || ns == 256)
            return fs_diag_set(d, FS_EPROTO, "adaptor list too long");
        memcpy(line, p, len);
        line[len] = '\0';
        p += len + (nl ? 1 : 0);
        if (!len)
            continue;
        char pos[8], conv[80];
        if (sscanf(line, "%7s %79s", pos, conv) != 2 || (strcmp(pos, "pre") && strcmp(pos, "after")))
            return fs_diag_set(d, FS_EPROTO, "bad adaptor line '%s'", line);
        snprintf(specs[ns].conv, sizeof specs[ns].conv, "%s", conv);
        specs[ns].pos = !strcmp(pos, "pre") ? FS_ADAPTOR_PRE : FS_ADAPTOR_AFTER;
        ns++;
    }
    fs_model *m = NULL;
    if ((rc = fs_model_build(&m, &arch, specs, ns, d)) != 0)
        return rc;
    if ((rc = apply_params(m, req, 1, d)) != 0 || (rc = fs_local_set_student(a->L, m, d)) != 0) {
        fs_model_free(m);
        return rc;
    }
    fs_model_free(a->student);
    a->student = m;
    return 0;
}

static int ensure_out(fs_fed_agent *a, size_t n, fs_diag *d)
{
    if (n <= a->cap_out)
        return 0;
    fs_wire_tensor *t = realloc(a->out, n * sizeof *t);
    if (!t)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    a->out = t;
    void *nm = realloc(a->names, n * sizeof *a->names);
    if (!nm)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    a->names = nm;
    a->cap_out = n;
    return 0;
}

static int get_int(const fs_kvlist *args, const char *key, int64_t lo, int64_t hi, int64_t *v,
                   fs_diag *d)
{
    if (fs_kv_get_i64(args, key, v) != 0 || *v < lo || *v > hi)
        return fs_diag_set(d, FS_EPROTO, "argument '%s' missing or out of range", key);
    return 0;
}

static int get_nodes(const fs_fed_agent *a, const fs_kvlist *args, int *nodes, int max, int *n,
                     fs_diag *d)
{
    const fs_kv *kv = fs_kv_find(args, "nodes");
    if (!kv || kv->kind != FS_KV_NUMS || kv->n_nums == 0 || kv->n_nums > (size_t)max)
        return fs_diag_set(d, FS_EPROTO, "argument 'nodes' missing or too long");
    for (size_t i = 0; i < kv->n_nums; i++) {
        double v = kv->nums[i];
        if (!(v >= 0 && v < a->student->n_nodes) || v != (double)(int)v)
            return fs_diag_set(d, FS_EPROTO, "node %g is not in the student", v);
        nodes[i] = (int)v;
    }
    *n = (int)kv->n_nums;
    return 0;
}

/* Marks trainable exactly the parameters the request's "trainable" tensor lists. */
static int apply_trainable(fs_model *m, const fs_wire_msg *req, fs_diag *d)
{
    const fs_wire_tensor *tr = find_tensor(req, "trainable");
    if (!tr || tr->dtype != FS_WIRE_I32)
        return fs_diag_set(d, FS_EPROTO, "%s request without the trainable set",
                           req->u.compute_req.kind);
    fs_model_set_trainable(m, 0);
    const int32_t *ti = tr->data;
    for (int64_t k = 0; k < tensor_numel(tr); k++) {
        if (ti[k] < 0 || ti[k] >= m->n_params || !m->params[ti[k]].grad)
            return fs_diag_set(d, FS_EPROTO, "trainable index %d out of range", ti[k]);
        m->params[ti[k]].trainable = 1;
    }
    return 0;
}

static int get_float(const fs_kvlist *args, const char *key, double lo, double hi, double *v,
                     fs_diag *d)
{
    if (fs_kv_get_f64(args, key, v) != 0 || !(*v >= lo && *v <= hi))
        return fs_diag_set(d, FS_EPROTO, "argument '%s' missing or out of range", key);
    return 0;
}

/* The reply's tensors: PREFIX/NAME = the .grad of every trainable parameter (borrowed). */
static int grad_tensors(fs_fed_agent *a, fs_model *m, const char *prefix, fs_wire_msg *reply,
                        fs_diag *d)
{
    size_t n = 0;
    int rc = ensure_out(a, (size_t)m->n_params, d);
    if (rc)
        return rc;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        snprintf(a->names[n], sizeof a->names[n], "%s%s", prefix, p->name);
        set_f32_tensor(&a->out[n], a->names[n], p, p->grad);
        n++;
    }
    reply->tensors = a->out;
    reply->n_tensors = n;
    return 0;
}

static void reply_init(fs_wire_msg *r, uint64_t count)
{
    memset(r, 0, sizeof *r);
    r->type = FS_MSG_COMPUTE_REPLY;
    r->u.compute_reply.count = count;
}

static void scalar(fs_fed_agent *a, fs_wire_msg *r, const char *key, double v)
{
    size_t n = r->u.compute_reply.scalars.n;
    put_float(a->scalars, &n, key, v);
    r->u.compute_reply.scalars.items = a->scalars;
    r->u.compute_reply.scalars.n = n;
}

int fs_fed_serve(fs_fed_agent *a, const fs_wire_msg *req, fs_wire_msg *reply, fs_diag *d)
{
    const char *kind = req->u.compute_req.kind;
    const fs_kvlist *args = &req->u.compute_req.args;
    release_outputs(a);
    int rc;
    if (!strcmp(kind, "student")) {
        if ((rc = serve_student(a, req, d)) != 0)
            return rc;
        reply_init(reply, (uint64_t)fs_local_count(a->L));
        return 0;
    }
    if (!a->student)
        return fs_diag_set(d, FS_EPROTO, "'%s' request before any student was announced", kind);
    fs_model *m = a->student;
    if ((rc = apply_params(m, req, 0, d)) != 0)
        return rc;
    if (!strcmp(kind, "loss")) {
        int64_t obj, mode, want, batch, seed, step, pad, hflip, total;
        double T = 4;
        if ((rc = get_int(args, "objective", 1, 3, &obj, d)) || (rc = get_int(args, "mode", 0, 2, &mode, d)) ||
            (rc = get_int(args, "want_grad", 0, 1, &want, d)) ||
            (rc = get_int(args, "batch", 0, 1 << 20, &batch, d)) ||
            (rc = get_int(args, "seed", 0, INT64_MAX, &seed, d)) ||
            (rc = get_int(args, "step", 0, INT64_MAX, &step, d)) ||
            (rc = get_int(args, "pad", 0, 64, &pad, d)) || (rc = get_int(args, "hflip", 0, 1, &hflip, d)) ||
            (rc = get_int(args, "total_n", 1, INT64_MAX, &total, d)))
            return rc;
        if (fs_kv_get_f64(args, "temperature", &T) != 0 || !(T > 0 && T < 1000))
            T = 4;
        if ((rc = apply_trainable(m, req, d)) != 0)
            return rc;
        fs_loss_req q = {.objective = (fs_objective)obj, .temperature = (float)T,
                         .mode = (fs_mode)mode, .want_grad = (int)want,
                         .sample = {.batch = (int)batch, .seed = (uint64_t)seed, .step = step,
                                    .pad = (int)pad, .hflip = (int)hflip}};
        fs_loss_sum ls;
        fs_model_zero_grad(m);
        if ((rc = fs_local_loss(a->L, m, &q, total, &ls, d)) != 0)
            return rc;
        if (!isfinite(ls.loss_sum))
            return fs_diag_set(d, FS_EDIVERGED, "the loss is not finite at these weights "
                               "(training diverged)");
        reply_init(reply, (uint64_t)ls.count);
        scalar(a, reply, "loss_sum", ls.loss_sum);
        if (want)
            return grad_tensors(a, m, "grad/", reply, d);
        return 0;
    }
    if (!strcmp(kind, "local")) {
        /* FedAvg: E local SGD steps from the announced weights; the reply is this site's
           n_k * (w_after - w_before) per trainable parameter, its n_k, and the loss sum of its
           first step: sums and a count, the size of the trainable set whatever n_k is */
        int64_t obj, mode, batch, seed, step, pad, hflip, total, steps;
        double T = 4, lr, mom, wd;
        if ((rc = get_int(args, "objective", 1, 3, &obj, d)) ||
            (rc = get_int(args, "mode", 0, 2, &mode, d)) ||
            (rc = get_int(args, "batch", 0, 1 << 20, &batch, d)) ||
            (rc = get_int(args, "seed", 0, INT64_MAX, &seed, d)) ||
            (rc = get_int(args, "step", 0, INT64_MAX, &step, d)) ||
            (rc = get_int(args, "pad", 0, 64, &pad, d)) ||
            (rc = get_int(args, "hflip", 0, 1, &hflip, d)) ||
            (rc = get_int(args, "total_n", 1, INT64_MAX, &total, d)) ||
            (rc = get_int(args, "steps", 1, 1 << 20, &steps, d)) ||
            (rc = get_float(args, "lr", 0, 1e3, &lr, d)) ||
            (rc = get_float(args, "momentum", 0, 1, &mom, d)) ||
            (rc = get_float(args, "weight_decay", 0, 1e3, &wd, d)) ||
            (rc = apply_trainable(m, req, d)))
            return rc;
        if (fs_kv_get_f64(args, "temperature", &T) != 0 || !(T > 0 && T < 1000))
            T = 4;
        fs_update_req q = {.objective = (fs_objective)obj, .temperature = (float)T,
                           .mode = (fs_mode)mode,
                           .sample = {.batch = (int)batch, .seed = (uint64_t)seed, .step = step,
                                      .pad = (int)pad, .hflip = (int)hflip},
                           .steps = (int)steps, .lr = (float)lr, .momentum = (float)mom,
                           .weight_decay = (float)wd};
        fs_update_sum us;
        if ((rc = fs_local_update(a->L, m, &q, total, &us, d)) != 0)
            return rc;
        reply_init(reply, (uint64_t)us.n);
        scalar(a, reply, "loss_sum", us.loss_sum);
        scalar(a, reply, "loss_count", (double)us.loss_count);
        return grad_tensors(a, m, "delta/", reply, d);
    }
    int nodes[1024], nn = 0;
    if (!strcmp(kind, "moments")) {
        if ((rc = get_nodes(a, args, nodes, 1024, &nn, d)) != 0)
            return rc;
        size_t channels = 0;
        for (int i = 0; i < nn; i++) {
            const fs_node *nd = &m->nodes[nodes[i]];
            channels += (size_t)(nd->in0 >= 0 ? m->nodes[nd->in0].C : m->arch.in_c);
        }
        a->sum = malloc(channels * sizeof(double));
        a->sumsq = malloc(channels * sizeof(double));
        a->cnt = malloc((size_t)nn * sizeof(int64_t));
        if (!a->sum || !a->sumsq || !a->cnt || (rc = ensure_out(a, 3, d)) != 0)
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
        if ((rc = fs_local_moments(a->L, m, nodes, nn, a->sum, a->sumsq, a->cnt, d)) != 0)
            return rc;
        reply_init(reply, (uint64_t)fs_local_count(a->L));
        set_raw_tensor(&a->out[0], "sum", FS_WIRE_F64, a->sum, channels);
        set_raw_tensor(&a->out[1], "sumsq", FS_WIRE_F64, a->sumsq, channels);
        set_raw_tensor(&a->out[2], "count", FS_WIRE_I64, a->cnt, (size_t)nn);
        reply->tensors = a->out;
        reply->n_tensors = 3;
        return 0;
    }
    if (!strcmp(kind, "hist")) {
        int64_t bins;
        if ((rc = get_nodes(a, args, nodes, 1024, &nn, d)) != 0 ||
            (rc = get_int(args, "bins", 1, 1 << 16, &bins, d)) != 0)
            return rc;
        const fs_kv *lo = fs_kv_find(args, "lo"), *hi = fs_kv_find(args, "hi");
        if (!lo || !hi || lo->kind != FS_KV_NUMS || hi->kind != FS_KV_NUMS ||
            lo->n_nums != (size_t)nn || hi->n_nums != (size_t)nn)
            return fs_diag_set(d, FS_EPROTO, "histogram request without lo/hi for every node");
        float lof[1024], hif[1024];
        for (int i = 0; i < nn; i++) {
            lof[i] = (float)lo->nums[i];
            hif[i] = (float)hi->nums[i];
        }
        a->hist = malloc((size_t)nn * (size_t)bins * sizeof(int64_t));
        if (!a->hist || (rc = ensure_out(a, 1, d)) != 0)
            return fs_diag_set(d, FS_ENOMEM, "out of memory");
        if ((rc = fs_local_histogram(a->L, m, nodes, nn, lof, hif, (int)bins, a->hist, d)) != 0)
            return rc;
        reply_init(reply, (uint64_t)fs_local_count(a->L));
        set_raw_tensor(&a->out[0], "counts", FS_WIRE_I64, a->hist, (size_t)nn * (size_t)bins);
        reply->tensors = a->out;
        reply->n_tensors = 1;
        return 0;
    }
    if (!strcmp(kind, "eval")) {
        fs_eval_sum ev;
        if ((rc = fs_local_evaluate(a->L, m, &ev, d)) != 0)
            return rc;
        reply_init(reply, (uint64_t)ev.n);
        scalar(a, reply, "n", (double)ev.n);
        scalar(a, reply, "n_labeled", (double)ev.n_labeled);
        scalar(a, reply, "correct", (double)ev.correct);
        scalar(a, reply, "agree", (double)ev.agree);
        scalar(a, reply, "loss_sum", ev.loss_sum);
        return 0;
    }
    return fs_diag_set(d, FS_EPROTO, "unknown compute kind '%s'", kind);
}

/* ---- replies in flight (transports) and streamed sending (agents) ---------------------------- */

void fs_fed_inflight_reset(fs_fed_inflight *st)
{
    fs_wire_stream_rx_free(&st->rx);
    st->state = 0;
    st->touched = 0;
}

/* Prefixes d's message with the agent's name (the caller logs it as the reason it was dropped). */
static int agent_err(fs_diag *d, int rc, const char *agent)
{
    char msg[sizeof d->msg];
    snprintf(msg, sizeof msg, "%s", d->msg);
    return fs_diag_set(d, rc, "agent %s: %s", agent, msg);
}

int fs_fed_feed(fs_fed_inflight *st, const char *agent, const fs_wire_msg *m, fs_fed_reply_fn fn,
                void *cb_ud, uint64_t max_total, fs_diag *d)
{
    int rc;
    switch (m->type) {
    case FS_MSG_COMPUTE_REPLY:
        if (st->state != 0)
            return fs_diag_set(d, FS_EPROTO, "agent %s: COMPUTE_REPLY after the start of a "
                               "streamed reply", agent);
        if ((rc = fn(cb_ud, agent, m, d)) != 0)
            return rc;
        st->state = 2;
        return 0;
    case FS_MSG_COMPUTE_HEAD:
        if (st->state != 0)
            return fs_diag_set(d, FS_EPROTO, "agent %s: a second reply (COMPUTE_HEAD) in one "
                               "round", agent);
        if ((rc = fs_wire_stream_rx_begin(&st->rx, m, max_total, d)) != 0)
            return agent_err(d, rc, agent);
        if ((rc = fn(cb_ud, agent, m, d)) != 0) {
            fs_wire_stream_rx_free(&st->rx);
            return rc;
        }
        st->touched = 1;   /* its count and scalars are in the sums */
        st->state = 1;
        break;
    case FS_MSG_COMPUTE_PART:
        if (st->state != 1)
            return fs_diag_set(d, FS_EPROTO, "agent %s: COMPUTE_PART %u without a COMPUTE_HEAD "
                               "before it", agent, m->u.compute_part.part);
        if ((rc = fs_wire_stream_rx_part(&st->rx, m, d)) != 0)
            return agent_err(d, rc, agent);
        if ((rc = fn(cb_ud, agent, m, d)) != 0)
            return rc;
        break;
    default:
        return fs_diag_set(d, FS_EPROTO, "agent %s: %s is not a reply", agent,
                           fs_msg_type_name(m->type));
    }
    if (!fs_wire_stream_rx_done(&st->rx))
        return FS_FED_MORE;
    fs_wire_stream_rx_free(&st->rx);
    st->state = 2;
    return 0;
}

/* A part waits for room in the link's queue: the coordinator drains every agent's parts in
 * turn, so a full queue means "later", not "gone". */
static int send_patiently(fs_link_client *link, const fs_wire_msg *m, fs_diag *d)
{
    int rc = fs_link_client_send(link, m, d);
    for (int k = 0; rc == FS_ETIMEDOUT && k < 12; k++)
        rc = fs_link_client_send(link, m, d);
    return rc;
}

int fs_fed_send_reply(fs_link_client *link, const fs_wire_msg *req, const fs_wire_msg *reply,
                      size_t chunk, fs_diag *d)
{
    int64_t part = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < reply->n_tensors; i++)
        bytes += reply->tensors[i].nbytes;
    if (req->type != FS_MSG_COMPUTE_REQ ||
        fs_kv_get_i64(&req->u.compute_req.args, "stream", &part) != 0 || part <= 0 ||
        bytes <= (uint64_t)part)
        return fs_link_client_send(link, reply, d);
    /* a part of at least 4 KiB (per-message costs) and at most 64 MiB (whatever was asked) */
    if (part < 4096)
        part = 4096;
    if (part > ((int64_t)64 << 20))
        part = (int64_t)64 << 20;
    fs_wire_stream_tx tx;
    fs_wire_msg head, pm;
    int rc = fs_wire_stream_tx_init(&tx, reply, (size_t)part, chunk ? chunk : FS_WIRE_CHUNK_DEFAULT,
                                    &head, d);
    if (rc || (rc = send_patiently(link, &head, d)) != 0)
        return rc;
    while (fs_wire_stream_tx_next(&tx, &pm))
        if ((rc = send_patiently(link, &pm, d)) != 0)
            return rc;
    return 0;
}

/* ---- broadcast from one shared copy (coordinator) -------------------------------------------- */

typedef struct {
    atomic_size_t refs;
    void *block;
} req_snap;

static void snap_unref(void *arg)
{
    req_snap *s = arg;
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        free(s->block);
        free(s);
    }
}

int fs_fed_broadcast(fs_link_server *link, const fs_link_peer *peers, size_t n,
                     const fs_wire_msg *req, int *rc, fs_diag *d)
{
    size_t total = 0;
    for (size_t i = 0; i < req->n_tensors; i++)
        total += req->tensors[i].nbytes;
    req_snap *snap = calloc(1, sizeof *snap);
    fs_wire_tensor *tv = calloc(req->n_tensors ? req->n_tensors : 1, sizeof *tv);
    if (snap)
        snap->block = malloc(total ? total : 1);
    if (!snap || !snap->block || !tv) {
        if (snap)
            free(snap->block);
        free(snap);
        free(tv);
        return fs_diag_set(d, FS_ENOMEM, "broadcast: out of memory (%zu bytes)", total);
    }
    size_t off = 0;
    for (size_t i = 0; i < req->n_tensors; i++) {
        tv[i] = req->tensors[i];
        tv[i].data = (uint8_t *)snap->block + off;
        memcpy(tv[i].data, req->tensors[i].data, req->tensors[i].nbytes);
        off += req->tensors[i].nbytes;
    }
    fs_wire_msg m = *req;
    m.tensors = tv;
    atomic_init(&snap->refs, 1);
    for (size_t i = 0; i < n; i++) {
        fs_diag e = {0};
        atomic_fetch_add(&snap->refs, 1);   /* released exactly once, also on failure */
        rc[i] = fs_link_server_send_zc(link, &peers[i], &m, snap_unref, snap, &e);
    }
    free(tv);
    snap_unref(snap);
    return 0;
}
