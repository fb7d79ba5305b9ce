/*
 * safetensors.c — read and write the safetensors format (8-byte LE header length, JSON header,
 * raw little-endian data). The reader holds the whole file in memory and validates every field
 * before any tensor is handed out; it does not mmap (files are small and must be validated, and a
 * file changing under a mapping would defeat the checks). The rules are those of the reference
 * implementation (tensors tile the data section exactly), listed in docs/model-format.md.
 */
#include "fs_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_json_internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedslim reads little-endian tensor data in place; big-endian hosts are not supported"
#endif

/* ---- dtypes ---------------------------------------------------------------------------------- */

static const char *const dtype_names[FS_ST_NDTYPES] = {"F32", "F16", "BF16", "I8",
                                                       "U8",  "I32", "I64"};
static const size_t dtype_sizes[FS_ST_NDTYPES] = {4, 2, 2, 1, 1, 4, 8};

/* dtypes of the format that fedslim does not read: named in the error instead of "unknown". */
static const char *const unsupported_dtypes[] = {"F64",     "BOOL",   "I16",    "U16",
                                                 "U32",     "U64",    "F8_E4M3", "F8_E5M2",
                                                 "F8_E8M0", "F4",     "F6_E2M3", "F6_E3M2",
                                                 "C64",     "I4",     "U4"};

const char *fs_st_dtype_name(fs_st_dtype t)
{
    return (unsigned)t < FS_ST_NDTYPES ? dtype_names[t] : "?";
}

size_t fs_st_dtype_size(fs_st_dtype t)
{
    return (unsigned)t < FS_ST_NDTYPES ? dtype_sizes[t] : 0;
}

int fs_st_dtype_parse(const char *name, fs_st_dtype *out)
{
    for (int i = 0; i < FS_ST_NDTYPES; i++) {
        if (strcmp(name, dtype_names[i]) == 0) {
            *out = (fs_st_dtype)i;
            return 0;
        }
    }
    return FS_ENOTFOUND;
}

static int dtype_is_known_unsupported(const char *name)
{
    for (size_t i = 0; i < sizeof unsupported_dtypes / sizeof unsupported_dtypes[0]; i++) {
        if (strcmp(name, unsupported_dtypes[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- JSON text helpers (fs_json_internal.h) ------------------------------------------------ */

size_t fs_json_depth_exceeded(const char *s, size_t len, int limit)
{
    int depth = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') {
                i++;            /* skip the escaped character (a quote or backslash) */
            } else if (c == '"') {
                in_str = 0;
            }
            continue;
        }
        if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > limit) {
                return i;
            }
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return (size_t)-1;
}

int fs_json_key_before(const char *s, size_t len, size_t pos, char *out, size_t cap,
                       int *depth_at)
{
    int depth = 0;
    int found = 0;
    int expect_key = 0;         /* at depth 1, after '{' or ',': the next string is a key */
    int have_cand = 0;          /* that key string just closed; a ':' confirms it */
    size_t cand_begin = 0;
    size_t cand_end = 0;
    if (pos > len) {
        pos = len;
    }
    for (size_t i = 0; i < pos; i++) {
        char c = s[i];
        if (c == '"') {
            size_t j = i + 1;
            while (j < len && s[j] != '"') {
                j += (s[j] == '\\') ? 2 : 1;
            }
            if (depth == 1 && expect_key) {
                cand_begin = i + 1;
                cand_end = j < len ? j : len;
                have_cand = 1;
                expect_key = 0;
            }
            i = j;              /* at the closing quote (or past the end) */
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        }
        if (c == ':' && have_cand && depth == 1) {
            found = 1;          /* the key of the entry that follows */
        } else if (have_cand && depth == 1) {
            found = 0;          /* not a key after all */
        }
        have_cand = 0;
        if (c == '{' || c == '[') {
            depth++;
            expect_key = depth == 1 && c == '{';
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',' && depth == 1) {
            expect_key = 1;
            found = 0;
        }
        if (found == 1 && c == ':') {
            found = 2;          /* remember this key until the next one */
            size_t n = cand_end - cand_begin;
            if (cap > 0) {
                if (n > cap - 1) {
                    n = cap - 1;
                }
                memcpy(out, s + cand_begin, n);
                out[n] = '\0';
            }
        }
    }
    /* an error inside or right after a key, before its ':' */
    if (have_cand && depth == 1 && cap > 0) {
        size_t n = cand_end - cand_begin;
        if (n > cap - 1) {
            n = cap - 1;
        }
        memcpy(out, s + cand_begin, n);
        out[n] = '\0';
        found = 2;
    }
    if (!found && cap > 0) {
        out[0] = '\0';
    }
    if (depth_at) {
        *depth_at = depth;
    }
    return found != 0;
}

const char *fs_json_printable(const char *s, char *buf, size_t cap)
{
    size_t n = strlen(s);
    size_t keep = n < cap ? n : (cap > 4 ? cap - 4 : 0);
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (keep < n && cap > 4) {
        memcpy(buf + keep, "...", 3);
        keep += 3;
    }
    if (cap > 0) {
        buf[keep < cap ? keep : cap - 1] = '\0';
    }
    return buf;
}

static int has_control_chars(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            return 1;
        }
    }
    return 0;
}

/* ---- reader ---------------------------------------------------------------------------------- */

struct fs_safetensors {
    char *name;
    uint8_t *buf;               /* the whole file image */
    size_t len;
    const uint8_t *data;        /* data section: buf + 8 + header length */
    size_t data_len;
    fs_st_tensor *tensors;      /* data order */
    size_t n;
    size_t *by_name;            /* indices into tensors, sorted by name */
    char **meta_keys;           /* sorted by key */
    char **meta_vals;
    size_t n_meta;
};

void fs_safetensors_free(fs_safetensors *st)
{
    if (!st) {
        return;
    }
    for (size_t i = 0; i < st->n; i++) {
        free((char *)st->tensors[i].name);
    }
    for (size_t i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_vals[i]);
    }
    free(st->tensors);
    free(st->by_name);
    free(st->meta_keys);
    free(st->meta_vals);
    free(st->buf);
    free(st->name);
    free(st);
}

/* Formats a shape as "[2, 3]" into buf (truncated safely). */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t off = 0;
    off += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && off < cap; i++) {
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    }
    if (off < cap) {
        snprintf(buf + off, cap - off, "]");
    }
    return buf;
}

/* A non-negative JSON integer, or -1. */
static long long json_nonneg(const json_t *v)
{
    if (!json_is_integer(v)) {
        return -1;
    }
    long long x = (long long)json_integer_value(v);
    return x < 0 ? -1 : x;
}

static int parse_metadata(fs_safetensors *st, json_t *meta, fs_diag *d)
{
    const char *file = st->name;
    if (json_is_null(meta)) {
        return 0;
    }
    if (!json_is_object(meta)) {
        return fs_diag_set(d, FS_EFORMAT, "%s: __metadata__ is not a JSON object", file);
    }
    size_t n = json_object_size(meta);
    st->meta_keys = calloc(n ? n : 1, sizeof *st->meta_keys);
    st->meta_vals = calloc(n ? n : 1, sizeof *st->meta_vals);
    if (!st->meta_keys || !st->meta_vals) {
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory reading __metadata__", file);
    }
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val)
    {
        if (!json_is_string(val)) {
            char pk[96];
            return fs_diag_set(d, FS_EFORMAT, "%s: __metadata__['%s'] is not a string", file,
                               fs_json_printable(key, pk, sizeof pk));
        }
        if (strlen(key) > FS_ST_MAX_NAME) {
            char pk[64];
            return fs_diag_set(d, FS_EFORMAT, "%s: __metadata__ key '%s' longer than %d bytes",
                               file, fs_json_printable(key, pk, sizeof pk), FS_ST_MAX_NAME);
        }
        /* jansson allows NUL inside strings only with JSON_ALLOW_NUL, which we do not pass */
        char *k = strdup(key);
        char *v = strdup(json_string_value(val));
        if (!k || !v) {
            free(k);
            free(v);
            return fs_diag_set(d, FS_ENOMEM, "%s: out of memory reading __metadata__", file);
        }
        /* insertion sort by key: metadata holds a handful of pairs */
        size_t i = st->n_meta;
        while (i > 0 && strcmp(st->meta_keys[i - 1], k) > 0) {
            st->meta_keys[i] = st->meta_keys[i - 1];
            st->meta_vals[i] = st->meta_vals[i - 1];
            i--;
        }
        st->meta_keys[i] = k;
        st->meta_vals[i] = v;
        st->n_meta++;
    }
    return 0;
}

/* Parses one header entry into *t (t->name already set). */
static int parse_entry(fs_safetensors *st, fs_st_tensor *t, json_t *obj, fs_diag *d)
{
    const char *file = st->name;
    const char *name = t->name;
    char sbuf[160];
    if (!json_is_object(obj)) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': entry is not a JSON object", file,
                           name);
    }
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0) {
            char pk[64];
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': unknown field '%s'", file, name,
                               fs_json_printable(key, pk, sizeof pk));
        }
    }

    json_t *jd = json_object_get(obj, "dtype");
    json_t *js = json_object_get(obj, "shape");
    json_t *jo = json_object_get(obj, "data_offsets");
    if (!jd || !js || !jo) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': missing field '%s'", file, name,
                           !jd ? "dtype" : !js ? "shape" : "data_offsets");
    }
    if (!json_is_string(jd)) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': dtype is not a string", file, name);
    }
    const char *dt = json_string_value(jd);
    if (fs_st_dtype_parse(dt, &t->dtype) != 0) {
        if (dtype_is_known_unsupported(dt)) {
            return fs_diag_set(d, FS_EUNSUPPORTED,
                               "%s: tensor '%s': unsupported dtype '%s' (fedslim reads F32, "
                               "F16, BF16, I8, U8, I32, I64)",
                               file, name, dt);
        }
        char pd[40];
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", file, name,
                           fs_json_printable(dt, pd, sizeof pd));
    }

    if (!json_is_array(js)) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': shape is not an array", file, name);
    }
    size_t nd = json_array_size(js);
    if (nd > FS_ST_MAX_DIMS) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': shape has %zu dimensions (at most %d supported)",
                           file, name, nd, FS_ST_MAX_DIMS);
    }
    t->ndim = (int)nd;
    size_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(js, i);
        long long v = json_nonneg(e);
        if (v < 0) {
            return fs_diag_set(d, FS_EFORMAT,
                               "%s: tensor '%s': shape[%zu] is not a non-negative integer", file,
                               name, i);
        }
        t->shape[i] = (int64_t)v;
        if ((unsigned long long)v > SIZE_MAX || fs_mul_size(numel, (size_t)v, &numel)) {
            overflow = 1;
        }
    }
    size_t nbytes = 0;
    if (overflow || fs_mul_size(numel, fs_st_dtype_size(t->dtype), &nbytes)) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': shape %s of dtype %s overflows", file,
                           name, shape_str(sbuf, sizeof sbuf, t->ndim, t->shape), dt);
    }
    t->numel = numel;
    t->nbytes = nbytes;

    if (!json_is_array(jo) || json_array_size(jo) != 2) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': data_offsets is not an array of two integers", file,
                           name);
    }
    long long b = json_nonneg(json_array_get(jo, 0));
    long long e = json_nonneg(json_array_get(jo, 1));
    if (b < 0 || e < 0) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': data_offsets must be non-negative integers", file,
                           name);
    }
    if (e < b) {
        return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] end before "
                           "begin", file, name, b, e);
    }
    if ((unsigned long long)e > st->data_len) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': data_offsets [%lld, %lld] past the end of the data "
                           "section (%zu bytes; the file is %zu bytes, truncated?)",
                           file, name, b, e, st->data_len, st->len);
    }
    if ((size_t)(e - b) != nbytes) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': shape %s of dtype %s needs %zu bytes but "
                           "data_offsets cover %lld",
                           file, name, shape_str(sbuf, sizeof sbuf, t->ndim, t->shape), dt,
                           nbytes, e - b);
    }
    t->offset = (size_t)b;
    return 0;
}

static int cmp_offset(const void *pa, const void *pb)
{
    const fs_st_tensor *a = pa;
    const fs_st_tensor *b = pb;
    if (a->offset != b->offset) {
        return a->offset < b->offset ? -1 : 1;
    }
    if (a->nbytes != b->nbytes) {
        return a->nbytes < b->nbytes ? -1 : 1;
    }
    return strcmp(a->name, b->name);
}

/* qsort has no context argument, and parses may run on several threads: the by-name index is
 * built from a per-call array of (name, index) pairs instead of a file-level pointer. */
typedef struct {
    const char *name;
    size_t idx;
} name_idx;

static int cmp_name(const void *pa, const void *pb)
{
    return strcmp(((const name_idx *)pa)->name, ((const name_idx *)pb)->name);
}

static int parse_header_json(fs_safetensors *st, const char *hdr, size_t hlen, fs_diag *d)
{
    const char *file = st->name;
    size_t deep = fs_json_depth_exceeded(hdr, hlen, FS_ST_MAX_JSON_DEPTH);
    if (deep != (size_t)-1) {
        return fs_diag_set(d, FS_EFORMAT, "%s: header JSON nested deeper than %d levels (byte %zu)",
                           file, FS_ST_MAX_JSON_DEPTH, deep + 8);
    }
    json_error_t err;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        char key[128];
        int depth = 0;
        size_t pos = err.position > 0 ? (size_t)err.position : 0;
        char raw_key[128];
        char etext[JSON_ERROR_TEXT_LENGTH];
        int have = fs_json_key_before(hdr, hlen, pos, raw_key, sizeof raw_key, &depth);
        fs_json_printable(raw_key, key, sizeof key);
        fs_json_printable(err.text, etext, sizeof etext);
        int in_meta = have && strcmp(key, "__metadata__") == 0;
        if (json_error_code(&err) == json_error_duplicate_key && have) {
            if (in_meta) {
                return fs_diag_set(d, FS_EFORMAT, "%s: __metadata__%s: %s", file,
                                   depth > 1 ? "" : " appears twice", etext);
            }
            if (depth <= 1) {
                return fs_diag_set(d, FS_EFORMAT, "%s: duplicate tensor '%s' in the header", file,
                                   key);
            }
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s': duplicate field in its entry "
                               "(%s)", file, key, etext);
        }
        if (in_meta) {
            return fs_diag_set(d, FS_EFORMAT,
                               "%s: header is not valid JSON, in __metadata__: %s (header byte %zu)",
                               file, etext, pos);
        }
        if (have) {
            return fs_diag_set(d, FS_EFORMAT,
                               "%s: header is not valid JSON, in the entry of tensor '%s': %s "
                               "(header byte %zu)",
                               file, key, etext, pos);
        }
        return fs_diag_set(d, FS_EFORMAT, "%s: header is not valid JSON: %s (header byte %zu)",
                           file, etext, pos);
    }
    int rc = 0;
    name_idx *ni = NULL;
    if (!json_is_object(root)) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: header is not a JSON object", file);
        goto out;
    }
    size_t cap = json_object_size(root);
    st->tensors = calloc(cap ? cap : 1, sizeof *st->tensors);
    if (!st->tensors) {
        rc = fs_diag_set(d, FS_ENOMEM, "%s: out of memory for %zu tensor entries", file, cap);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_metadata(st, val, d)) != 0) {
                goto out;
            }
            continue;
        }
        size_t kl = strlen(key);
        if (kl == 0 || kl > FS_ST_MAX_NAME || has_control_chars(key)) {
            char pk[64];
            rc = fs_diag_set(d, FS_EFORMAT, "%s: tensor name '%s' is %s", file,
                             fs_json_printable(key, pk, sizeof pk),
                             kl == 0 ? "empty" : kl > FS_ST_MAX_NAME ? "too long"
                                                                   : "not printable");
            goto out;
        }
        fs_st_tensor *t = &st->tensors[st->n];
        t->name = strdup(key);
        if (!t->name) {
            rc = fs_diag_set(d, FS_ENOMEM, "%s: out of memory", file);
            goto out;
        }
        st->n++;
        if ((rc = parse_entry(st, t, val, d)) != 0) {
            goto out;
        }
    }

    /* The tensors must tile the data section: sorted by offset, each begins where the previous
     * ended, the last ends at the end of the file. */
    qsort(st->tensors, st->n, sizeof *st->tensors, cmp_offset);
    size_t expect = 0;
    for (size_t i = 0; i < st->n; i++) {
        const fs_st_tensor *t = &st->tensors[i];
        if (t->offset < expect) {
            const fs_st_tensor *p = &st->tensors[i - 1];
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' "
                             "[%zu, %zu]",
                             file, t->name, t->offset, t->offset + t->nbytes, p->name, p->offset,
                             p->offset + p->nbytes);
            goto out;
        }
        if (t->offset > expect) {
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: tensor '%s': gap of %zu bytes before its data_offsets [%zu, "
                             "%zu] (safetensors data must be contiguous)",
                             file, t->name, t->offset - expect, t->offset, t->offset + t->nbytes);
            goto out;
        }
        expect = t->offset + t->nbytes;
    }
    if (expect != st->data_len) {
        if (st->n > 0) {
            const fs_st_tensor *l = &st->tensors[st->n - 1];
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: %zu trailing bytes after the data of the last tensor '%s' "
                             "(ends at %zu, data section %zu bytes)",
                             file, st->data_len - expect, l->name, expect, st->data_len);
        } else {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: %zu trailing bytes after a header with no tensors",
                             file, st->data_len);
        }
        goto out;
    }

    ni = malloc((st->n ? st->n : 1) * sizeof *ni);
    st->by_name = malloc((st->n ? st->n : 1) * sizeof *st->by_name);
    if (!ni || !st->by_name) {
        rc = fs_diag_set(d, FS_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    for (size_t i = 0; i < st->n; i++) {
        ni[i].name = st->tensors[i].name;
        ni[i].idx = i;
    }
    qsort(ni, st->n, sizeof *ni, cmp_name);
    for (size_t i = 0; i < st->n; i++) {
        /* JSON_REJECT_DUPLICATES already refuses these; kept as a cheap second line */
        if (i > 0 && strcmp(ni[i - 1].name, ni[i].name) == 0) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: duplicate tensor '%s' in the header", file,
                             ni[i].name);
            goto out;
        }
        st->by_name[i] = ni[i].idx;
    }
out:
    free(ni);
    json_decref(root);
    return rc;
}

/* Validates st->buf/len (owned by st). */
static int parse_image(fs_safetensors *st, fs_diag *d)
{
    const char *file = st->name;
    if (st->len < 8) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: %zu bytes, too short for a safetensors file (no 8-byte header "
                           "length)",
                           file, st->len);
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) {
        n = (n << 8) | st->buf[i];
    }
    if (n > FS_ST_MAX_HEADER_BYTES) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: header length %llu is absurd (limit %zu bytes; not a "
                           "safetensors file?)",
                           file, (unsigned long long)n, FS_ST_MAX_HEADER_BYTES);
    }
    if (n > st->len - 8) {
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: header length %llu runs past the end of the file (%zu bytes)",
                           file, (unsigned long long)n, st->len);
    }
    st->data = st->buf + 8 + n;
    st->data_len = st->len - 8 - (size_t)n;
    return parse_header_json(st, (const char *)st->buf + 8, (size_t)n, d);
}

/* takes `buf` (malloc'd) in all cases. */
static int make(fs_safetensors **out, uint8_t *buf, size_t len, const char *name, fs_diag *d)
{
    *out = NULL;
    fs_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        free(buf);
        return fs_diag_set(d, FS_ENOMEM, "%s: out of memory", name);
    }
    st->buf = buf;
    st->len = len;
    st->name = strdup(name ? name : "(buffer)");
    if (!st->name) {
        fs_safetensors_free(st);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    int rc = parse_image(st, d);
    if (rc != 0) {
        fs_safetensors_free(st);
        return rc;
    }
    *out = st;
    return 0;
}

int fs_safetensors_open(fs_safetensors **out, const char *path, fs_diag *d)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fs_read_file(path, FS_ST_MAX_FILE_BYTES, &buf, &len, d);
    if (rc != 0) {
        return rc;
    }
    return make(out, buf, len, path, d);
}

int fs_safetensors_parse(fs_safetensors **out, const uint8_t *buf, size_t len, const char *name,
                         fs_diag *d)
{
    *out = NULL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot allocate %zu bytes", name ? name : "(buffer)",
                           len);
    }
    if (len) {
        memcpy(copy, buf, len);
    }
    return make(out, copy, len, name, d);
}

const char *fs_safetensors_name(const fs_safetensors *st)
{
    return st->name;
}

size_t fs_safetensors_count(const fs_safetensors *st)
{
    return st->n;
}

const fs_st_tensor *fs_safetensors_tensor(const fs_safetensors *st, size_t i)
{
    FS_ASSERT(i < st->n);
    return &st->tensors[i];
}

const fs_st_tensor *fs_safetensors_find(const fs_safetensors *st, const char *name)
{
    size_t lo = 0;
    size_t hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fs_st_tensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) {
            return t;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

const uint8_t *fs_safetensors_data(const fs_safetensors *st, const fs_st_tensor *t)
{
    FS_ASSERT(t >= st->tensors && t < st->tensors + st->n);
    return st->data + t->offset;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 (a normal number there) */
        f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);      /* inf, or NaN keeping its payload */
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int fs_safetensors_read_f32(const fs_safetensors *st, const fs_st_tensor *t, float *dst, size_t n,
                            fs_diag *d)
{
    FS_ASSERT(t >= st->tensors && t < st->tensors + st->n);
    if (n != t->numel) {
        return fs_diag_set(d, FS_EINVAL, "%s: tensor '%s': %zu elements wanted, the tensor has %zu",
                           st->name, t->name, n, t->numel);
    }
    const uint8_t *p = st->data + t->offset;
    switch (t->dtype) {
    case FS_ST_F32:
        if (n) {
            memcpy(dst, p, n * 4);
        }
        return 0;
    case FS_ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        return 0;
    case FS_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
        return 0;
    default:
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: tensor '%s': dtype %s where a float tensor (F32, F16, BF16) is "
                           "needed",
                           st->name, t->name, fs_st_dtype_name(t->dtype));
    }
}

int fs_safetensors_read_raw(const fs_safetensors *st, const fs_st_tensor *t, void *dst,
                            size_t nbytes, fs_diag *d)
{
    FS_ASSERT(t >= st->tensors && t < st->tensors + st->n);
    if (nbytes != t->nbytes) {
        return fs_diag_set(d, FS_EINVAL, "%s: tensor '%s': %zu bytes wanted, the tensor has %zu",
                           st->name, t->name, nbytes, t->nbytes);
    }
    if (nbytes) {
        memcpy(dst, st->data + t->offset, nbytes);
    }
    return 0;
}

const char *fs_safetensors_meta(const fs_safetensors *st, const char *key)
{
    size_t lo = 0;
    size_t hi = st->n_meta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->meta_keys[mid], key);
        if (c == 0) {
            return st->meta_vals[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

size_t fs_safetensors_meta_count(const fs_safetensors *st)
{
    return st->n_meta;
}

void fs_safetensors_meta_at(const fs_safetensors *st, size_t i, const char **key,
                            const char **value)
{
    FS_ASSERT(i < st->n_meta);
    *key = st->meta_keys[i];
    *value = st->meta_vals[i];
}

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    fs_st_dtype dtype;
    int ndim;
    int64_t shape[FS_ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} wtensor;

struct fs_safetensors_writer {
    wtensor *t;
    size_t n, cap;
    json_t *meta;               /* object, insertion order */
};

int fs_safetensors_writer_new(fs_safetensors_writer **out, fs_diag *d)
{
    *out = NULL;
    fs_safetensors_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->meta = json_object())) {
        free(w);
        return fs_diag_set(d, FS_ENOMEM, "safetensors writer: out of memory");
    }
    *out = w;
    return 0;
}

void fs_safetensors_writer_free(fs_safetensors_writer *w)
{
    if (!w) {
        return;
    }
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
    }
    free(w->t);
    json_decref(w->meta);
    free(w);
}

static int valid_utf8(const char *s)
{
    json_t *j = json_string(s);        /* NULL for invalid UTF-8 */
    int ok = j != NULL;
    json_decref(j);
    return ok;
}

int fs_safetensors_writer_add(fs_safetensors_writer *w, const char *name, fs_st_dtype dtype,
                              int ndim, const int64_t *shape, const void *data, fs_diag *d)
{
    size_t kl = strlen(name);
    if (kl == 0 || kl > FS_ST_MAX_NAME || strcmp(name, "__metadata__") == 0 ||
        has_control_chars(name) || !valid_utf8(name)) {
        char pn[64];
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: invalid tensor name '%s'",
                           fs_json_printable(name, pn, sizeof pn));
    }
    if ((unsigned)dtype >= FS_ST_NDTYPES) {
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: tensor '%s': invalid dtype %d", name,
                           (int)dtype);
    }
    if (ndim < 0 || ndim > FS_ST_MAX_DIMS) {
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: tensor '%s': %d dimensions", name,
                           ndim);
    }
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX ||
            fs_mul_size(numel, (size_t)shape[i], &numel)) {
            return fs_diag_set(d, FS_EINVAL, "safetensors writer: tensor '%s': bad shape", name);
        }
    }
    size_t nbytes;
    if (fs_mul_size(numel, fs_st_dtype_size(dtype), &nbytes)) {
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: tensor '%s': too large", name);
    }
    if (nbytes > 0 && !data) {
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: tensor '%s': no data", name);
    }
    for (size_t i = 0; i < w->n; i++) {
        if (strcmp(w->t[i].name, name) == 0) {
            return fs_diag_set(d, FS_EINVAL, "safetensors writer: duplicate tensor '%s'", name);
        }
    }
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 16;
        wtensor *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt) {
            return fs_diag_set(d, FS_ENOMEM, "safetensors writer: out of memory");
        }
        w->t = nt;
        w->cap = nc;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) {
        return fs_diag_set(d, FS_ENOMEM, "safetensors writer: out of memory");
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
    }
    t->nbytes = nbytes;
    t->data = data;
    w->n++;
    return 0;
}

int fs_safetensors_writer_meta(fs_safetensors_writer *w, const char *key, const char *value,
                               fs_diag *d)
{
    size_t kl = strlen(key);
    json_t *v = json_string(value);
    if (kl == 0 || kl > FS_ST_MAX_NAME || !valid_utf8(key) || !v) {
        json_decref(v);
        char pk[64];
        return fs_diag_set(d, FS_EINVAL,
                           "safetensors writer: invalid metadata key '%s' or value (empty, "
                           "too long or not UTF-8)",
                           fs_json_printable(key, pk, sizeof pk));
    }
    if (json_object_set_new(w->meta, key, v) != 0) {
        return fs_diag_set(d, FS_ENOMEM, "safetensors writer: out of memory");
    }
    return 0;
}

/* The 8-byte length + padded header. returns owned (malloc) in *out. */
static int build_header(fs_safetensors_writer *w, char **out, size_t *len, size_t *data_len,
                        fs_diag *d)
{
    int rc = FS_ENOMEM;
    char *text = NULL;
    json_t *root = json_object();
    if (!root) {
        goto fail;
    }
    if (json_object_size(w->meta) > 0 && json_object_set(root, "__metadata__", w->meta) != 0) {
        goto fail;
    }
    size_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        json_t *shape = json_array();
        json_t *offs = json_array();
        json_t *e = json_object();
        int bad = !shape || !offs || !e;
        for (int k = 0; !bad && k < t->ndim; k++) {
            bad |= json_array_append_new(shape, json_integer((json_int_t)t->shape[k])) != 0;
        }
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)off)) != 0 ||
              json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes))) != 0 ||
              json_object_set_new(e, "dtype", json_string(fs_st_dtype_name(t->dtype))) != 0;
        if (bad) {
            json_decref(shape);
            json_decref(offs);
            json_decref(e);
            goto fail;
        }
        if (json_object_set_new(e, "shape", shape) != 0 ||
            json_object_set_new(e, "data_offsets", offs) != 0 ||
            json_object_set_new(root, t->name, e) != 0) {
            goto fail;
        }
        if (fs_add_size(off, t->nbytes, &off)) {
            rc = fs_diag_set(d, FS_EINVAL, "safetensors writer: total size overflows");
            goto fail_set;
        }
    }
    char *j = json_dumps(root, JSON_COMPACT);
    if (!j) {
        goto fail;
    }
    size_t jl = strlen(j);
    size_t padded = fs_align_up(jl, 8);
    text = malloc(8 + padded);
    if (!text) {
        free(j);
        goto fail;
    }
    uint64_t n64 = padded;
    for (int i = 0; i < 8; i++) {
        text[i] = (char)((n64 >> (8 * i)) & 0xff);
    }
    memcpy(text + 8, j, jl);
    memset(text + 8 + jl, ' ', padded - jl);
    free(j);
    json_decref(root);
    *out = text;
    *len = 8 + padded;
    *data_len = off;
    return 0;
fail:
    rc = fs_diag_set(d, FS_ENOMEM, "safetensors writer: out of memory building the header");
fail_set:
    json_decref(root);
    free(text);
    return rc;
}

int fs_safetensors_writer_to_buffer(fs_safetensors_writer *w, uint8_t **out, size_t *len,
                                    fs_diag *d)
{
    char *hdr = NULL;
    size_t hl = 0;
    size_t dl = 0;
    int rc = build_header(w, &hdr, &hl, &dl, d);
    if (rc != 0) {
        return rc;
    }
    size_t total;
    if (fs_add_size(hl, dl, &total)) {
        free(hdr);
        return fs_diag_set(d, FS_EINVAL, "safetensors writer: total size overflows");
    }
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(hdr);
        return fs_diag_set(d, FS_ENOMEM, "safetensors writer: cannot allocate %zu bytes", total);
    }
    memcpy(buf, hdr, hl);
    free(hdr);
    size_t off = hl;
    for (size_t i = 0; i < w->n; i++) {
        if (w->t[i].nbytes) {
            memcpy(buf + off, w->t[i].data, w->t[i].nbytes);
        }
        off += w->t[i].nbytes;
    }
    *out = buf;
    *len = total;
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t r = write(fd, b, n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

int fs_safetensors_writer_write(fs_safetensors_writer *w, const char *path, fs_diag *d)
{
    char *hdr = NULL;
    size_t hl = 0;
    size_t dl = 0;
    int rc = build_header(w, &hdr, &hl, &dl, d);
    if (rc != 0) {
        return fs_diag_prefix(d, "%s", path);
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) {
        free(hdr);
        return fs_diag_set(d, FS_EINVAL, "%s: path too long", path);
    }
    /* Streams the tensors instead of building the file in memory (models can be large). */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(hdr);
        return fs_diag_errno(d, FS_EIO, "%s: cannot create", tmp);
    }
    int bad = write_all(fd, hdr, hl);
    free(hdr);
    for (size_t i = 0; !bad && i < w->n; i++) {
        bad = write_all(fd, w->t[i].data, w->t[i].nbytes);
    }
    if (bad) {
        fs_diag_errno(d, FS_EIO, "%s: write failed", tmp);
        close(fd);
        unlink(tmp);
        return FS_EIO;
    }
    if (fsync(fd) != 0) {
        fs_diag_errno(d, FS_EIO, "%s: fsync failed", tmp);
        close(fd);
        unlink(tmp);
        return FS_EIO;
    }
    if (close(fd) != 0) {
        fs_diag_errno(d, FS_EIO, "%s: close failed", tmp);
        unlink(tmp);
        return FS_EIO;
    }
    if (rename(tmp, path) != 0) {
        fs_diag_errno(d, FS_EIO, "%s: rename to %s failed", tmp, path);
        unlink(tmp);
        return FS_EIO;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}
