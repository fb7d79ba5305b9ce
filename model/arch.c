/*
 * arch.c — architecture descriptions (fs_arch.h): constructors for standard ResNets and MLPs,
 * consistency checks, and the versioned JSON form stored under __metadata__["fedslim.arch"]
 * (schema in docs/model-format.md). The JSON reader checks every field's type and range and names
 * the field path in its errors; it never trusts a count before checking it against a limit.
 */
#include "fs_arch.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_json_internal.h"

#define MAX_WIDTH 65536
#define MAX_SIDE 65536
#define MAX_CLASSES 1000000
#define MAX_RANK 65536
#define MAX_NM_M 64
#define ARCH_JSON_MAX_DEPTH 16
#define ARCH_JSON_MAX_BYTES ((size_t)16 << 20)

/* ---- constructors ---------------------------------------------------------------------------- */

static void set_identity_norm(fs_arch *a)
{
    for (int c = 0; c < FS_MAX_CHANNELS_IN; c++) {
        a->mean[c] = 0.0f;
        a->std[c] = 1.0f;
    }
}

static int check_input(int in_c, int in_h, int in_w, int num_classes, fs_diag *d)
{
    if (in_c < 1 || in_c > FS_MAX_CHANNELS_IN) {
        return fs_diag_set(d, FS_EINVAL, "input channels %d: expected 1..%d", in_c,
                           FS_MAX_CHANNELS_IN);
    }
    if (in_h < 1 || in_h > MAX_SIDE || in_w < 1 || in_w > MAX_SIDE) {
        return fs_diag_set(d, FS_EINVAL, "input size %dx%d: expected 1..%d", in_h, in_w,
                           MAX_SIDE);
    }
    if (num_classes < 1 || num_classes > MAX_CLASSES) {
        return fs_diag_set(d, FS_EINVAL, "num_classes %d: expected 1..%d", num_classes,
                           MAX_CLASSES);
    }
    return 0;
}

int fs_arch_resnet(fs_arch *a, fs_block_type block, fs_stem_type stem, int n_stages,
                   const int *depths, const int *widths, int in_c, int in_h, int in_w,
                   int num_classes, fs_diag *d)
{
    int rc = check_input(in_c, in_h, in_w, num_classes, d);
    if (rc != 0) {
        return rc;
    }
    if (block != FS_BLOCK_BASIC && block != FS_BLOCK_BOTTLENECK) {
        return fs_diag_set(d, FS_EINVAL, "resnet: unknown block type %d", (int)block);
    }
    if (stem != FS_STEM_CIFAR && stem != FS_STEM_IMAGENET) {
        return fs_diag_set(d, FS_EINVAL, "resnet: unknown stem type %d", (int)stem);
    }
    if (n_stages < 1 || n_stages > FS_MAX_STAGES) {
        return fs_diag_set(d, FS_EINVAL, "resnet: %d stages, expected 1..%d", n_stages,
                           FS_MAX_STAGES);
    }
    int expansion = block == FS_BLOCK_BOTTLENECK ? 4 : 1;
    for (int s = 0; s < n_stages; s++) {
        if (depths[s] < 0 || depths[s] > FS_MAX_BLOCKS) {
            return fs_diag_set(d, FS_EINVAL, "resnet: stage %d depth %d, expected 0..%d", s + 1,
                               depths[s], FS_MAX_BLOCKS);
        }
        if (widths[s] < 1 || widths[s] * (long)expansion > MAX_WIDTH) {
            return fs_diag_set(d, FS_EINVAL, "resnet: stage %d width %d out of range", s + 1,
                               widths[s]);
        }
    }
    fs_arch *t = calloc(1, sizeof *t);
    if (!t) {
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    t->version = FS_ARCH_VERSION;
    t->type = FS_ARCH_RESNET;
    t->in_c = in_c;
    t->in_h = in_h;
    t->in_w = in_w;
    t->num_classes = num_classes;
    set_identity_norm(t);
    t->block = block;
    t->stem = stem;
    t->stem_width = widths[0];         /* torchvision: conv1 has as many channels as layer1's inner width */
    t->n_stages = n_stages;
    int cin = t->stem_width;
    for (int s = 0; s < n_stages; s++) {
        fs_stage_arch *st = &t->stages[s];
        st->width = widths[s] * expansion;
        st->n_blocks = depths[s];
        for (int b = 0; b < depths[s]; b++) {
            fs_block_arch *bl = &st->blocks[b];
            bl->mid[0] = widths[s];
            bl->mid[1] = block == FS_BLOCK_BOTTLENECK ? widths[s] : 0;
            bl->stride = (s > 0 && b == 0) ? 2 : 1;
            bl->downsample = bl->stride != 1 || cin != st->width;
            cin = st->width;
        }
        if (depths[s] == 0) {
            st->width = cin;            /* an empty stage passes its input through */
        }
    }
    rc = fs_arch_validate(t, d);
    if (rc == 0) {
        *a = *t;
    }
    free(t);
    return rc;
}

int fs_arch_mlp(fs_arch *a, int n_hidden, const int *hidden, int in_c, int in_h, int in_w,
                int num_classes, fs_diag *d)
{
    int rc = check_input(in_c, in_h, in_w, num_classes, d);
    if (rc != 0) {
        return rc;
    }
    if (n_hidden < 0 || n_hidden > FS_MAX_HIDDEN) {
        return fs_diag_set(d, FS_EINVAL, "mlp: %d hidden layers, expected 0..%d", n_hidden,
                           FS_MAX_HIDDEN);
    }
    fs_arch *t = calloc(1, sizeof *t);
    if (!t) {
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    t->version = FS_ARCH_VERSION;
    t->type = FS_ARCH_MLP;
    t->in_c = in_c;
    t->in_h = in_h;
    t->in_w = in_w;
    t->num_classes = num_classes;
    set_identity_norm(t);
    t->n_hidden = n_hidden;
    for (int i = 0; i < n_hidden; i++) {
        t->hidden[i] = hidden[i];
    }
    rc = fs_arch_validate(t, d);
    if (rc == 0) {
        *a = *t;
    }
    free(t);
    return rc;
}

/* ---- validation ------------------------------------------------------------------------------ */

static int opts_zero(const fs_layer_opts *o)
{
    return o->rank == 0 && o->nm_n == 0 && o->nm_m == 0 && o->qbits == 0;
}

static int check_opts(const fs_layer_opts *o, const char *what, fs_diag *d)
{
    if (o->rank < 0 || o->rank > MAX_RANK) {
        return fs_diag_set(d, FS_EINVAL, "%s: rank %d, expected 0..%d", what, o->rank, MAX_RANK);
    }
    if (!(o->nm_n == 0 && o->nm_m == 0) &&
        !(o->nm_n >= 1 && o->nm_n < o->nm_m && o->nm_m <= MAX_NM_M)) {
        return fs_diag_set(d, FS_EINVAL, "%s: N:M sparsity %d:%d, expected 1 <= N < M <= %d", what,
                           o->nm_n, o->nm_m, MAX_NM_M);
    }
    if (o->qbits != 0 && o->qbits != 8) {
        return fs_diag_set(d, FS_EINVAL, "%s: qbits %d, expected 0 or 8", what, o->qbits);
    }
    return 0;
}

static int origin_ok(const char *s)
{
    size_t n = strnlen(s, 32);
    if (n == 32) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

int fs_arch_validate(const fs_arch *a, fs_diag *d)
{
    char what[96];
    int rc;
    if (a->version != FS_ARCH_VERSION) {
        return fs_diag_set(d, FS_EUNSUPPORTED,
                           "fedslim.arch version %d is not supported (this build reads %d)",
                           a->version, FS_ARCH_VERSION);
    }
    if ((rc = check_input(a->in_c, a->in_h, a->in_w, a->num_classes, d)) != 0) {
        return rc;
    }
    for (int c = 0; c < a->in_c; c++) {
        if (!isfinite(a->mean[c]) || !isfinite(a->std[c]) || !(a->std[c] > 0.0f)) {
            return fs_diag_set(d, FS_EINVAL, "channel %d: mean %g / std %g (std must be > 0)", c,
                               (double)a->mean[c], (double)a->std[c]);
        }
    }
    if (a->type == FS_ARCH_MLP) {
        if (a->n_hidden < 0 || a->n_hidden > FS_MAX_HIDDEN) {
            return fs_diag_set(d, FS_EINVAL, "mlp: %d hidden layers, expected 0..%d", a->n_hidden,
                               FS_MAX_HIDDEN);
        }
        for (int i = 0; i < a->n_hidden; i++) {
            if (a->hidden[i] < 1 || a->hidden[i] > MAX_WIDTH) {
                return fs_diag_set(d, FS_EINVAL, "hidden[%d]: width %d, expected 1..%d", i,
                                   a->hidden[i], MAX_WIDTH);
            }
        }
        for (int i = 0; i <= a->n_hidden; i++) {
            snprintf(what, sizeof what, "layers[%d] (fc%d)", i, i + 1);
            if ((rc = check_opts(&a->mlp_opts[i], what, d)) != 0) {
                return rc;
            }
        }
        return 0;
    }
    if (a->type != FS_ARCH_RESNET) {
        return fs_diag_set(d, FS_EINVAL, "unknown architecture type %d", (int)a->type);
    }
    if (a->block != FS_BLOCK_BASIC && a->block != FS_BLOCK_BOTTLENECK) {
        return fs_diag_set(d, FS_EINVAL, "unknown block type %d", (int)a->block);
    }
    if (a->stem != FS_STEM_CIFAR && a->stem != FS_STEM_IMAGENET) {
        return fs_diag_set(d, FS_EINVAL, "unknown stem type %d", (int)a->stem);
    }
    if (a->stem_width < 1 || a->stem_width > MAX_WIDTH) {
        return fs_diag_set(d, FS_EINVAL, "stem_width %d, expected 1..%d", a->stem_width,
                           MAX_WIDTH);
    }
    if ((rc = check_opts(&a->stem_opts, "stem_opts", d)) != 0 ||
        (rc = check_opts(&a->fc_opts, "fc_opts", d)) != 0) {
        return rc;
    }
    if (a->n_stages < 1 || a->n_stages > FS_MAX_STAGES) {
        return fs_diag_set(d, FS_EINVAL, "%d stages, expected 1..%d", a->n_stages, FS_MAX_STAGES);
    }
    int bottleneck = a->block == FS_BLOCK_BOTTLENECK;
    int cin = a->stem_width;
    for (int s = 0; s < a->n_stages; s++) {
        const fs_stage_arch *st = &a->stages[s];
        if (st->width < 1 || st->width > MAX_WIDTH) {
            return fs_diag_set(d, FS_EINVAL, "stages[%d].width: %d, expected 1..%d", s, st->width,
                               MAX_WIDTH);
        }
        if (st->n_blocks < 0 || st->n_blocks > FS_MAX_BLOCKS) {
            return fs_diag_set(d, FS_EINVAL, "stages[%d]: %d blocks, expected 0..%d", s,
                               st->n_blocks, FS_MAX_BLOCKS);
        }
        if (st->n_blocks == 0 && st->width != cin) {
            return fs_diag_set(d, FS_EINVAL,
                               "stages[%d]: no blocks, so its width must equal its input width "
                               "%d (is %d)",
                               s, cin, st->width);
        }
        for (int b = 0; b < st->n_blocks; b++) {
            const fs_block_arch *bl = &st->blocks[b];
            for (int k = 0; k < 1 + bottleneck; k++) {
                if (bl->mid[k] < 1 || bl->mid[k] > MAX_WIDTH) {
                    return fs_diag_set(d, FS_EINVAL,
                                       "stages[%d].blocks[%d].mid[%d]: %d, expected 1..%d", s, b,
                                       k, bl->mid[k], MAX_WIDTH);
                }
            }
            if (!bottleneck && bl->mid[1] != 0) {
                return fs_diag_set(d, FS_EINVAL,
                                   "stages[%d].blocks[%d].mid: a basic block has one inner "
                                   "width",
                                   s, b);
            }
            if (bl->stride != 1 && bl->stride != 2) {
                return fs_diag_set(d, FS_EINVAL, "stages[%d].blocks[%d].stride: %d, expected 1 or 2",
                                   s, b, bl->stride);
            }
            if (bl->downsample != 0 && bl->downsample != 1) {
                return fs_diag_set(d, FS_EINVAL, "stages[%d].blocks[%d].downsample: %d", s, b,
                                   bl->downsample);
            }
            if (!bl->downsample && (bl->stride != 1 || cin != st->width)) {
                return fs_diag_set(d, FS_EINVAL,
                                   "stages[%d].blocks[%d]: stride %d and %d -> %d channels need a "
                                   "downsample shortcut",
                                   s, b, bl->stride, cin, st->width);
            }
            for (int k = 0; k < 3; k++) {
                snprintf(what, sizeof what, "stages[%d].blocks[%d].conv[%d]", s, b, k);
                if (k == 2 && !bottleneck && !opts_zero(&bl->conv[k])) {
                    return fs_diag_set(d, FS_EINVAL, "%s: a basic block has two convolutions",
                                       what);
                }
                if ((rc = check_opts(&bl->conv[k], what, d)) != 0) {
                    return rc;
                }
            }
            snprintf(what, sizeof what, "stages[%d].blocks[%d].ds", s, b);
            if (!bl->downsample && !opts_zero(&bl->ds)) {
                return fs_diag_set(d, FS_EINVAL, "%s: options for an absent downsample", what);
            }
            if ((rc = check_opts(&bl->ds, what, d)) != 0) {
                return rc;
            }
            if (!origin_ok(bl->origin)) {
                return fs_diag_set(d, FS_EINVAL,
                                   "stages[%d].blocks[%d].origin: expected up to 31 characters "
                                   "of [A-Za-z0-9._-]",
                                   s, b);
            }
            cin = st->width;
        }
    }
    return 0;
}

/* ---- to JSON --------------------------------------------------------------------------------- */

/* Appends helpers return nonzero on allocation failure; all failures map to FS_ENOMEM. */
static json_t *opts_json(const fs_layer_opts *o)
{
    json_t *j = json_object();
    if (!j) {
        return NULL;
    }
    int bad = 0;
    if (o->rank) {
        bad |= json_object_set_new(j, "rank", json_integer(o->rank));
    }
    if (o->nm_n || o->nm_m) {
        bad |= json_object_set_new(j, "nm", json_pack("[ii]", o->nm_n, o->nm_m));
    }
    if (o->qbits) {
        bad |= json_object_set_new(j, "qbits", json_integer(o->qbits));
    }
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *floats_json(const float *v, int n)
{
    json_t *j = json_array();
    for (int i = 0; j && i < n; i++) {
        if (json_array_append_new(j, json_real((double)v[i])) != 0) {
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

static json_t *block_json(const fs_arch *a, const fs_block_arch *bl)
{
    int bottleneck = a->block == FS_BLOCK_BOTTLENECK;
    json_t *j = json_object();
    if (!j) {
        return NULL;
    }
    int bad = 0;
    bad |= json_object_set_new(j, "mid", bottleneck ? json_pack("[ii]", bl->mid[0], bl->mid[1])
                                                    : json_pack("[i]", bl->mid[0]));
    bad |= json_object_set_new(j, "stride", json_integer(bl->stride));
    bad |= json_object_set_new(j, "downsample", json_boolean(bl->downsample));
    if (bl->origin[0]) {
        bad |= json_object_set_new(j, "origin", json_string(bl->origin));
    }
    int nconv = bottleneck ? 3 : 2;
    int any = 0;
    for (int k = 0; k < nconv; k++) {
        any |= !opts_zero(&bl->conv[k]);
    }
    if (any) {
        json_t *c = json_array();
        bad |= c == NULL;
        for (int k = 0; c && k < nconv; k++) {
            bad |= json_array_append_new(c, opts_json(&bl->conv[k]));
        }
        bad |= json_object_set_new(j, "conv", c);
    }
    if (!opts_zero(&bl->ds)) {
        bad |= json_object_set_new(j, "ds", opts_json(&bl->ds));
    }
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

int fs_arch_to_json(const fs_arch *a, char **out, fs_diag *d)
{
    int rc = fs_arch_validate(a, d);
    if (rc != 0) {
        return rc;
    }
    int bad = 0;
    json_t *j = json_object();
    if (!j) {
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    bad |= json_object_set_new(j, "version", json_integer(a->version));
    bad |= json_object_set_new(j, "type", json_string(a->type == FS_ARCH_MLP ? "mlp" : "resnet"));
    bad |= json_object_set_new(j, "input", json_pack("[iii]", a->in_c, a->in_h, a->in_w));
    bad |= json_object_set_new(j, "num_classes", json_integer(a->num_classes));
    bad |= json_object_set_new(j, "mean", floats_json(a->mean, a->in_c));
    bad |= json_object_set_new(j, "std", floats_json(a->std, a->in_c));
    if (a->type == FS_ARCH_MLP) {
        json_t *h = json_array();
        bad |= h == NULL;
        for (int i = 0; h && i < a->n_hidden; i++) {
            bad |= json_array_append_new(h, json_integer(a->hidden[i]));
        }
        bad |= json_object_set_new(j, "hidden", h);
        int any = 0;
        for (int i = 0; i <= a->n_hidden; i++) {
            any |= !opts_zero(&a->mlp_opts[i]);
        }
        if (any) {
            json_t *l = json_array();
            bad |= l == NULL;
            for (int i = 0; l && i <= a->n_hidden; i++) {
                bad |= json_array_append_new(l, opts_json(&a->mlp_opts[i]));
            }
            bad |= json_object_set_new(j, "layers", l);
        }
    } else {
        bad |= json_object_set_new(
            j, "block", json_string(a->block == FS_BLOCK_BOTTLENECK ? "bottleneck" : "basic"));
        bad |= json_object_set_new(
            j, "stem", json_string(a->stem == FS_STEM_IMAGENET ? "imagenet" : "cifar"));
        bad |= json_object_set_new(j, "stem_width", json_integer(a->stem_width));
        if (!opts_zero(&a->stem_opts)) {
            bad |= json_object_set_new(j, "stem_opts", opts_json(&a->stem_opts));
        }
        if (!opts_zero(&a->fc_opts)) {
            bad |= json_object_set_new(j, "fc_opts", opts_json(&a->fc_opts));
        }
        json_t *stages = json_array();
        bad |= stages == NULL;
        for (int s = 0; stages && s < a->n_stages; s++) {
            const fs_stage_arch *st = &a->stages[s];
            json_t *sj = json_object();
            json_t *bj = json_array();
            bad |= json_object_set_new(sj, "width", json_integer(st->width));
            for (int b = 0; bj && b < st->n_blocks; b++) {
                bad |= json_array_append_new(bj, block_json(a, &st->blocks[b]));
            }
            bad |= json_object_set_new(sj, "blocks", bj);
            bad |= json_array_append_new(stages, sj);
        }
        bad |= json_object_set_new(j, "stages", stages);
    }
    /* 9 significant digits print every float32 exactly (round trip through double). */
    char *text = bad ? NULL : json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(j);
    if (!text) {
        return fs_diag_set(d, FS_ENOMEM, "out of memory writing the architecture JSON");
    }
    *out = text;
    return 0;
}

/* ---- from JSON ------------------------------------------------------------------------------- */

/* Every error names the field path (e.g. "stages[1].blocks[0].mid[0]"). */
static int fail(fs_diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(fs_diag *d, const char *path, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fs_diag_set(d, FS_EFORMAT, "%s: %s", path[0] ? path : "(top level)", msg);
}

/* snprintf into a path buffer; paths are bounded by the schema, truncation only shortens text */
static void pathf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static void join(char *out, size_t cap, const char *parent, const char *key)
{
    pathf(out, cap, "%s%s%s", parent, parent[0] ? "." : "", key);
}

static int check_keys(json_t *obj, const char *path, const char *const *allowed, fs_diag *d)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        int ok = 0;
        for (int i = 0; allowed[i]; i++) {
            ok |= strcmp(key, allowed[i]) == 0;
        }
        if (!ok) {
            char pk[64];
            return fail(d, path, "unknown field '%s'", fs_json_printable(key, pk, sizeof pk));
        }
    }
    return 0;
}

/* An integer in lo..hi at a path. */
static int int_at(json_t *v, const char *path, long lo, long hi, int *out, fs_diag *d)
{
    if (!v) {
        return fail(d, path, "missing field");
    }
    if (!json_is_integer(v)) {
        if (lo == 1) {
            return fail(d, path, "expected a positive integer (1..%ld)", hi);
        }
        return fail(d, path, "expected an integer in %ld..%ld", lo, hi);
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        return fail(d, path, "%lld is out of range (%ld..%ld)", (long long)x, lo, hi);
    }
    *out = (int)x;
    return 0;
}

static int int_field(json_t *obj, const char *parent, const char *key, long lo, long hi, int *out,
                     fs_diag *d)
{
    char path[160];
    join(path, sizeof path, parent, key);
    return int_at(json_object_get(obj, key), path, lo, hi, out, d);
}

static int array_field(json_t *obj, const char *parent, const char *key, size_t lo, size_t hi,
                       json_t **out, fs_diag *d)
{
    char path[160];
    join(path, sizeof path, parent, key);
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return fail(d, path, "missing field");
    }
    if (!json_is_array(v)) {
        return fail(d, path, "expected an array");
    }
    size_t n = json_array_size(v);
    if (n < lo || n > hi) {
        if (lo == hi) {
            return fail(d, path, "expected %zu elements, found %zu", lo, n);
        }
        return fail(d, path, "expected %zu..%zu elements, found %zu", lo, hi, n);
    }
    *out = v;
    return 0;
}

static int opts_from(json_t *v, const char *path, fs_layer_opts *o, fs_diag *d)
{
    static const char *const keys[] = {"rank", "nm", "qbits", NULL};
    int rc;
    if (!json_is_object(v)) {
        return fail(d, path, "expected an object");
    }
    if ((rc = check_keys(v, path, keys, d)) != 0) {
        return rc;
    }
    if (json_object_get(v, "rank") &&
        (rc = int_field(v, path, "rank", 1, MAX_RANK, &o->rank, d)) != 0) {
        return rc;
    }
    if (json_object_get(v, "nm")) {
        json_t *nm;
        char p[200];
        if ((rc = array_field(v, path, "nm", 2, 2, &nm, d)) != 0) {
            return rc;
        }
        pathf(p, sizeof p, "%s.nm[0]", path);
        if ((rc = int_at(json_array_get(nm, 0), p, 1, MAX_NM_M - 1, &o->nm_n, d)) != 0) {
            return rc;
        }
        pathf(p, sizeof p, "%s.nm[1]", path);
        if ((rc = int_at(json_array_get(nm, 1), p, 2, MAX_NM_M, &o->nm_m, d)) != 0) {
            return rc;
        }
        if (o->nm_n >= o->nm_m) {
            return fail(d, path, "nm: N %d must be less than M %d", o->nm_n, o->nm_m);
        }
    }
    if (json_object_get(v, "qbits") &&
        (rc = int_field(v, path, "qbits", 8, 8, &o->qbits, d)) != 0) {
        return rc;
    }
    return 0;
}

static int opt_opts_field(json_t *obj, const char *parent, const char *key, fs_layer_opts *o,
                          fs_diag *d)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return 0;
    }
    char path[160];
    join(path, sizeof path, parent, key);
    return opts_from(v, path, o, d);
}

static int block_from(json_t *v, const char *path, int bottleneck, fs_block_arch *bl, fs_diag *d)
{
    static const char *const keys[] = {"mid", "stride", "downsample", "origin", "conv", "ds",
                                       NULL};
    char p[200];
    int rc;
    if (!json_is_object(v)) {
        return fail(d, path, "expected an object");
    }
    if ((rc = check_keys(v, path, keys, d)) != 0) {
        return rc;
    }
    json_t *mid;
    size_t nmid = bottleneck ? 2 : 1;
    if ((rc = array_field(v, path, "mid", nmid, nmid, &mid, d)) != 0) {
        return rc;
    }
    for (size_t k = 0; k < nmid; k++) {
        pathf(p, sizeof p, "%s.mid[%zu]", path, k);
        if ((rc = int_at(json_array_get(mid, k), p, 1, MAX_WIDTH, &bl->mid[k], d)) != 0) {
            return rc;
        }
    }
    if ((rc = int_field(v, path, "stride", 1, 2, &bl->stride, d)) != 0) {
        return rc;
    }
    json_t *ds = json_object_get(v, "downsample");
    join(p, sizeof p, path, "downsample");
    if (!ds) {
        return fail(d, p, "missing field");
    }
    if (!json_is_boolean(ds)) {
        return fail(d, p, "expected true or false");
    }
    bl->downsample = json_is_true(ds);
    json_t *origin = json_object_get(v, "origin");
    if (origin) {
        join(p, sizeof p, path, "origin");
        if (!json_is_string(origin) || json_string_length(origin) >= sizeof bl->origin) {
            return fail(d, p, "expected a string of at most %zu characters",
                        sizeof bl->origin - 1);
        }
        memcpy(bl->origin, json_string_value(origin), json_string_length(origin) + 1);
    }
    if (json_object_get(v, "conv")) {
        json_t *conv;
        size_t nconv = bottleneck ? 3 : 2;
        if ((rc = array_field(v, path, "conv", nconv, nconv, &conv, d)) != 0) {
            return rc;
        }
        for (size_t k = 0; k < nconv; k++) {
            pathf(p, sizeof p, "%s.conv[%zu]", path, k);
            if ((rc = opts_from(json_array_get(conv, k), p, &bl->conv[k], d)) != 0) {
                return rc;
            }
        }
    }
    return opt_opts_field(v, path, "ds", &bl->ds, d);
}

static int floats_field(json_t *obj, const char *key, int n, float *out, fs_diag *d)
{
    json_t *arr;
    int rc = array_field(obj, "", key, (size_t)n, (size_t)n, &arr, d);
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, (size_t)i);
        char p[64];
        pathf(p, sizeof p, "%s[%d]", key, i);
        if (!json_is_number(e)) {
            return fail(d, p, "expected a number");
        }
        double x = json_number_value(e);
        if (!isfinite(x) || fabs(x) > 1e30) {
            return fail(d, p, "%g is out of range", x);
        }
        out[i] = (float)x;
    }
    return 0;
}

static int from_root(fs_arch *a, json_t *root, fs_diag *d)
{
    static const char *const resnet_keys[] = {"version", "type",  "input",      "num_classes",
                                              "mean",    "std",   "block",      "stem",
                                              "stem_width", "stem_opts", "fc_opts", "stages",
                                              NULL};
    static const char *const mlp_keys[] = {"version", "type",   "input", "num_classes",
                                           "mean",    "std",    "hidden", "layers", NULL};
    int rc;
    char p[200];
    if (!json_is_object(root)) {
        return fail(d, "", "expected a JSON object");
    }
    /* the version first: a newer file gets the version message, not a complaint about fields */
    json_t *ver = json_object_get(root, "version");
    if (!ver) {
        return fail(d, "version", "missing field");
    }
    if (!json_is_integer(ver)) {
        return fail(d, "version", "expected an integer");
    }
    if (json_integer_value(ver) != FS_ARCH_VERSION) {
        return fs_diag_set(d, FS_EUNSUPPORTED,
                           "fedslim.arch version %lld is not supported (this build reads %d)",
                           (long long)json_integer_value(ver), FS_ARCH_VERSION);
    }
    a->version = FS_ARCH_VERSION;
    json_t *type = json_object_get(root, "type");
    if (!type) {
        return fail(d, "type", "missing field");
    }
    const char *ts = json_is_string(type) ? json_string_value(type) : "";
    if (strcmp(ts, "resnet") == 0) {
        a->type = FS_ARCH_RESNET;
    } else if (strcmp(ts, "mlp") == 0) {
        a->type = FS_ARCH_MLP;
    } else {
        return fail(d, "type", "expected \"resnet\" or \"mlp\"");
    }
    if ((rc = check_keys(root, "", a->type == FS_ARCH_MLP ? mlp_keys : resnet_keys, d)) != 0) {
        return rc;
    }
    json_t *input;
    if ((rc = array_field(root, "", "input", 3, 3, &input, d)) != 0 ||
        (rc = int_at(json_array_get(input, 0), "input[0]", 1, FS_MAX_CHANNELS_IN, &a->in_c, d)) !=
            0 ||
        (rc = int_at(json_array_get(input, 1), "input[1]", 1, MAX_SIDE, &a->in_h, d)) != 0 ||
        (rc = int_at(json_array_get(input, 2), "input[2]", 1, MAX_SIDE, &a->in_w, d)) != 0 ||
        (rc = int_field(root, "", "num_classes", 1, MAX_CLASSES, &a->num_classes, d)) != 0) {
        return rc;
    }
    set_identity_norm(a);
    if (json_object_get(root, "mean") &&
        (rc = floats_field(root, "mean", a->in_c, a->mean, d)) != 0) {
        return rc;
    }
    if (json_object_get(root, "std")) {
        if ((rc = floats_field(root, "std", a->in_c, a->std, d)) != 0) {
            return rc;
        }
        for (int c = 0; c < a->in_c; c++) {
            if (!(a->std[c] > 0.0f)) {
                pathf(p, sizeof p, "std[%d]", c);
                return fail(d, p, "expected a positive number");
            }
        }
    }

    if (a->type == FS_ARCH_MLP) {
        json_t *hidden;
        if ((rc = array_field(root, "", "hidden", 0, FS_MAX_HIDDEN, &hidden, d)) != 0) {
            return rc;
        }
        a->n_hidden = (int)json_array_size(hidden);
        for (int i = 0; i < a->n_hidden; i++) {
            pathf(p, sizeof p, "hidden[%d]", i);
            if ((rc = int_at(json_array_get(hidden, (size_t)i), p, 1, MAX_WIDTH, &a->hidden[i],
                             d)) != 0) {
                return rc;
            }
        }
        if (json_object_get(root, "layers")) {
            json_t *layers;
            size_t n = (size_t)a->n_hidden + 1;
            if ((rc = array_field(root, "", "layers", n, n, &layers, d)) != 0) {
                return rc;
            }
            for (size_t i = 0; i < n; i++) {
                pathf(p, sizeof p, "layers[%zu]", i);
                if ((rc = opts_from(json_array_get(layers, i), p, &a->mlp_opts[i], d)) != 0) {
                    return rc;
                }
            }
        }
        return 0;
    }

    json_t *block = json_object_get(root, "block");
    const char *bs = json_is_string(block) ? json_string_value(block) : "";
    if (!block) {
        return fail(d, "block", "missing field");
    }
    if (strcmp(bs, "basic") == 0) {
        a->block = FS_BLOCK_BASIC;
    } else if (strcmp(bs, "bottleneck") == 0) {
        a->block = FS_BLOCK_BOTTLENECK;
    } else {
        return fail(d, "block", "expected \"basic\" or \"bottleneck\"");
    }
    json_t *stem = json_object_get(root, "stem");
    const char *ss = json_is_string(stem) ? json_string_value(stem) : "";
    if (!stem) {
        return fail(d, "stem", "missing field");
    }
    if (strcmp(ss, "cifar") == 0) {
        a->stem = FS_STEM_CIFAR;
    } else if (strcmp(ss, "imagenet") == 0) {
        a->stem = FS_STEM_IMAGENET;
    } else {
        return fail(d, "stem", "expected \"cifar\" or \"imagenet\"");
    }
    if ((rc = int_field(root, "", "stem_width", 1, MAX_WIDTH, &a->stem_width, d)) != 0 ||
        (rc = opt_opts_field(root, "", "stem_opts", &a->stem_opts, d)) != 0 ||
        (rc = opt_opts_field(root, "", "fc_opts", &a->fc_opts, d)) != 0) {
        return rc;
    }
    json_t *stages;
    if ((rc = array_field(root, "", "stages", 1, FS_MAX_STAGES, &stages, d)) != 0) {
        return rc;
    }
    a->n_stages = (int)json_array_size(stages);
    static const char *const stage_keys[] = {"width", "blocks", NULL};
    for (int s = 0; s < a->n_stages; s++) {
        fs_stage_arch *st = &a->stages[s];
        json_t *sj = json_array_get(stages, (size_t)s);
        char sp[64];
        pathf(sp, sizeof sp, "stages[%d]", s);
        if (!json_is_object(sj)) {
            return fail(d, sp, "expected an object");
        }
        json_t *blocks;
        if ((rc = check_keys(sj, sp, stage_keys, d)) != 0 ||
            (rc = int_field(sj, sp, "width", 1, MAX_WIDTH, &st->width, d)) != 0 ||
            (rc = array_field(sj, sp, "blocks", 0, FS_MAX_BLOCKS, &blocks, d)) != 0) {
            return rc;
        }
        st->n_blocks = (int)json_array_size(blocks);
        for (int b = 0; b < st->n_blocks; b++) {
            pathf(p, sizeof p, "stages[%d].blocks[%d]", s, b);
            if ((rc = block_from(json_array_get(blocks, (size_t)b), p,
                                 a->block == FS_BLOCK_BOTTLENECK, &st->blocks[b], d)) != 0) {
                return rc;
            }
        }
    }
    return 0;
}

int fs_arch_from_json(fs_arch *a, const char *json, size_t len, fs_diag *d)
{
    if (len > ARCH_JSON_MAX_BYTES) {
        return fs_diag_set(d, FS_EFORMAT, "architecture JSON of %zu bytes (limit %zu)", len,
                           ARCH_JSON_MAX_BYTES);
    }
    size_t deep = fs_json_depth_exceeded(json, len, ARCH_JSON_MAX_DEPTH);
    if (deep != (size_t)-1) {
        return fs_diag_set(d, FS_EFORMAT, "architecture JSON nested deeper than %d levels (byte %zu)",
                           ARCH_JSON_MAX_DEPTH, deep);
    }
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        char etext[JSON_ERROR_TEXT_LENGTH];
        return fs_diag_set(d, FS_EFORMAT, "architecture is not valid JSON: %s (line %d, column %d)",
                           fs_json_printable(err.text, etext, sizeof etext), err.line, err.column);
    }
    fs_arch *t = calloc(1, sizeof *t);
    int rc;
    if (!t) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
    } else if ((rc = from_root(t, root, d)) == 0) {
        rc = fs_arch_validate(t, d);
        if (rc != 0) {
            rc = FS_EFORMAT;
            if (d) {
                d->code = FS_EFORMAT;
            }
        }
    }
    if (rc == 0) {
        *a = *t;
    }
    free(t);
    json_decref(root);
    return rc;
}
