/*
 * wire.c — encoder and strict decoder of the fedslim wire format (docs/protocol.md).
 * The decoder trusts nothing: frame sizes are checked before parsing, the MessagePack header goes
 * through a structural pre-check (msgcheck.c) before msgpack_unpack_next so that declared counts can
 * never drive allocations, then a field-table walk checks types, ranges and duplicates. Tensor
 * buffers are sized from bytes actually present, never from a declared size.
 * It does not know about sockets, sessions or models.
 */
#include <math.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fs_wire.h"
#include "protocol_internal.h"

_Static_assert(FS_WIRE_DIGEST_BYTES == crypto_generichash_BYTES, "BLAKE2b-256 digests");

/* ------------------------------------------------------------------------------------------ */
/* small shared helpers                                                                       */

static const char *const TYPE_NAMES[FS_MSG_TYPE_MAX + 1] = {
    [FS_MSG_HELLO] = "HELLO",
    [FS_MSG_WELCOME] = "WELCOME",
    [FS_MSG_HEARTBEAT] = "HEARTBEAT",
    [FS_MSG_JOB_OFFER] = "JOB_OFFER",
    [FS_MSG_JOB_ACCEPT] = "JOB_ACCEPT",
    [FS_MSG_JOB_DECLINE] = "JOB_DECLINE",
    [FS_MSG_MODEL_REQ] = "MODEL_REQ",
    [FS_MSG_MODEL_CHUNK] = "MODEL_CHUNK",
    [FS_MSG_COMPUTE_REQ] = "COMPUTE_REQ",
    [FS_MSG_COMPUTE_REPLY] = "COMPUTE_REPLY",
    [FS_MSG_ERROR] = "ERROR",
    [FS_MSG_BYE] = "BYE",
    [FS_MSG_COMPUTE_HEAD] = "COMPUTE_HEAD",
    [FS_MSG_COMPUTE_PART] = "COMPUTE_PART",
};

const char *fs_msg_type_name(int type)
{
    if (type < 1 || type > FS_MSG_TYPE_MAX)
        return "?";
    return TYPE_NAMES[type];
}

static const char *const DTYPE_NAMES[] = {"f32", "f64", "i32", "i64", "u8"};
static const size_t DTYPE_SIZES[] = {4, 8, 4, 8, 1};
#define N_DTYPES (sizeof DTYPE_NAMES / sizeof DTYPE_NAMES[0])

size_t fs_wire_dtype_size(fs_wire_dtype t)
{
    return (unsigned)t < N_DTYPES ? DTYPE_SIZES[t] : 0;
}

const char *fs_wire_dtype_name(fs_wire_dtype t)
{
    return (unsigned)t < N_DTYPES ? DTYPE_NAMES[t] : "?";
}

bool fs_wire_name_ok(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Tensor names also allow '/' and ':' (framework names like "layer1.0/conv:0"). */
static bool tensor_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > FS_WIRE_TENSOR_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '/' || c == ':'))
            return false;
    }
    return true;
}

/* Free text: printable ASCII only (it ends up in logs). */
static bool text_ok(const char *s, size_t len, size_t max)
{
    if (len > max)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

void fs_wire_sample(const void *data, size_t len, size_t max_bytes, char *out, size_t out_len)
{
    const unsigned char *p = data;
    size_t o = 0;
    if (out_len == 0)
        return;
    for (size_t i = 0; i < len && i < max_bytes; i++) {
        char tmp[5];
        int k;
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\' && p[i] != '"')
            k = snprintf(tmp, sizeof tmp, "%c", p[i]);
        else
            k = snprintf(tmp, sizeof tmp, "\\x%02x", p[i]);
        if (o + (size_t)k + 1 > out_len)
            break;
        memcpy(out + o, tmp, (size_t)k);
        o += (size_t)k;
    }
    out[o] = '\0';
}

void fs_wire_digest(const void *data, size_t len, uint8_t out[FS_WIRE_DIGEST_BYTES])
{
    crypto_generichash(out, FS_WIRE_DIGEST_BYTES, data, len, NULL, 0);
}

void fs_wire_digest_hex(const uint8_t digest[FS_WIRE_DIGEST_BYTES], char out[65])
{
    sodium_bin2hex(out, 65, digest, FS_WIRE_DIGEST_BYTES);
}

fs_wire_limits fs_wire_limits_default(void)
{
    fs_wire_limits l = {
        .max_header_bytes = 64 * 1024,
        .max_frames = 1 + 1024,
        .max_chunk_bytes = (size_t)4 << 20,
        .max_chunks = 1024,
        .max_tensor_bytes = (size_t)1 << 30,
        .max_message_bytes = ((size_t)1 << 30) + 64 * 1024,
        .max_depth = 8,
        /* SYSTEMS c2 suggests 4096; a descriptor costs ~16 objects and a ResNet-50 has ~320
         * tensors, so 16384 (zone <= 16384 * 48 bytes = 768 KiB) leaves room. */
        .max_objects = 16384,
    };
    return l;
}

/* ------------------------------------------------------------------------------------------ */
/* kv lookups                                                                                 */

const fs_kv *fs_kv_find(const fs_kvlist *l, const char *key)
{
    for (size_t i = 0; l && i < l->n; i++)
        if (!strcmp(l->items[i].key, key))
            return &l->items[i];
    return NULL;
}

int fs_kv_get_f64(const fs_kvlist *l, const char *key, double *out)
{
    const fs_kv *kv = fs_kv_find(l, key);
    if (!kv || (kv->kind != FS_KV_FLOAT && kv->kind != FS_KV_INT))
        return FS_ENOTFOUND;
    *out = kv->kind == FS_KV_FLOAT ? kv->f : (double)kv->i;
    return 0;
}

int fs_kv_get_i64(const fs_kvlist *l, const char *key, int64_t *out)
{
    const fs_kv *kv = fs_kv_find(l, key);
    if (!kv || kv->kind != FS_KV_INT)
        return FS_ENOTFOUND;
    *out = kv->i;
    return 0;
}

const char *fs_kv_get_str(const fs_kvlist *l, const char *key)
{
    const fs_kv *kv = fs_kv_find(l, key);
    return kv && kv->kind == FS_KV_STR ? kv->s : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* encoder                                                                                    */

#define PK(x)                                                                                  \
    do {                                                                                       \
        if ((x) != 0)                                                                          \
            goto nomem;                                                                        \
    } while (0)

static int pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str_with_body(pk, s, n);
}

static int pk_key(msgpack_packer *pk, const char *k)
{
    return pk_str(pk, k);
}

static int check_kvlist(const fs_kvlist *l, const char *what, bool floats_only, fs_diag *d)
{
    for (size_t i = 0; i < l->n; i++) {
        const fs_kv *kv = &l->items[i];
        if (!fs_wire_name_ok(kv->key, strlen(kv->key), FS_WIRE_NAME_MAX))
            return fs_diag_set(d, FS_EINVAL, "%s: bad key '%s'", what, kv->key);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(l->items[j].key, kv->key))
                return fs_diag_set(d, FS_EINVAL, "%s: duplicate key '%s'", what, kv->key);
        if (floats_only && kv->kind != FS_KV_FLOAT && kv->kind != FS_KV_INT)
            return fs_diag_set(d, FS_EINVAL, "%s.%s: must be a number", what, kv->key);
        switch (kv->kind) {
        case FS_KV_INT:
            break;
        case FS_KV_FLOAT:
            if (!isfinite(kv->f))
                return fs_diag_set(d, FS_EINVAL, "%s.%s: not a finite number", what, kv->key);
            break;
        case FS_KV_STR:
            if (!kv->s || !text_ok(kv->s, strlen(kv->s), FS_WIRE_TEXT_MAX))
                return fs_diag_set(d, FS_EINVAL, "%s.%s: string missing, too long or not printable",
                                   what, kv->key);
            break;
        case FS_KV_NUMS:
            if (kv->n_nums && !kv->nums)
                return fs_diag_set(d, FS_EINVAL, "%s.%s: no numbers", what, kv->key);
            for (size_t j = 0; j < kv->n_nums; j++)
                if (!isfinite(kv->nums[j]))
                    return fs_diag_set(d, FS_EINVAL, "%s.%s[%zu]: not finite", what, kv->key, j);
            break;
        default:
            return fs_diag_set(d, FS_EINVAL, "%s.%s: unknown kind %d", what, kv->key, kv->kind);
        }
    }
    return 0;
}

static int pk_kvlist(msgpack_packer *pk, const fs_kvlist *l, bool as_float)
{
    if (msgpack_pack_map(pk, l->n))
        return -1;
    for (size_t i = 0; i < l->n; i++) {
        const fs_kv *kv = &l->items[i];
        if (pk_key(pk, kv->key))
            return -1;
        int rc = 0;
        switch (kv->kind) {
        case FS_KV_INT:
            rc = as_float ? msgpack_pack_double(pk, (double)kv->i) : msgpack_pack_int64(pk, kv->i);
            break;
        case FS_KV_FLOAT:
            rc = msgpack_pack_double(pk, kv->f);
            break;
        case FS_KV_STR:
            rc = pk_str(pk, kv->s);
            break;
        case FS_KV_NUMS:
            rc = msgpack_pack_array(pk, kv->n_nums);
            for (size_t j = 0; rc == 0 && j < kv->n_nums; j++)
                rc = msgpack_pack_double(pk, kv->nums[j]);
            break;
        }
        if (rc)
            return -1;
    }
    return 0;
}

static int tensor_numel_bytes(const fs_wire_tensor *t, size_t *out)
{
    size_t es = fs_wire_dtype_size(t->dtype);
    size_t n = 1;
    if (es == 0 || t->ndim > FS_WIRE_MAX_DIMS)
        return FS_EFORMAT;
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0 || t->shape[i] > SIZE_MAX || fs_mul_size(n, (size_t)t->shape[i], &n))
            return FS_EFORMAT;
    }
    return fs_mul_size(n, es, out);
}

static int check_tensors(const fs_wire_msg *m, size_t chunk, size_t *n_frames, fs_diag *d)
{
    size_t frames = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fs_wire_tensor *t = &m->tensors[i];
        size_t nb;
        if (!tensor_name_ok(t->name, strlen(t->name)))
            return fs_diag_set(d, FS_EINVAL, "tensor %zu: bad name '%s'", i, t->name);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->tensors[j].name, t->name))
                return fs_diag_set(d, FS_EINVAL, "tensor '%s': duplicate name", t->name);
        if (tensor_numel_bytes(t, &nb) != 0)
            return fs_diag_set(d, FS_EINVAL, "tensor '%s': bad dtype or shape", t->name);
        if (nb != t->nbytes || !t->data)
            return fs_diag_set(d, FS_EINVAL, "tensor '%s': %zu bytes given, shape needs %zu",
                               t->name, t->nbytes, nb);
        frames += (nb + chunk - 1) / chunk;
    }
    *n_frames = frames;
    return 0;
}

static int pk_tensor_descs(msgpack_packer *pk, const fs_wire_msg *m, size_t chunk,
                           fs_wire_buf *frames, size_t n_raw)
{
    if (msgpack_pack_array(pk, n_raw))
        return -1;
    size_t f = 1;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fs_wire_tensor *t = &m->tensors[i];
        for (size_t off = 0; off < t->nbytes; off += chunk, f++) {
            size_t len = t->nbytes - off < chunk ? t->nbytes - off : chunk;
            if (msgpack_pack_map(pk, 6) || pk_key(pk, "name") || pk_str(pk, t->name) ||
                pk_key(pk, "dtype") || pk_str(pk, fs_wire_dtype_name(t->dtype)) ||
                pk_key(pk, "shape") || msgpack_pack_array(pk, t->ndim))
                return -1;
            for (uint32_t k = 0; k < t->ndim; k++)
                if (msgpack_pack_uint64(pk, t->shape[k]))
                    return -1;
            if (pk_key(pk, "offset") || msgpack_pack_uint64(pk, off) || pk_key(pk, "len") ||
                msgpack_pack_uint64(pk, len) || pk_key(pk, "frame") || msgpack_pack_uint64(pk, f))
                return -1;
            frames[f].data = (const uint8_t *)t->data + off;
            frames[f].len = len;
        }
    }
    return 0;
}

static int check_name_field(const char *s, const char *field, bool allow_empty, fs_diag *d)
{
    size_t n = strnlen(s, FS_WIRE_NAME_MAX + 1);
    if (n == 0 && allow_empty)
        return 0;
    if (!fs_wire_name_ok(s, n, FS_WIRE_NAME_MAX))
        return fs_diag_set(d, FS_EINVAL, "%s: '%.*s' is not 1-%d chars of [A-Za-z0-9._-]", field,
                           (int)(n > 64 ? 64 : n), s, FS_WIRE_NAME_MAX);
    return 0;
}

/* `cap` = size of the char array holding s (a missing NUL is caught by strnlen). */
static int check_text_field(const char *s, size_t cap, const char *field, fs_diag *d)
{
    size_t n = strnlen(s, cap);
    if (n == cap || !text_ok(s, n, FS_WIRE_TEXT_MAX))
        return fs_diag_set(d, FS_EINVAL, "%s: longer than %zu chars or not printable ASCII", field,
                           cap - 1);
    return 0;
}

/* ---- COMPUTE_HEAD / COMPUTE_PART (streamed replies, docs/protocol.md §4b) ---- */

static int check_head(const fs_wire_msg *m, fs_diag *d)
{
    int rc = check_kvlist(&m->u.compute_head.scalars, "compute_head.scalars", true, d);
    if (rc)
        return rc;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fs_wire_tensor *t = &m->tensors[i];
        size_t nb;
        if (!tensor_name_ok(t->name, strlen(t->name)))
            return fs_diag_set(d, FS_EINVAL, "compute_head: tensor %zu: bad name '%s'", i,
                               t->name);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->tensors[j].name, t->name))
                return fs_diag_set(d, FS_EINVAL, "compute_head: tensor '%s': duplicate name",
                                   t->name);
        if (tensor_numel_bytes(t, &nb) != 0)
            return fs_diag_set(d, FS_EINVAL, "compute_head: tensor '%s': bad dtype or shape",
                               t->name);
    }
    if ((m->n_tensors == 0) != (m->u.compute_head.parts == 0))
        return fs_diag_set(d, FS_EINVAL, "compute_head: %u parts for %zu tensors",
                           m->u.compute_head.parts, m->n_tensors);
    return 0;
}

static int check_part(const fs_wire_msg *m, size_t chunk, size_t *n_raw, fs_diag *d)
{
    const typeof(m->u.compute_part) *p = &m->u.compute_part;
    if (p->n_slices == 0 || !p->slices)
        return fs_diag_set(d, FS_EINVAL, "compute_part: no slices");
    for (size_t i = 0; i < p->n_slices; i++) {
        const fs_wire_slice *s = &p->slices[i];
        if (!tensor_name_ok(s->name, strnlen(s->name, sizeof s->name)))
            return fs_diag_set(d, FS_EINVAL, "compute_part: slice %zu: bad name", i);
        if (s->len == 0 || s->len > chunk || !s->data || s->offset > UINT64_MAX - s->len)
            return fs_diag_set(d, FS_EINVAL, "compute_part: slice %zu ('%s'): len %zu not in "
                               "1..%zu", i, s->name, s->len, chunk);
    }
    *n_raw = p->n_slices;
    return 0;
}

static int pk_head(msgpack_packer *pk, const fs_wire_msg *m)
{
    PK(msgpack_pack_map(pk, 4));
    PK(pk_key(pk, "count"));
    PK(msgpack_pack_uint64(pk, m->u.compute_head.count));
    PK(pk_key(pk, "scalars"));
    PK(pk_kvlist(pk, &m->u.compute_head.scalars, true));
    PK(pk_key(pk, "parts"));
    PK(msgpack_pack_uint64(pk, m->u.compute_head.parts));
    PK(pk_key(pk, "tensors"));
    PK(msgpack_pack_array(pk, m->n_tensors));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fs_wire_tensor *t = &m->tensors[i];
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "name"));
        PK(pk_str(pk, t->name));
        PK(pk_key(pk, "dtype"));
        PK(pk_str(pk, fs_wire_dtype_name(t->dtype)));
        PK(pk_key(pk, "shape"));
        PK(msgpack_pack_array(pk, t->ndim));
        for (uint32_t k = 0; k < t->ndim; k++)
            PK(msgpack_pack_uint64(pk, t->shape[k]));
    }
    return 0;
nomem:
    return -1;
}

static int pk_part(msgpack_packer *pk, const fs_wire_msg *m, fs_wire_buf *frames)
{
    const typeof(m->u.compute_part) *p = &m->u.compute_part;
    PK(msgpack_pack_map(pk, 2));
    PK(pk_key(pk, "part"));
    PK(msgpack_pack_uint64(pk, p->part));
    PK(pk_key(pk, "slices"));
    PK(msgpack_pack_array(pk, p->n_slices));
    for (size_t i = 0; i < p->n_slices; i++) {
        const fs_wire_slice *s = &p->slices[i];
        PK(msgpack_pack_map(pk, 4));
        PK(pk_key(pk, "name"));
        PK(pk_str(pk, s->name));
        PK(pk_key(pk, "offset"));
        PK(msgpack_pack_uint64(pk, s->offset));
        PK(pk_key(pk, "len"));
        PK(msgpack_pack_uint64(pk, s->len));
        PK(pk_key(pk, "frame"));
        PK(msgpack_pack_uint64(pk, i + 1));
        frames[i + 1].data = s->data;
        frames[i + 1].len = s->len;
    }
    return 0;
nomem:
    return -1;
}

static int check_body(const fs_wire_msg *m, size_t chunk, size_t *n_raw, fs_diag *d)
{
    int rc;
    *n_raw = 0;
    if ((rc = check_name_field(m->job, "job", true, d)))
        return rc;
    switch (m->type) {
    case FS_MSG_HELLO:
        if ((rc = check_text_field(m->u.hello.version, sizeof m->u.hello.version,
                                   "hello.version", d)) ||
            (rc = check_name_field(m->u.hello.site, "hello.site", false, d)))
            return rc;
        if (m->u.hello.n_caps > 64 || (m->u.hello.n_caps && !m->u.hello.caps))
            return fs_diag_set(d, FS_EINVAL, "hello.caps: more than 64 or missing");
        for (size_t i = 0; i < m->u.hello.n_caps; i++)
            if ((rc = check_name_field(m->u.hello.caps[i], "hello.caps[]", false, d)))
                return rc;
        if (m->u.hello.n_classes > 4096 || (m->u.hello.n_classes && !m->u.hello.classes))
            return fs_diag_set(d, FS_EINVAL, "hello.data.classes: more than 4096 or missing");
        break;
    case FS_MSG_WELCOME:
        if ((rc = check_name_field(m->u.welcome.agent, "welcome.agent", false, d)))
            return rc;
        break;
    case FS_MSG_HEARTBEAT:
        if (!isfinite(m->u.heartbeat.progress))
            return fs_diag_set(d, FS_EINVAL, "heartbeat.progress: not finite");
        break;
    case FS_MSG_JOB_OFFER:
        if ((rc = check_kvlist(&m->u.job_offer.config, "job_offer.config", false, d)))
            return rc;
        break;
    case FS_MSG_JOB_ACCEPT:
    case FS_MSG_JOB_DECLINE:
        if ((rc = check_text_field(m->u.job_reply.reason, sizeof m->u.job_reply.reason, "reason",
                                   d)))
            return rc;
        break;
    case FS_MSG_MODEL_REQ:
        break;
    case FS_MSG_MODEL_CHUNK: {
        const typeof(m->u.model_chunk) *c = &m->u.model_chunk;
        if (c->len == 0 || !c->data || c->len > chunk)
            return fs_diag_set(d, FS_EINVAL, "model_chunk: len %zu not in 1..%zu", c->len, chunk);
        if (c->offset > c->total || c->len > c->total - c->offset)
            return fs_diag_set(d, FS_EINVAL, "model_chunk: [%llu, +%zu) outside total %llu",
                               (unsigned long long)c->offset, c->len,
                               (unsigned long long)c->total);
        *n_raw = 1;
        break;
    }
    case FS_MSG_COMPUTE_REQ:
        if ((rc = check_name_field(m->u.compute_req.kind, "compute_req.kind", false, d)) ||
            (rc = check_kvlist(&m->u.compute_req.args, "compute_req.args", false, d)) ||
            (rc = check_tensors(m, chunk, n_raw, d)))
            return rc;
        break;
    case FS_MSG_COMPUTE_REPLY:
        if ((rc = check_kvlist(&m->u.compute_reply.scalars, "compute_reply.scalars", true, d)) ||
            (rc = check_tensors(m, chunk, n_raw, d)))
            return rc;
        break;
    case FS_MSG_ERROR:
        if ((rc = check_name_field(m->u.error.code, "error.code", false, d)) ||
            (rc = check_text_field(m->u.error.text, sizeof m->u.error.text, "error.text", d)))
            return rc;
        break;
    case FS_MSG_BYE:
        if ((rc = check_text_field(m->u.bye.reason, sizeof m->u.bye.reason, "bye.reason", d)))
            return rc;
        break;
    case FS_MSG_COMPUTE_HEAD:
        if ((rc = check_head(m, d)))
            return rc;
        break;
    case FS_MSG_COMPUTE_PART:
        if ((rc = check_part(m, chunk, n_raw, d)))
            return rc;
        break;
    default:
        return fs_diag_set(d, FS_EINVAL, "unknown message type %d", (int)m->type);
    }
    if (m->n_tensors && m->type != FS_MSG_COMPUTE_REQ && m->type != FS_MSG_COMPUTE_REPLY &&
        m->type != FS_MSG_COMPUTE_HEAD)
        return fs_diag_set(d, FS_EINVAL, "%s carries no tensors", fs_msg_type_name(m->type));
    return 0;
}

static int pk_body(msgpack_packer *pk, const fs_wire_msg *m, size_t chunk, fs_wire_buf *frames,
                   size_t n_raw)
{
    switch (m->type) {
    case FS_MSG_HELLO: {
        const typeof(m->u.hello) *h = &m->u.hello;
        PK(msgpack_pack_map(pk, 6));
        PK(pk_key(pk, "proto_min"));
        PK(msgpack_pack_uint64(pk, h->proto_min));
        PK(pk_key(pk, "proto_max"));
        PK(msgpack_pack_uint64(pk, h->proto_max));
        PK(pk_key(pk, "version"));
        PK(pk_str(pk, h->version));
        PK(pk_key(pk, "site"));
        PK(pk_str(pk, h->site));
        PK(pk_key(pk, "caps"));
        PK(msgpack_pack_array(pk, h->n_caps));
        for (size_t i = 0; i < h->n_caps; i++)
            PK(pk_str(pk, h->caps[i]));
        PK(pk_key(pk, "data"));
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "n_samples"));
        PK(msgpack_pack_uint64(pk, h->n_samples));
        PK(pk_key(pk, "n_labeled"));
        PK(msgpack_pack_uint64(pk, h->n_labeled));
        PK(pk_key(pk, "classes"));
        PK(msgpack_pack_array(pk, h->n_classes));
        for (size_t i = 0; i < h->n_classes; i++)
            PK(msgpack_pack_uint64(pk, h->classes[i]));
        break;
    }
    case FS_MSG_WELCOME:
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "proto"));
        PK(msgpack_pack_uint64(pk, m->u.welcome.proto));
        PK(pk_key(pk, "agent"));
        PK(pk_str(pk, m->u.welcome.agent));
        PK(pk_key(pk, "heartbeat_ms"));
        PK(msgpack_pack_uint64(pk, m->u.welcome.heartbeat_ms));
        break;
    case FS_MSG_HEARTBEAT:
        PK(msgpack_pack_map(pk, 1));
        PK(pk_key(pk, "progress"));
        PK(msgpack_pack_double(pk, m->u.heartbeat.progress));
        break;
    case FS_MSG_JOB_OFFER:
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "config"));
        PK(pk_kvlist(pk, &m->u.job_offer.config, false));
        PK(pk_key(pk, "model_digest"));
        PK(msgpack_pack_bin_with_body(pk, m->u.job_offer.model_digest, FS_WIRE_DIGEST_BYTES));
        PK(pk_key(pk, "model_bytes"));
        PK(msgpack_pack_uint64(pk, m->u.job_offer.model_bytes));
        break;
    case FS_MSG_JOB_ACCEPT:
    case FS_MSG_JOB_DECLINE:
        PK(msgpack_pack_map(pk, 1));
        PK(pk_key(pk, "reason"));
        PK(pk_str(pk, m->u.job_reply.reason));
        break;
    case FS_MSG_MODEL_REQ:
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "digest"));
        PK(msgpack_pack_bin_with_body(pk, m->u.model_req.digest, FS_WIRE_DIGEST_BYTES));
        PK(pk_key(pk, "offset"));
        PK(msgpack_pack_uint64(pk, m->u.model_req.offset));
        PK(pk_key(pk, "len"));
        PK(msgpack_pack_uint64(pk, m->u.model_req.len));
        break;
    case FS_MSG_MODEL_CHUNK:
        PK(msgpack_pack_map(pk, 5));
        PK(pk_key(pk, "digest"));
        PK(msgpack_pack_bin_with_body(pk, m->u.model_chunk.digest, FS_WIRE_DIGEST_BYTES));
        PK(pk_key(pk, "total"));
        PK(msgpack_pack_uint64(pk, m->u.model_chunk.total));
        PK(pk_key(pk, "offset"));
        PK(msgpack_pack_uint64(pk, m->u.model_chunk.offset));
        PK(pk_key(pk, "len"));
        PK(msgpack_pack_uint64(pk, m->u.model_chunk.len));
        PK(pk_key(pk, "frame"));
        PK(msgpack_pack_uint64(pk, 1));
        frames[1].data = m->u.model_chunk.data;
        frames[1].len = m->u.model_chunk.len;
        break;
    case FS_MSG_COMPUTE_REQ:
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "kind"));
        PK(pk_str(pk, m->u.compute_req.kind));
        PK(pk_key(pk, "args"));
        PK(pk_kvlist(pk, &m->u.compute_req.args, false));
        PK(pk_key(pk, "tensors"));
        PK(pk_tensor_descs(pk, m, chunk, frames, n_raw));
        break;
    case FS_MSG_COMPUTE_REPLY:
        PK(msgpack_pack_map(pk, 3));
        PK(pk_key(pk, "count"));
        PK(msgpack_pack_uint64(pk, m->u.compute_reply.count));
        PK(pk_key(pk, "scalars"));
        PK(pk_kvlist(pk, &m->u.compute_reply.scalars, true));
        PK(pk_key(pk, "tensors"));
        PK(pk_tensor_descs(pk, m, chunk, frames, n_raw));
        break;
    case FS_MSG_ERROR:
        PK(msgpack_pack_map(pk, m->u.error.has_supported ? 3 : 2));
        PK(pk_key(pk, "code"));
        PK(pk_str(pk, m->u.error.code));
        PK(pk_key(pk, "text"));
        PK(pk_str(pk, m->u.error.text));
        if (m->u.error.has_supported) {
            PK(pk_key(pk, "supported"));
            PK(msgpack_pack_array(pk, 2));
            PK(msgpack_pack_uint64(pk, m->u.error.supported_min));
            PK(msgpack_pack_uint64(pk, m->u.error.supported_max));
        }
        break;
    case FS_MSG_BYE:
        PK(msgpack_pack_map(pk, 1));
        PK(pk_key(pk, "reason"));
        PK(pk_str(pk, m->u.bye.reason));
        break;
    case FS_MSG_COMPUTE_HEAD:
        PK(pk_head(pk, m));
        break;
    case FS_MSG_COMPUTE_PART:
        PK(pk_part(pk, m, frames));
        break;
    }
    return 0;
nomem:
    return -1;
}

int fs_wire_encode(const fs_wire_msg *m, size_t chunk, fs_wire_frames *out, fs_diag *d)
{
    size_t n_raw = 0;
    int rc;
    memset(out, 0, sizeof *out);
    if (chunk == 0)
        chunk = FS_WIRE_CHUNK_DEFAULT;
    if ((rc = check_body(m, chunk, &n_raw, d)) != 0)
        return rc;
    fs_wire_buf *frames = calloc(1 + n_raw, sizeof *frames);
    if (!frames)
        return fs_diag_set(d, FS_ENOMEM, "encode: out of memory");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    PK(msgpack_pack_map(&pk, 7));
    PK(pk_key(&pk, "v"));
    PK(msgpack_pack_uint64(&pk, FS_WIRE_PROTO));
    PK(pk_key(&pk, "t"));
    PK(msgpack_pack_uint64(&pk, (uint64_t)m->type));
    PK(pk_key(&pk, "job"));
    PK(pk_str(&pk, m->job));
    PK(pk_key(&pk, "round"));
    PK(msgpack_pack_uint64(&pk, m->round));
    PK(pk_key(&pk, "step"));
    PK(msgpack_pack_uint64(&pk, m->step));
    PK(pk_key(&pk, "seq"));
    PK(msgpack_pack_uint64(&pk, m->seq));
    PK(pk_key(&pk, "body"));
    PK(pk_body(&pk, m, chunk, frames, n_raw));
    out->header_len = sb.size;
    out->header = msgpack_sbuffer_release(&sb);
    frames[0].data = out->header;
    frames[0].len = out->header_len;
    out->frames = frames;
    out->n_frames = 1 + n_raw;
    return 0;
nomem:
    msgpack_sbuffer_destroy(&sb);
    free(frames);
    return fs_diag_set(d, FS_ENOMEM, "encode %s: out of memory", fs_msg_type_name(m->type));
}

void fs_wire_frames_free(fs_wire_frames *f)
{
    if (!f)
        return;
    free(f->header);
    free(f->frames);
    memset(f, 0, sizeof *f);
}

void fs_wire_make_version_error(fs_wire_msg *m, uint64_t peer_version)
{
    memset(m, 0, sizeof *m);
    m->type = FS_MSG_ERROR;
    snprintf(m->u.error.code, sizeof m->u.error.code, "version");
    snprintf(m->u.error.text, sizeof m->u.error.text,
             "protocol version %llu not supported (supported %d..%d)",
             (unsigned long long)peer_version, FS_WIRE_PROTO_MIN, FS_WIRE_PROTO_MAX);
    m->u.error.has_supported = true;
    m->u.error.supported_min = FS_WIRE_PROTO_MIN;
    m->u.error.supported_max = FS_WIRE_PROTO_MAX;
}

/* ------------------------------------------------------------------------------------------ */
/* decoder                                                                                    */

static void *owned_alloc(fs_wire_msg *m, size_t size)
{
    struct fs_wire_owned *o = m->owned;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 8;
        void **b = realloc(o->blocks, cap * sizeof *b);
        if (!b)
            return NULL;
        o->blocks = b;
        o->cap = cap;
    }
    void *p = calloc(1, size ? size : 1);
    if (p)
        o->blocks[o->n++] = p;
    return p;
}

void fs_wire_msg_set_release(fs_wire_msg *m, void (*release)(void *), void *arg)
{
    FS_ASSERT(m->owned);
    m->owned->release = release;
    m->owned->release_arg = arg;
}

void fs_wire_msg_free(fs_wire_msg *m)
{
    if (!m)
        return;
    FS_ASSERT(m->owned); /* only decoded messages */
    for (size_t i = 0; i < m->n_tensors; i++)
        fs_free(m->tensors[i].data);
    struct fs_wire_owned *o = m->owned;
    for (size_t i = 0; i < o->n; i++)
        free(o->blocks[i]);
    free(o->blocks);
    if (o->release)
        o->release(o->release_arg);
    free(o);
    free(m);
}

/* Field kinds of the table walk. */
enum {
    F_U32,
    F_U64,
    F_NAME,      /* [A-Za-z0-9._-] 1..64 into char[65] */
    F_NAME0,     /* same, may be empty */
    F_TEXT,      /* printable ASCII <= 256 into char[257] */
    F_TEXT64,    /* printable ASCII <= 64 into char[65] */
    F_BIN32,     /* exactly 32 bytes */
    F_F64,       /* int or float, finite */
    F_MAP,       /* stores the msgpack_object pointer */
    F_ARRAY,
    F_STR_OBJ,   /* a string, checked by the caller: stores the msgpack_object pointer */
};

typedef struct {
    const char *key;
    int kind;
    bool required;
    void *dst;
} field;

typedef struct {
    fs_diag *d;
    const char *where; /* "body", "envelope", ... for messages */
} walk_ctx;

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && !memcmp(k->via.str.ptr, s, n);
}

static int store_field(const field *f, const msgpack_object *v, const char *where, fs_diag *d)
{
    switch (f->kind) {
    case F_U32:
    case F_U64:
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not an unsigned integer", where, f->key);
        if (f->kind == F_U32) {
            if (v->via.u64 > UINT32_MAX)
                return fs_diag_set(d, FS_EPROTO, "%s.%s: %llu exceeds 32 bits", where, f->key,
                                   (unsigned long long)v->via.u64);
            *(uint32_t *)f->dst = (uint32_t)v->via.u64;
        } else {
            *(uint64_t *)f->dst = v->via.u64;
        }
        return 0;
    case F_NAME:
    case F_NAME0:
    case F_TEXT:
    case F_TEXT64: {
        if (v->type != MSGPACK_OBJECT_STR)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not a string", where, f->key);
        size_t n = v->via.str.size;
        bool ok;
        if (f->kind == F_TEXT || f->kind == F_TEXT64)
            ok = text_ok(v->via.str.ptr, n, f->kind == F_TEXT ? FS_WIRE_TEXT_MAX : FS_WIRE_NAME_MAX);
        else
            ok = (n == 0 && f->kind == F_NAME0) || fs_wire_name_ok(v->via.str.ptr, n, FS_WIRE_NAME_MAX);
        if (!ok)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: %s", where, f->key,
                               f->kind == F_TEXT     ? "longer than 256 or not printable ASCII"
                               : f->kind == F_TEXT64 ? "longer than 64 or not printable ASCII"
                                                     : "not 1-64 chars of [A-Za-z0-9._-]");
        memcpy(f->dst, v->via.str.ptr, n);
        ((char *)f->dst)[n] = '\0';
        return 0;
    }
    case F_BIN32:
        if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != FS_WIRE_DIGEST_BYTES)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not a 32-byte bin", where, f->key);
        memcpy(f->dst, v->via.bin.ptr, FS_WIRE_DIGEST_BYTES);
        return 0;
    case F_F64: {
        double x;
        if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
            x = v->via.f64;
        else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            x = (double)v->via.u64;
        else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            x = (double)v->via.i64;
        else
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not a number", where, f->key);
        if (!isfinite(x))
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not finite", where, f->key);
        *(double *)f->dst = x;
        return 0;
    }
    case F_MAP:
        if (v->type != MSGPACK_OBJECT_MAP)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not a map", where, f->key);
        *(const msgpack_object **)f->dst = v;
        return 0;
    case F_ARRAY:
        if (v->type != MSGPACK_OBJECT_ARRAY)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not an array", where, f->key);
        *(const msgpack_object **)f->dst = v;
        return 0;
    case F_STR_OBJ:
        if (v->type != MSGPACK_OBJECT_STR)
            return fs_diag_set(d, FS_EPROTO, "%s.%s: not a string", where, f->key);
        *(const msgpack_object **)f->dst = v;
        return 0;
    }
    FS_ASSERT(!"unknown field kind");
    return FS_EPROTO;
}

/* Walks map `o` against `fields`: keys must be strings, known keys stored (type/range-checked),
 * duplicates rejected, unknown keys ignored, required keys must be present. */
static int walk(const msgpack_object *o, const field *fields, size_t nf, const char *where,
                fs_diag *d)
{
    uint64_t seen = 0;
    FS_ASSERT(nf <= 64);
    if (o->type != MSGPACK_OBJECT_MAP)
        return fs_diag_set(d, FS_EPROTO, "%s: not a map", where);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fs_diag_set(d, FS_EPROTO, "%s: key %u is not a string", where, i);
        for (size_t j = 0; j < nf; j++) {
            if (!key_is(&kv->key, fields[j].key))
                continue;
            if (seen & ((uint64_t)1 << j))
                return fs_diag_set(d, FS_EPROTO, "%s.%s: duplicate key", where, fields[j].key);
            seen |= (uint64_t)1 << j;
            int rc = store_field(&fields[j], &kv->val, where, d);
            if (rc)
                return rc;
            break;
        }
    }
    for (size_t j = 0; j < nf; j++)
        if (fields[j].required && !(seen & ((uint64_t)1 << j)))
            return fs_diag_set(d, FS_EPROTO, "%s.%s: missing", where, fields[j].key);
    return 0;
}

static char *owned_strndup(fs_wire_msg *m, const char *s, size_t n)
{
    char *p = owned_alloc(m, n + 1);
    if (p)
        memcpy(p, s, n);
    return p;
}

static int decode_kvlist(fs_wire_msg *m, const msgpack_object *o, fs_kvlist *out,
                         bool floats_only, const char *where, fs_diag *d)
{
    uint32_t n = o->via.map.size;
    out->n = 0;
    out->items = owned_alloc(m, (size_t)n * sizeof(fs_kv)); /* n <= max_objects (pre-check) */
    if (!out->items)
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", where);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        fs_kv *kv = &out->items[i];
        if (k->type != MSGPACK_OBJECT_STR ||
            !fs_wire_name_ok(k->via.str.ptr, k->via.str.size, FS_WIRE_NAME_MAX))
            return fs_diag_set(d, FS_EPROTO, "%s: key %u is not 1-64 chars of [A-Za-z0-9._-]",
                               where, i);
        memcpy(kv->key, k->via.str.ptr, k->via.str.size);
        kv->key[k->via.str.size] = '\0';
        for (uint32_t j = 0; j < i; j++)
            if (!strcmp(out->items[j].key, kv->key))
                return fs_diag_set(d, FS_EPROTO, "%s.%s: duplicate key", where, kv->key);
        switch (v->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            if (v->via.u64 > INT64_MAX)
                return fs_diag_set(d, FS_EPROTO, "%s.%s: integer out of range", where, kv->key);
            kv->kind = FS_KV_INT;
            kv->i = (int64_t)v->via.u64;
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            kv->kind = FS_KV_INT;
            kv->i = v->via.i64;
            break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            if (!isfinite(v->via.f64))
                return fs_diag_set(d, FS_EPROTO, "%s.%s: not finite", where, kv->key);
            kv->kind = FS_KV_FLOAT;
            kv->f = v->via.f64;
            break;
        case MSGPACK_OBJECT_STR:
            if (floats_only)
                goto not_number;
            if (!text_ok(v->via.str.ptr, v->via.str.size, FS_WIRE_TEXT_MAX))
                return fs_diag_set(d, FS_EPROTO, "%s.%s: string too long or not printable", where,
                                   kv->key);
            kv->kind = FS_KV_STR;
            if (!(kv->s = owned_strndup(m, v->via.str.ptr, v->via.str.size)))
                return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", where);
            break;
        case MSGPACK_OBJECT_ARRAY: {
            if (floats_only)
                goto not_number;
            uint32_t na = v->via.array.size;
            double *nums = owned_alloc(m, (size_t)na * sizeof(double));
            if (!nums)
                return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", where);
            for (uint32_t j = 0; j < na; j++) {
                field f = {"[]", F_F64, true, &nums[j]};
                char w[96];
                snprintf(w, sizeof w, "%s.%s", where, kv->key);
                int rc = store_field(&f, &v->via.array.ptr[j], w, d);
                if (rc)
                    return rc;
            }
            kv->kind = FS_KV_NUMS;
            kv->nums = nums;
            kv->n_nums = na;
            break;
        }
        default:
        not_number:
            return fs_diag_set(d, FS_EPROTO, "%s.%s: unsupported value type", where, kv->key);
        }
        if (floats_only && kv->kind == FS_KV_INT) {
            kv->kind = FS_KV_FLOAT;
            kv->f = (double)kv->i;
        }
        out->n++;
    }
    return 0;
}

/* One descriptor as read from the header. */
typedef struct {
    char name[FS_WIRE_TENSOR_NAME_MAX + 1];
    fs_wire_dtype dtype;
    uint32_t ndim;
    uint64_t shape[FS_WIRE_MAX_DIMS];
    uint64_t offset, len, frame;
} desc;

static int decode_desc(const msgpack_object *o, desc *ds, size_t idx, fs_diag *d)
{
    const msgpack_object *name = NULL, *dtype = NULL, *shape = NULL;
    char where[48];
    snprintf(where, sizeof where, "body.tensors[%zu]", idx);
    field f[] = {
        {"name", F_STR_OBJ, true, &name},
        {"dtype", F_STR_OBJ, true, &dtype},
        {"shape", F_ARRAY, true, &shape},
        {"offset", F_U64, true, &ds->offset},
        {"len", F_U64, true, &ds->len},
        {"frame", F_U64, true, &ds->frame},
    };
    int rc = walk(o, f, sizeof f / sizeof f[0], where, d);
    if (rc)
        return rc;
    if (!tensor_name_ok(name->via.str.ptr, name->via.str.size))
        return fs_diag_set(d, FS_EPROTO, "%s.name: not 1-128 chars of [A-Za-z0-9._/:-]", where);
    memcpy(ds->name, name->via.str.ptr, name->via.str.size);
    ds->name[name->via.str.size] = '\0';
    size_t t;
    for (t = 0; t < N_DTYPES; t++)
        if (key_is(dtype, DTYPE_NAMES[t]))
            break;
    if (t == N_DTYPES)
        return fs_diag_set(d, FS_EPROTO, "%s ('%s').dtype: unknown", where, ds->name);
    ds->dtype = (fs_wire_dtype)t;
    if (shape->via.array.size > FS_WIRE_MAX_DIMS)
        return fs_diag_set(d, FS_EPROTO, "%s ('%s').shape: more than %d dims", where, ds->name,
                           FS_WIRE_MAX_DIMS);
    ds->ndim = shape->via.array.size;
    for (uint32_t i = 0; i < ds->ndim; i++) {
        const msgpack_object *x = &shape->via.array.ptr[i];
        if (x->type != MSGPACK_OBJECT_POSITIVE_INTEGER || x->via.u64 == 0)
            return fs_diag_set(d, FS_EPROTO, "%s ('%s').shape[%u]: not an integer >= 1", where,
                               ds->name, i);
        ds->shape[i] = x->via.u64;
    }
    return 0;
}

/* Tensor buffer: 64-byte aligned, not zeroed (every byte is written), freed with fs_free. Large
 * ones are 2 MiB aligned and advised as transparent huge pages: the copy into a fresh buffer
 * otherwise takes one page fault per 4 KiB (16384 for a 64 MiB tensor). */
void *fs_wire_alloc_big(size_t total)
{
    const size_t huge = (size_t)2 << 20;
    if (total < 4 * huge)
        return fs_alloc_uninit(total);
    size_t n = fs_align_up(total, huge);
    void *p = aligned_alloc(huge, n);
    if (p)
        (void)madvise(p, n, MADV_HUGEPAGE); /* advice only: fine if THP is off */
    return p;
}

/* Checks descriptors against the frames and reassembles tensors (one memcpy per chunk). */
static int decode_tensors(fs_wire_msg *m, const msgpack_object *arr, const fs_wire_buf *frames,
                          size_t n_frames, const fs_wire_limits *lim, fs_diag *d)
{
    size_t nd = arr->via.array.size;
    int rc;
    if (nd != n_frames - 1)
        return fs_diag_set(d, FS_EPROTO, "body.tensors: %zu descriptors for %zu raw frames", nd,
                           n_frames - 1);
    if (nd == 0)
        return 0;
    desc *ds = owned_alloc(m, nd * sizeof *ds);
    bool *used = owned_alloc(m, n_frames);
    /* at most one tensor per descriptor */
    m->tensors = owned_alloc(m, nd * sizeof *m->tensors);
    if (!ds || !used || !m->tensors)
        return fs_diag_set(d, FS_ENOMEM, "body.tensors: out of memory");
    for (size_t i = 0; i < nd; i++) {
        if ((rc = decode_desc(&arr->via.array.ptr[i], &ds[i], i, d)))
            return rc;
        if (ds[i].frame < 1 || ds[i].frame >= n_frames || used[ds[i].frame])
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': frame %llu missing or used twice",
                               ds[i].name, (unsigned long long)ds[i].frame);
        used[ds[i].frame] = true;
        if (ds[i].len != frames[ds[i].frame].len || ds[i].len == 0)
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': len %llu but frame %llu has %zu bytes",
                               ds[i].name, (unsigned long long)ds[i].len,
                               (unsigned long long)ds[i].frame, frames[ds[i].frame].len);
    }
    /* Group consecutive descriptors with the same name into one tensor. */
    size_t i = 0;
    while (i < nd) {
        fs_wire_tensor *t = &m->tensors[m->n_tensors];
        const desc *first = &ds[i];
        snprintf(t->name, sizeof t->name, "%s", first->name);
        for (size_t k = 0; k < m->n_tensors; k++)
            if (!strcmp(m->tensors[k].name, t->name))
                return fs_diag_set(d, FS_EPROTO, "tensor '%s': chunks not consecutive or name "
                                   "repeated", t->name);
        t->dtype = first->dtype;
        t->ndim = first->ndim;
        memcpy(t->shape, first->shape, sizeof t->shape);
        size_t total;
        if (tensor_numel_bytes(t, &total) != 0 || total > lim->max_tensor_bytes)
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': size overflows or exceeds %zu bytes",
                               t->name, lim->max_tensor_bytes);
        size_t j = i, pos = 0;
        for (; j < nd && !strcmp(ds[j].name, t->name); j++) {
            if (ds[j].dtype != t->dtype || ds[j].ndim != t->ndim ||
                memcmp(ds[j].shape, t->shape, t->ndim * sizeof t->shape[0]))
                return fs_diag_set(d, FS_EPROTO, "tensor '%s': chunk %zu has another dtype/shape",
                                   t->name, j - i);
            if (ds[j].offset != pos || ds[j].len > total - pos)
                return fs_diag_set(d, FS_EPROTO,
                                   "tensor '%s': chunk [%llu, +%llu) does not continue at %zu "
                                   "within %zu bytes",
                                   t->name, (unsigned long long)ds[j].offset,
                                   (unsigned long long)ds[j].len, pos, total);
            pos += ds[j].len;
        }
        if (pos != total)
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': chunks cover %zu of %zu bytes", t->name,
                               pos, total);
        if (j - i > lim->max_chunks)
            return fs_diag_set(d, FS_EPROTO, "tensor '%s': %zu chunks (limit %zu)", t->name, j - i,
                               lim->max_chunks);
        /* The size was just proven equal to bytes actually received, and the chunks cover every
         * byte of it: no need to zero the buffer first. */
        t->data = fs_wire_alloc_big(total);
        if (!t->data)
            return fs_diag_set(d, FS_ENOMEM, "tensor '%s': out of memory (%zu bytes)", t->name,
                               total);
        m->n_tensors++; /* from here on fs_wire_msg_free frees t->data */
        t->nbytes = total;
        for (size_t k = i; k < j; k++)
            memcpy((uint8_t *)t->data + ds[k].offset, frames[ds[k].frame].data, ds[k].len);
        i = j;
    }
    return 0;
}

/* COMPUTE_HEAD body: {count, scalars, parts, tensors: [{name, dtype, shape}]}; no raw frames. */
static int decode_head(fs_wire_msg *m, const msgpack_object *body, const fs_wire_limits *lim,
                       fs_diag *d)
{
    typeof(m->u.compute_head) *h = &m->u.compute_head;
    const msgpack_object *a = NULL, *b = NULL;
    field f[] = {{"count", F_U64, true, &h->count},
                 {"scalars", F_MAP, true, &a},
                 {"parts", F_U32, true, &h->parts},
                 {"tensors", F_ARRAY, true, &b}};
    int rc = walk(body, f, 4, "body", d);
    if (rc || (rc = decode_kvlist(m, a, &h->scalars, true, "body.scalars", d)))
        return rc;
    size_t nt = b->via.array.size;
    if (nt && !(m->tensors = owned_alloc(m, nt * sizeof *m->tensors)))
        return fs_diag_set(d, FS_ENOMEM, "body.tensors: out of memory");
    for (size_t i = 0; i < nt; i++) {
        const msgpack_object *name = NULL, *dtype = NULL, *shape = NULL;
        char where[48];
        snprintf(where, sizeof where, "body.tensors[%zu]", i);
        field ft[] = {{"name", F_STR_OBJ, true, &name},
                      {"dtype", F_STR_OBJ, true, &dtype},
                      {"shape", F_ARRAY, true, &shape}};
        if ((rc = walk(&b->via.array.ptr[i], ft, 3, where, d)))
            return rc;
        fs_wire_tensor *t = &m->tensors[i];
        if (!tensor_name_ok(name->via.str.ptr, name->via.str.size))
            return fs_diag_set(d, FS_EPROTO, "%s.name: not 1-128 chars of [A-Za-z0-9._/:-]",
                               where);
        memcpy(t->name, name->via.str.ptr, name->via.str.size);
        t->name[name->via.str.size] = '\0';
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->tensors[j].name, t->name))
                return fs_diag_set(d, FS_EPROTO, "%s ('%s'): name repeated", where, t->name);
        size_t k;
        for (k = 0; k < N_DTYPES; k++)
            if (key_is(dtype, DTYPE_NAMES[k]))
                break;
        if (k == N_DTYPES)
            return fs_diag_set(d, FS_EPROTO, "%s ('%s').dtype: unknown", where, t->name);
        t->dtype = (fs_wire_dtype)k;
        if (shape->via.array.size > FS_WIRE_MAX_DIMS)
            return fs_diag_set(d, FS_EPROTO, "%s ('%s').shape: more than %d dims", where, t->name,
                               FS_WIRE_MAX_DIMS);
        t->ndim = shape->via.array.size;
        for (uint32_t j = 0; j < t->ndim; j++) {
            const msgpack_object *x = &shape->via.array.ptr[j];
            if (x->type != MSGPACK_OBJECT_POSITIVE_INTEGER || x->via.u64 == 0)
                return fs_diag_set(d, FS_EPROTO, "%s ('%s').shape[%u]: not an integer >= 1",
                                   where, t->name, j);
            t->shape[j] = x->via.u64;
        }
        if (tensor_numel_bytes(t, &t->nbytes) != 0 || t->nbytes > lim->max_tensor_bytes)
            return fs_diag_set(d, FS_EPROTO, "%s ('%s'): size overflows or exceeds %zu bytes",
                               where, t->name, lim->max_tensor_bytes);
        t->data = NULL; /* announced only: the bytes follow in COMPUTE_PART messages */
        m->n_tensors = i + 1;
    }
    if ((nt == 0) != (h->parts == 0))
        return fs_diag_set(d, FS_EPROTO, "body.parts: %u parts for %zu tensors", h->parts, nt);
    return 0;
}

/* COMPUTE_PART body: {part, slices: [{name, offset, len, frame}]}; one raw frame per slice, each
 * referenced exactly once. The slices point into the frames (the link keeps them alive). */
static int decode_part(fs_wire_msg *m, const msgpack_object *body, const fs_wire_buf *frames,
                       size_t n_frames, fs_diag *d)
{
    typeof(m->u.compute_part) *p = &m->u.compute_part;
    const msgpack_object *a = NULL;
    field f[] = {{"part", F_U32, true, &p->part}, {"slices", F_ARRAY, true, &a}};
    int rc = walk(body, f, 2, "body", d);
    if (rc)
        return rc;
    size_t ns = a->via.array.size;
    if (ns == 0 || ns != n_frames - 1)
        return fs_diag_set(d, FS_EPROTO, "body.slices: %zu slices for %zu raw frames", ns,
                           n_frames - 1);
    fs_wire_slice *sl = owned_alloc(m, ns * sizeof *sl);
    bool *used = owned_alloc(m, n_frames);
    if (!sl || !used)
        return fs_diag_set(d, FS_ENOMEM, "body.slices: out of memory");
    for (size_t i = 0; i < ns; i++) {
        const msgpack_object *name = NULL;
        uint64_t len = 0, frame = 0;
        char where[48];
        snprintf(where, sizeof where, "body.slices[%zu]", i);
        field fs[] = {{"name", F_STR_OBJ, true, &name},
                      {"offset", F_U64, true, &sl[i].offset},
                      {"len", F_U64, true, &len},
                      {"frame", F_U64, true, &frame}};
        if ((rc = walk(&a->via.array.ptr[i], fs, 4, where, d)))
            return rc;
        if (!tensor_name_ok(name->via.str.ptr, name->via.str.size))
            return fs_diag_set(d, FS_EPROTO, "%s.name: not 1-128 chars of [A-Za-z0-9._/:-]",
                               where);
        memcpy(sl[i].name, name->via.str.ptr, name->via.str.size);
        sl[i].name[name->via.str.size] = '\0';
        if (frame < 1 || frame >= n_frames || used[frame])
            return fs_diag_set(d, FS_EPROTO, "%s ('%s'): frame %llu missing or used twice", where,
                               sl[i].name, (unsigned long long)frame);
        used[frame] = true;
        if (len == 0 || len != frames[frame].len || sl[i].offset > UINT64_MAX - len)
            return fs_diag_set(d, FS_EPROTO, "%s ('%s'): len %llu but frame %llu has %zu bytes",
                               where, sl[i].name, (unsigned long long)len,
                               (unsigned long long)frame, frames[frame].len);
        sl[i].data = frames[frame].data;
        sl[i].len = (size_t)len;
    }
    p->slices = sl;
    p->n_slices = ns;
    return 0;
}

static int decode_body(fs_wire_msg *m, const msgpack_object *body, const fs_wire_buf *frames,
                       size_t n_frames, const fs_wire_limits *lim, fs_diag *d)
{
    int rc;
    const msgpack_object *a = NULL, *b = NULL;
    size_t want_raw = 0;
    switch (m->type) {
    case FS_MSG_HELLO: {
        typeof(m->u.hello) *h = &m->u.hello;
        uint64_t n_samples = 0, n_labeled = 0;
        field f[] = {{"proto_min", F_U32, true, &h->proto_min},
                     {"proto_max", F_U32, true, &h->proto_max},
                     {"version", F_TEXT64, true, h->version},
                     {"site", F_NAME, true, h->site},
                     {"caps", F_ARRAY, true, &a},
                     {"data", F_MAP, true, &b}};
        if ((rc = walk(body, f, 6, "body", d)))
            return rc;
        if (h->proto_min > h->proto_max)
            return fs_diag_set(d, FS_EPROTO, "body.proto_min %u > proto_max %u", h->proto_min,
                               h->proto_max);
        if (a->via.array.size > 64)
            return fs_diag_set(d, FS_EPROTO, "body.caps: more than 64 entries");
        char **caps = owned_alloc(m, a->via.array.size * sizeof(char *));
        if (!caps)
            return fs_diag_set(d, FS_ENOMEM, "body.caps: out of memory");
        for (uint32_t i = 0; i < a->via.array.size; i++) {
            const msgpack_object *c = &a->via.array.ptr[i];
            if (c->type != MSGPACK_OBJECT_STR ||
                !fs_wire_name_ok(c->via.str.ptr, c->via.str.size, FS_WIRE_NAME_MAX))
                return fs_diag_set(d, FS_EPROTO, "body.caps[%u]: not 1-64 chars of "
                                   "[A-Za-z0-9._-]", i);
            if (!(caps[i] = owned_strndup(m, c->via.str.ptr, c->via.str.size)))
                return fs_diag_set(d, FS_ENOMEM, "body.caps: out of memory");
        }
        h->caps = (const char *const *)caps;
        h->n_caps = a->via.array.size;
        const msgpack_object *cls = NULL;
        field fd[] = {{"n_samples", F_U64, true, &n_samples},
                      {"n_labeled", F_U64, true, &n_labeled},
                      {"classes", F_ARRAY, true, &cls}};
        if ((rc = walk(b, fd, 3, "body.data", d)))
            return rc;
        if (n_labeled > n_samples)
            return fs_diag_set(d, FS_EPROTO, "body.data: n_labeled %llu > n_samples %llu",
                               (unsigned long long)n_labeled, (unsigned long long)n_samples);
        if (cls->via.array.size > 4096)
            return fs_diag_set(d, FS_EPROTO, "body.data.classes: more than 4096 entries");
        uint64_t *cl = owned_alloc(m, cls->via.array.size * sizeof(uint64_t));
        if (!cl)
            return fs_diag_set(d, FS_ENOMEM, "body.data.classes: out of memory");
        for (uint32_t i = 0; i < cls->via.array.size; i++) {
            field fc = {"classes[]", F_U64, true, &cl[i]};
            if ((rc = store_field(&fc, &cls->via.array.ptr[i], "body.data", d)))
                return rc;
        }
        h->n_samples = n_samples;
        h->n_labeled = n_labeled;
        h->classes = cl;
        h->n_classes = cls->via.array.size;
        break;
    }
    case FS_MSG_WELCOME: {
        field f[] = {{"proto", F_U32, true, &m->u.welcome.proto},
                     {"agent", F_NAME, true, m->u.welcome.agent},
                     {"heartbeat_ms", F_U32, true, &m->u.welcome.heartbeat_ms}};
        if ((rc = walk(body, f, 3, "body", d)))
            return rc;
        break;
    }
    case FS_MSG_HEARTBEAT: {
        field f[] = {{"progress", F_F64, true, &m->u.heartbeat.progress}};
        if ((rc = walk(body, f, 1, "body", d)))
            return rc;
        break;
    }
    case FS_MSG_JOB_OFFER: {
        field f[] = {{"config", F_MAP, true, &a},
                     {"model_digest", F_BIN32, true, m->u.job_offer.model_digest},
                     {"model_bytes", F_U64, true, &m->u.job_offer.model_bytes}};
        if ((rc = walk(body, f, 3, "body", d)) ||
            (rc = decode_kvlist(m, a, &m->u.job_offer.config, false, "body.config", d)))
            return rc;
        break;
    }
    case FS_MSG_JOB_ACCEPT:
    case FS_MSG_JOB_DECLINE: {
        field f[] = {{"reason", F_TEXT, m->type == FS_MSG_JOB_DECLINE, m->u.job_reply.reason}};
        if ((rc = walk(body, f, 1, "body", d)))
            return rc;
        break;
    }
    case FS_MSG_MODEL_REQ: {
        field f[] = {{"digest", F_BIN32, true, m->u.model_req.digest},
                     {"offset", F_U64, true, &m->u.model_req.offset},
                     {"len", F_U64, true, &m->u.model_req.len}};
        if ((rc = walk(body, f, 3, "body", d)))
            return rc;
        if (m->u.model_req.len == 0)
            return fs_diag_set(d, FS_EPROTO, "body.len: 0");
        break;
    }
    case FS_MSG_MODEL_CHUNK: {
        typeof(m->u.model_chunk) *c = &m->u.model_chunk;
        uint64_t len = 0, frame = 0;
        field f[] = {{"digest", F_BIN32, true, c->digest},
                     {"total", F_U64, true, &c->total},
                     {"offset", F_U64, true, &c->offset},
                     {"len", F_U64, true, &len},
                     {"frame", F_U64, true, &frame}};
        if ((rc = walk(body, f, 5, "body", d)))
            return rc;
        if (n_frames != 2 || frame != 1)
            return fs_diag_set(d, FS_EPROTO, "MODEL_CHUNK: needs exactly one raw frame (frame 1), "
                               "got %zu frames", n_frames);
        if (len != frames[1].len || len == 0)
            return fs_diag_set(d, FS_EPROTO, "body.len %llu but the raw frame has %zu bytes",
                               (unsigned long long)len, frames[1].len);
        if (c->offset > c->total || len > c->total - c->offset)
            return fs_diag_set(d, FS_EPROTO, "body: chunk [%llu, +%llu) outside total %llu",
                               (unsigned long long)c->offset, (unsigned long long)len,
                               (unsigned long long)c->total);
        c->data = frames[1].data;
        c->len = (size_t)len;
        want_raw = 1;
        break;
    }
    case FS_MSG_COMPUTE_REQ: {
        field f[] = {{"kind", F_NAME, true, m->u.compute_req.kind},
                     {"args", F_MAP, true, &a},
                     {"tensors", F_ARRAY, true, &b}};
        if ((rc = walk(body, f, 3, "body", d)) ||
            (rc = decode_kvlist(m, a, &m->u.compute_req.args, false, "body.args", d)) ||
            (rc = decode_tensors(m, b, frames, n_frames, lim, d)))
            return rc;
        want_raw = n_frames - 1;
        break;
    }
    case FS_MSG_COMPUTE_REPLY: {
        field f[] = {{"count", F_U64, true, &m->u.compute_reply.count},
                     {"scalars", F_MAP, true, &a},
                     {"tensors", F_ARRAY, true, &b}};
        if ((rc = walk(body, f, 3, "body", d)) ||
            (rc = decode_kvlist(m, a, &m->u.compute_reply.scalars, true, "body.scalars", d)) ||
            (rc = decode_tensors(m, b, frames, n_frames, lim, d)))
            return rc;
        want_raw = n_frames - 1;
        break;
    }
    case FS_MSG_ERROR: {
        field f[] = {{"code", F_NAME, true, m->u.error.code},
                     {"text", F_TEXT, true, m->u.error.text},
                     {"supported", F_ARRAY, false, &a}};
        if ((rc = walk(body, f, 3, "body", d)))
            return rc;
        if (a) {
            if (a->via.array.size != 2)
                return fs_diag_set(d, FS_EPROTO, "body.supported: not [min, max]");
            field s0 = {"supported[0]", F_U32, true, &m->u.error.supported_min};
            field s1 = {"supported[1]", F_U32, true, &m->u.error.supported_max};
            if ((rc = store_field(&s0, &a->via.array.ptr[0], "body", d)) ||
                (rc = store_field(&s1, &a->via.array.ptr[1], "body", d)))
                return rc;
            m->u.error.has_supported = true;
        }
        break;
    }
    case FS_MSG_BYE: {
        field f[] = {{"reason", F_TEXT, true, m->u.bye.reason}};
        if ((rc = walk(body, f, 1, "body", d)))
            return rc;
        break;
    }
    case FS_MSG_COMPUTE_HEAD:
        if ((rc = decode_head(m, body, lim, d)))
            return rc;
        break;
    case FS_MSG_COMPUTE_PART:
        if ((rc = decode_part(m, body, frames, n_frames, d)))
            return rc;
        want_raw = n_frames - 1;
        break;
    default:
        return fs_diag_set(d, FS_EPROTO, "envelope.t: unknown message type %d", (int)m->type);
    }
    if (n_frames - 1 != want_raw)
        return fs_diag_set(d, FS_EPROTO, "%s: %zu raw frames, expected %zu",
                           fs_msg_type_name(m->type), n_frames - 1, want_raw);
    return 0;
}

int fs_mp_precheck(const uint8_t *buf, size_t len, unsigned max_depth, size_t max_objects)
{
    /* `left[k]` = objects still expected at nesting level k; level 0 is the top (one object). */
    size_t left[65];
    unsigned depth = 0;
    size_t pos = 0, objects = 0;
    if (max_depth > 64)
        max_depth = 64;
    left[0] = 1;
    for (;;) {
        while (left[depth] == 0) {
            if (depth == 0)
                return pos == len ? 0 : FS_EFORMAT;
            depth--;
        }
        if (pos >= len || ++objects > max_objects)
            return FS_EFORMAT;
        left[depth]--;
        uint8_t b = buf[pos++];
        size_t skip = 0, count = 0, lenbytes = 0, per = 0; /* per: objects per entry (containers) */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* positive/negative fixint, nil, false, true */
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f; /* fixstr */
        } else if (b >= 0x90 && b <= 0x9f) {
            count = b & 0x0f;
            per = 1;
        } else if (b >= 0x80 && b <= 0x8f) {
            count = b & 0x0f;
            per = 2;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;            /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;            /* bin32, str32 */
            case 0xc7: lenbytes = 1; skip = 1; break;             /* ext8: len, type */
            case 0xc8: lenbytes = 2; skip = 1; break;             /* ext16 */
            case 0xc9: lenbytes = 4; skip = 1; break;             /* ext32 */
            case 0xca: skip = 4; break;                           /* float32 */
            case 0xcb: skip = 8; break;                           /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;                /* (u)int8 */
            case 0xcd: case 0xd1: skip = 2; break;                /* (u)int16 */
            case 0xce: case 0xd2: skip = 4; break;                /* (u)int32 */
            case 0xcf: case 0xd3: skip = 8; break;                /* (u)int64 */
            case 0xd4: skip = 2; break;                           /* fixext1: type + 1 */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: lenbytes = 2; per = 1; break;              /* array16 */
            case 0xdd: lenbytes = 4; per = 1; break;              /* array32 */
            case 0xde: lenbytes = 2; per = 2; break;              /* map16 */
            case 0xdf: lenbytes = 4; per = 2; break;              /* map32 */
            default: return FS_EFORMAT;                           /* 0xc1: never used */
            }
        }
        if (lenbytes) {
            if (len - pos < lenbytes)
                return FS_EFORMAT;
            size_t n = 0;
            for (size_t i = 0; i < lenbytes; i++)
                n = (n << 8) | buf[pos + i];
            pos += lenbytes;
            if (per)
                count = n;
            else
                skip += n;
        }
        if (skip) {
            if (len - pos < skip)
                return FS_EFORMAT;
            pos += skip;
        }
        if (per && count) {
            /* every element takes at least one byte: a count the rest cannot hold is a lie */
            if (count > (len - pos) / per || depth + 1 > max_depth)
                return FS_EFORMAT;
            left[++depth] = count * per;
        }
    }
}

int fs_wire_decode(const fs_wire_buf *frames, size_t n, const fs_wire_limits *lim_in,
                   fs_wire_msg **out, uint64_t *peer_version, fs_diag *d)
{
    fs_wire_limits lim = lim_in ? *lim_in : fs_wire_limits_default();
    int rc;
    *out = NULL;
    if (n < 1)
        return fs_diag_set(d, FS_EFORMAT, "empty message");
    if (n > lim.max_frames)
        return fs_diag_set(d, FS_EFORMAT, "%zu frames (limit %zu)", n, lim.max_frames);
    if (frames[0].len > lim.max_header_bytes)
        return fs_diag_set(d, FS_EFORMAT, "header frame of %zu bytes (limit %zu)", frames[0].len,
                           lim.max_header_bytes);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && frames[i].len > lim.max_chunk_bytes)
            return fs_diag_set(d, FS_EFORMAT, "frame %zu has %zu bytes (limit %zu)", i,
                               frames[i].len, lim.max_chunk_bytes);
        if (fs_add_size(total, frames[i].len, &total) || total > lim.max_message_bytes)
            return fs_diag_set(d, FS_EFORMAT, "message larger than %zu bytes",
                               lim.max_message_bytes);
    }
    if (fs_mp_precheck(frames[0].data, frames[0].len, lim.max_depth, lim.max_objects) != 0)
        return fs_diag_set(d, FS_EFORMAT, "header: not one well-formed MessagePack object within "
                           "depth %u / %zu objects", lim.max_depth, lim.max_objects);
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&res, frames[0].data, frames[0].len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != frames[0].len) {
        msgpack_unpacked_destroy(&res);
        return fs_diag_set(d, FS_EFORMAT, "header: MessagePack parse failed (%d, %zu of %zu bytes)",
                           (int)ur, off, frames[0].len);
    }
    fs_wire_msg *m = calloc(1, sizeof *m);
    if (!m || !(m->owned = calloc(1, sizeof *m->owned))) {
        free(m);
        msgpack_unpacked_destroy(&res);
        return fs_diag_set(d, FS_ENOMEM, "decode: out of memory");
    }
    const msgpack_object *env = &res.data;
    if (env->type != MSGPACK_OBJECT_MAP) {
        rc = fs_diag_set(d, FS_EPROTO, "envelope: not a map");
        goto fail;
    }
    /* The version first: a newer major may change everything else. */
    uint64_t v = 0;
    bool have_v = false;
    for (uint32_t i = 0; i < env->via.map.size; i++) {
        const msgpack_object_kv *kv = &env->via.map.ptr[i];
        if (key_is(&kv->key, "v")) {
            if (have_v || kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                rc = fs_diag_set(d, FS_EPROTO, "envelope.v: duplicate or not an unsigned integer");
                goto fail;
            }
            have_v = true;
            v = kv->val.via.u64;
        }
    }
    if (!have_v) {
        rc = fs_diag_set(d, FS_EPROTO, "envelope.v: missing");
        goto fail;
    }
    if (v != FS_WIRE_PROTO) {
        if (peer_version)
            *peer_version = v;
        rc = fs_diag_set(d, FS_EUNSUPPORTED, "protocol version %llu not supported (supported %d..%d)",
                         (unsigned long long)v, FS_WIRE_PROTO_MIN, FS_WIRE_PROTO_MAX);
        goto fail;
    }
    uint32_t type = 0, v_again = 0;
    const msgpack_object *body = NULL;
    field f[] = {{"v", F_U32, true, &v_again}, /* checked above; listed for duplicate detection */
                 {"t", F_U32, true, &type},
                 {"job", F_NAME0, true, m->job},
                 {"round", F_U32, true, &m->round},
                 {"step", F_U32, true, &m->step},
                 {"seq", F_U64, true, &m->seq},
                 {"body", F_MAP, true, &body}};
    if ((rc = walk(env, f, 7, "envelope", d)))
        goto fail;
    if (type < 1 || type > FS_MSG_TYPE_MAX) {
        rc = fs_diag_set(d, FS_EPROTO, "envelope.t: unknown message type %u", type);
        goto fail;
    }
    m->type = (fs_msg_type)type;
    if ((rc = decode_body(m, body, frames, n, &lim, d))) {
        fs_diag_prefix(d, "%s", fs_msg_type_name(m->type));
        goto fail;
    }
    msgpack_unpacked_destroy(&res);
    *out = m;
    return 0;
fail:
    msgpack_unpacked_destroy(&res);
    fs_wire_msg_free(m);
    return rc;
}
