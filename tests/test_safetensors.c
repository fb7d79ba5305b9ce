/* test_safetensors.c — the safetensors reader and writer: PyTorch-made fixtures, dtype
 * conversions (against PyTorch and an independent formula), writer round trips, and one negative
 * case per validation rule, each checking the error code and that the message names the file and
 * the tensor. */
/* cmocka needs these first, in this order */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_safetensors.h"

static char tmpdir[256];

static const char *fixture(const char *name)
{
    static char path[1024];
    const char *src = getenv("FS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/model/%s", src ? src : ".", name);
    return path;
}

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A file made of a header text (length prefix computed) and `data`. */
static void write_st(const char *path, const char *header, const void *data, size_t dlen)
{
    size_t hl = strlen(header);
    size_t n = 8 + hl + dlen;
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) {
        buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    }
    memcpy(buf + 8, header, hl);
    if (dlen) {
        memcpy(buf + 8 + hl, data, dlen);
    }
    write_bytes(path, buf, n);
    free(buf);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fs_test_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- fixtures written by PyTorch --------------------------------------------------------------- */

static void reads_pytorch_resnet20(void **state)
{
    (void)state;
    fs_safetensors *st = NULL;
    fs_diag d = {0};
    int rc = fs_safetensors_open(&st, fixture("resnet20.safetensors"), &d);
    if (rc != 0) {
        fail_msg("%s", d.msg);
    }
    /* 1 stem conv + 5 BN tensors each for bn1, 18 block BNs, 2 downsample BNs; 18 + 2 convs; fc */
    assert_int_equal(fs_safetensors_count(st), 1 + 5 + 18 * 6 + 2 * 6 + 2);
    const fs_st_tensor *t = fs_safetensors_find(st, "conv1.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, FS_ST_F32);
    assert_int_equal(t->ndim, 4);
    assert_int_equal(t->shape[0], 16);
    assert_int_equal(t->shape[1], 1);
    assert_int_equal(t->shape[2], 3);
    assert_int_equal(t->nbytes, 16 * 9 * 4);
    assert_int_equal(t->offset, 0);   /* first in state_dict order */

    t = fs_safetensors_find(st, "layer2.0.downsample.0.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 32);
    assert_int_equal(t->shape[1], 16);

    t = fs_safetensors_find(st, "layer3.2.bn2.num_batches_tracked");
    assert_non_null(t);
    assert_int_equal(t->dtype, FS_ST_I64);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    int64_t nbt = 0;
    assert_int_equal(fs_safetensors_read_raw(st, t, &nbt, sizeof nbt, &d), 0);
    assert_true(nbt >= 1 && nbt < 1000);

    t = fs_safetensors_find(st, "fc.weight");
    assert_non_null(t);
    float *w = malloc(t->numel * sizeof *w);
    assert_int_equal(fs_safetensors_read_f32(st, t, w, t->numel, &d), 0);
    double norm = 0;
    for (size_t i = 0; i < t->numel; i++) {
        norm += (double)w[i] * w[i];
    }
    assert_true(norm > 0.0);
    free(w);

    /* running_var: positive, non-trivial (not all ones) */
    t = fs_safetensors_find(st, "layer1.0.bn1.running_var");
    float rv[16];
    assert_int_equal(fs_safetensors_read_f32(st, t, rv, 16, &d), 0);
    int ones = 0;
    for (int i = 0; i < 16; i++) {
        assert_true(rv[i] > 0.0f);
        ones += rv[i] == 1.0f;
    }
    assert_true(ones < 16);

    assert_null(fs_safetensors_find(st, "nope"));
    assert_string_equal(fs_safetensors_meta(st, "format"), "pt");
    assert_null(fs_safetensors_meta(st, "fedslim.arch"));
    assert_int_equal(fs_safetensors_meta_count(st), 1);
    /* data order: every tensor starts where the previous one ended */
    size_t end = 0;
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        t = fs_safetensors_tensor(st, i);
        assert_int_equal(t->offset, end);
        end += t->nbytes;
        assert_ptr_equal(fs_safetensors_find(st, t->name), t);
    }
    fs_safetensors_free(st);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* A float tensor `name` compared element by element (bitwise; NaN to NaN) with `ref`. */
static void expect_same_floats(const fs_safetensors *st, const char *name, const char *ref)
{
    fs_diag d = {0};
    const fs_st_tensor *a = fs_safetensors_find(st, name);
    const fs_st_tensor *b = fs_safetensors_find(st, ref);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->numel, b->numel);
    float *x = malloc(a->numel * sizeof *x);
    float *y = malloc(a->numel * sizeof *y);
    assert_int_equal(fs_safetensors_read_f32(st, a, x, a->numel, &d), 0);
    assert_int_equal(fs_safetensors_read_f32(st, b, y, b->numel, &d), 0);
    for (size_t i = 0; i < a->numel; i++) {
        if (isnan(y[i])) {
            assert_true(isnan(x[i]));
        } else if (f32_bits(x[i]) != f32_bits(y[i])) {
            fail_msg("%s[%zu]: %a, PyTorch says %a", name, i, (double)x[i], (double)y[i]);
        }
    }
    free(x);
    free(y);
}

static void dtypes_match_pytorch(void **state)
{
    (void)state;
    fs_safetensors *st = NULL;
    fs_diag d = {0};
    assert_int_equal(fs_safetensors_open(&st, fixture("dtypes.safetensors"), &d), 0);
    expect_same_floats(st, "f16", "f16_as_f32");
    expect_same_floats(st, "bf16", "bf16_as_f32");

    const fs_st_tensor *t = fs_safetensors_find(st, "i8");
    int8_t i8[5];
    assert_int_equal(fs_safetensors_read_raw(st, t, i8, sizeof i8, &d), 0);
    assert_int_equal(i8[0], -128);
    assert_int_equal(i8[4], 127);
    uint8_t u8[4];
    assert_int_equal(fs_safetensors_read_raw(st, fs_safetensors_find(st, "u8"), u8, 4, &d), 0);
    assert_int_equal(u8[3], 255);
    t = fs_safetensors_find(st, "i32");
    assert_int_equal(t->ndim, 2);
    int32_t i32[6];
    assert_int_equal(fs_safetensors_read_raw(st, t, i32, sizeof i32, &d), 0);
    assert_int_equal(i32[0], INT32_MIN);
    assert_int_equal(i32[4], 65536);
    t = fs_safetensors_find(st, "i64");
    int64_t i64[5];
    assert_int_equal(fs_safetensors_read_raw(st, t, i64, sizeof i64, &d), 0);
    assert_true(i64[0] == INT64_MIN && i64[3] == ((int64_t)1 << 40) && i64[4] == INT64_MAX);

    float sc = 0;
    t = fs_safetensors_find(st, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(fs_safetensors_read_f32(st, t, &sc, 1, &d), 0);
    assert_true(sc == 3.5f);
    t = fs_safetensors_find(st, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(fs_safetensors_read_f32(st, t, &sc, 0, &d), 0);

    /* an integer tensor is not converted to float; a wrong count is the caller's error */
    float f[5];
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "i8"), f, 5, &d),
                     FS_EFORMAT);
    assert_non_null(strstr(d.msg, "'i8'"));
    assert_non_null(strstr(d.msg, "dtypes.safetensors"));
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "scalar"), f, 2, &d),
                     FS_EINVAL);
    assert_int_equal(fs_safetensors_read_raw(st, fs_safetensors_find(st, "i8"), f, 4, &d),
                     FS_EINVAL);
    fs_safetensors_free(st);
}

/* An independent F16 reference: sign * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024. */
static float f16_ref(uint16_t h)
{
    int s = h >> 15;
    int e = (h >> 10) & 31;
    int m = h & 1023;
    double v;
    if (e == 0) {
        v = ldexp((double)m, -24);
    } else if (e == 31) {
        v = m ? NAN : INFINITY;
    } else {
        v = ldexp(1.0 + m / 1024.0, e - 15);
    }
    return (float)(s ? -v : v);
}

static void f16_all_patterns(void **state)
{
    (void)state;
    uint16_t *h = malloc(65536 * sizeof *h);
    float *f = malloc(65536 * sizeof *f);
    for (uint32_t i = 0; i < 65536; i++) {
        h[i] = (uint16_t)i;
    }
    fs_safetensors_writer *w = NULL;
    fs_diag d = {0};
    int64_t shape[1] = {65536};
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "h", FS_ST_F16, 1, shape, h, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "b", FS_ST_BF16, 1, shape, h, &d), 0);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(fs_safetensors_writer_to_buffer(w, &buf, &len, &d), 0);
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_parse(&st, buf, len, "mem", &d), 0);
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "h"), f, 65536, &d), 0);
    for (uint32_t i = 0; i < 65536; i++) {
        float r = f16_ref((uint16_t)i);
        if (isnan(r)) {
            assert_true(isnan(f[i]));
            assert_int_equal(f32_bits(f[i]) >> 31, i >> 15);   /* the sign survives */
        } else if (f32_bits(r) != f32_bits(f[i])) {
            fail_msg("f16 0x%04x -> %a, expected %a", i, (double)f[i], (double)r);
        }
    }
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "b"), f, 65536, &d), 0);
    for (uint32_t i = 0; i < 65536; i++) {
        assert_int_equal(f32_bits(f[i]), i << 16);
    }
    fs_safetensors_free(st);
    fs_safetensors_writer_free(w);
    free(buf);
    free(h);
    free(f);
}

/* ---- writer ---------------------------------------------------------------------------------- */

static void writer_round_trip(void **state)
{
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6};
    int64_t b[2] = {-7, 1LL << 50};
    int8_t c[3] = {-1, 0, 1};
    int64_t sa[2] = {2, 3};
    int64_t sb[1] = {2};
    int64_t sc[3] = {1, 3, 1};
    fs_safetensors_writer *w = NULL;
    fs_diag d = {0};
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    /* added out of name order: the file keeps the order added */
    assert_int_equal(fs_safetensors_writer_add(w, "z.weight", FS_ST_F32, 2, sa, a, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "a.count", FS_ST_I64, 1, sb, b, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "m.q", FS_ST_I8, 3, sc, c, &d), 0);
    assert_int_equal(fs_safetensors_writer_meta(w, "fedslim.arch", "{\"x\": \"\\u00e9\"}", &d), 0);
    assert_int_equal(fs_safetensors_writer_meta(w, "format", "np", &d), 0);
    assert_int_equal(fs_safetensors_writer_meta(w, "format", "pt", &d), 0);   /* replaces */

    /* invalid additions */
    assert_int_equal(fs_safetensors_writer_add(w, "z.weight", FS_ST_F32, 2, sa, a, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "duplicate tensor 'z.weight'"));
    int64_t neg[1] = {-1};
    assert_int_equal(fs_safetensors_writer_add(w, "n", FS_ST_F32, 1, neg, a, &d), FS_EINVAL);
    assert_int_equal(fs_safetensors_writer_add(w, "n", FS_ST_F32, 9, sa, a, &d), FS_EINVAL);
    assert_int_equal(fs_safetensors_writer_add(w, "", FS_ST_F32, 1, sb, a, &d), FS_EINVAL);
    assert_int_equal(fs_safetensors_writer_add(w, "__metadata__", FS_ST_F32, 1, sb, a, &d),
                     FS_EINVAL);
    assert_int_equal(fs_safetensors_writer_add(w, "bad\xff", FS_ST_F32, 1, sb, a, &d), FS_EINVAL);
    assert_int_equal(fs_safetensors_writer_add(w, "bad\nname", FS_ST_F32, 1, sb, a, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "'bad?name'"));
    assert_int_equal(fs_safetensors_writer_add(w, "n", (fs_st_dtype)99, 1, sb, a, &d), FS_EINVAL);

    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("rt.safetensors"));
    assert_int_equal(fs_safetensors_writer_write(w, path, &d), 0);
    uint8_t *mem = NULL;
    size_t mlen = 0;
    assert_int_equal(fs_safetensors_writer_to_buffer(w, &mem, &mlen, &d), 0);
    fs_safetensors_writer_free(w);
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%d", path, (int)getpid());
    assert_int_equal(access(tmpname, F_OK), -1);       /* the temporary is gone */

    /* file bytes == buffer bytes; header padded with spaces to 8, __metadata__ first */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *file = malloc(mlen + 16);
    size_t flen = fread(file, 1, mlen + 16, f);
    fclose(f);
    assert_int_equal(flen, mlen);
    assert_memory_equal(file, mem, mlen);
    uint64_t hl = 0;
    memcpy(&hl, file, 8);
    assert_int_equal(hl % 8, 0);
    assert_int_equal(8 + hl + sizeof a + sizeof b + sizeof c, flen);
    assert_memory_equal(file + 8, "{\"__metadata__\":", 16);
    size_t last = 8 + hl - 1;
    while (file[last] == ' ') {
        last--;
    }
    assert_int_equal(file[last], '}');
    free(file);
    free(mem);

    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_open(&st, path, &d), 0);
    assert_int_equal(fs_safetensors_count(st), 3);
    assert_string_equal(fs_safetensors_tensor(st, 0)->name, "z.weight");
    assert_string_equal(fs_safetensors_tensor(st, 1)->name, "a.count");
    assert_string_equal(fs_safetensors_tensor(st, 2)->name, "m.q");
    const fs_st_tensor *t = fs_safetensors_find(st, "m.q");
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->shape[1], 3);
    assert_memory_equal(fs_safetensors_data(st, t), c, sizeof c);
    int64_t b2[2];
    assert_int_equal(fs_safetensors_read_raw(st, fs_safetensors_find(st, "a.count"), b2,
                                             sizeof b2, &d),
                     0);
    assert_memory_equal(b2, b, sizeof b);
    float a2[6];
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "z.weight"), a2, 6, &d),
                     0);
    assert_memory_equal(a2, a, sizeof a);
    assert_string_equal(fs_safetensors_meta(st, "format"), "pt");
    assert_string_equal(fs_safetensors_meta(st, "fedslim.arch"), "{\"x\": \"\\u00e9\"}");
    const char *k;
    const char *v;
    fs_safetensors_meta_at(st, 0, &k, &v);
    assert_string_equal(k, "fedslim.arch");
    fs_safetensors_free(st);
}

static void writer_copies_pytorch_file_exactly(void **state)
{
    (void)state;
    fs_safetensors *st = NULL;
    fs_safetensors *st2 = NULL;
    fs_diag d = {0};
    assert_int_equal(fs_safetensors_open(&st, fixture("bottleneck.safetensors"), &d), 0);
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(st, i);
        assert_int_equal(fs_safetensors_writer_add(w, t->name, t->dtype, t->ndim, t->shape,
                                                   fs_safetensors_data(st, t), &d),
                         0);
    }
    assert_int_equal(fs_safetensors_writer_meta(w, "format", "pt", &d), 0);
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("copy.safetensors"));
    assert_int_equal(fs_safetensors_writer_write(w, path, &d), 0);
    fs_safetensors_writer_free(w);
    assert_int_equal(fs_safetensors_open(&st2, path, &d), 0);
    assert_int_equal(fs_safetensors_count(st2), fs_safetensors_count(st));
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *a = fs_safetensors_tensor(st, i);
        const fs_st_tensor *b = fs_safetensors_tensor(st2, i);
        assert_string_equal(a->name, b->name);
        assert_int_equal(a->offset, b->offset);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(fs_safetensors_data(st, a), fs_safetensors_data(st2, b), a->nbytes);
    }
    fs_safetensors_free(st);
    fs_safetensors_free(st2);
}

/* ---- negative cases -------------------------------------------------------------------------- */

/* The good file: two F32 tensors, a [2,3] weight (24 bytes) then a [3] bias (12 bytes). */
static const char *good_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b.bias\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[24,36]}}";
static const float good_data[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

/* good_header with the first `from` replaced by `to`. */
static char *edit(const char *from, const char *to)
{
    const char *p = strstr(good_header, from);
    assert_non_null(p);
    size_t n = strlen(good_header) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    size_t pre = (size_t)(p - good_header);
    memcpy(s, good_header, pre);
    strcpy(s + pre, to);
    strcat(s, p + strlen(from));
    return s;
}

/* Opens `path`, expects `code` and a message naming the file and (if non-NULL) the tensor and
 * containing `what`. */
static void expect_error(const char *path, int code, const char *tensor, const char *what)
{
    fs_safetensors *st = (fs_safetensors *)(uintptr_t)1;
    fs_diag d = {0};
    int rc = fs_safetensors_open(&st, path, &d);
    if (rc != code) {
        fail_msg("%s: got %d (%s), expected %d", path, rc, d.msg, code);
    }
    assert_null(st);
    if (getenv("FS_TEST_VERBOSE")) {
        print_message("    %s\n", d.msg);
    }
    if (!strstr(d.msg, path)) {
        fail_msg("message does not name the file: %s", d.msg);
    }
    if (tensor) {
        char q[128];
        snprintf(q, sizeof q, "'%s'", tensor);
        if (!strstr(d.msg, q)) {
            fail_msg("message does not name tensor %s: %s", tensor, d.msg);
        }
    }
    if (what && !strstr(d.msg, what)) {
        fail_msg("message lacks \"%s\": %s", what, d.msg);
    }
}

static void case_header(const char *name, const char *header, const void *data, size_t dlen,
                        int code, const char *tensor, const char *what)
{
    const char *path = tmp_path(name);
    write_st(path, header, data, dlen);
    expect_error(path, code, tensor, what);
}

static void case_edit(const char *name, const char *from, const char *to, int code,
                      const char *tensor, const char *what)
{
    char *h = edit(from, to);
    case_header(name, h, good_data, sizeof good_data, code, tensor, what);
    free(h);
}

static void good_file_is_good(void **state)
{
    (void)state;
    const char *path = tmp_path("good.safetensors");
    write_st(path, good_header, good_data, sizeof good_data);
    fs_safetensors *st = NULL;
    fs_diag d = {0};
    assert_int_equal(fs_safetensors_open(&st, path, &d), 0);
    float b[3];
    assert_int_equal(fs_safetensors_read_f32(st, fs_safetensors_find(st, "b.bias"), b, 3, &d), 0);
    assert_true(b[0] == 7.0f && b[2] == 9.0f);
    fs_safetensors_free(st);
}

static void rejects_header_length_past_eof(void **state)
{
    (void)state;
    const char *path = tmp_path("hlen.safetensors");
    size_t hl = strlen(good_header);
    uint8_t buf[8 + 512];
    uint64_t n = hl + sizeof good_data + 1;     /* one byte more than the rest of the file */
    memcpy(buf, &n, 8);
    memcpy(buf + 8, good_header, hl);
    memcpy(buf + 8 + hl, good_data, sizeof good_data);
    write_bytes(path, buf, 8 + hl + sizeof good_data);
    /* no tensor can be named: the header itself cannot be located */
    expect_error(path, FS_EFORMAT, NULL, "header length");
    expect_error(path, FS_EFORMAT, NULL, "past the end of the file");
    n = (uint64_t)1 << 62;
    memcpy(buf, &n, 8);
    write_bytes(path, buf, 8 + hl + sizeof good_data);
    expect_error(path, FS_EFORMAT, NULL, "absurd");
    write_bytes(path, buf, 5);
    expect_error(path, FS_EFORMAT, NULL, "too short");
}

static void rejects_bad_json(void **state)
{
    (void)state;
    /* a syntax error inside the entry of b.bias */
    case_edit("json1.safetensors", "\"shape\":[3]", "\"shape\":[3}", FS_EFORMAT, "b.bias",
              "not valid JSON");
    case_edit("json2.safetensors", "\"dtype\":\"F32\",\"shape\":[2,3]",
              "\"dtype\":\"F32\" \"shape\":[2,3]", FS_EFORMAT, "a.weight", "not valid JSON");
    case_header("json3.safetensors", "[1, 2, 3]", NULL, 0, FS_EFORMAT, NULL,
                "not a JSON object");
    case_header("json4.safetensors", "", NULL, 0, FS_EFORMAT, NULL, "not valid JSON");
    /* hostile nesting is refused before the recursive parser sees it */
    char deep[4096];
    memset(deep, '[', 4000);
    deep[4000] = '\0';
    case_header("json5.safetensors", deep, NULL, 0, FS_EFORMAT, NULL, "nested deeper");
    case_edit("json6.safetensors", "\"format\":\"pt\"", "\"format\":7", FS_EFORMAT, NULL,
              "__metadata__['format'] is not a string");
}

static void rejects_offsets_out_of_bounds(void **state)
{
    (void)state;
    case_edit("oob.safetensors", "\"shape\":[3],\"data_offsets\":[24,36]",
              "\"shape\":[4],\"data_offsets\":[24,40]", FS_EFORMAT, "b.bias",
              "past the end of the data section");
    case_edit("oob2.safetensors", "[24,36]", "[36,24]", FS_EFORMAT, "b.bias", "end before begin");
    case_edit("oob3.safetensors", "[24,36]", "[-4,36]", FS_EFORMAT, "b.bias", "non-negative");
    case_edit("oob4.safetensors", "[24,36]", "[24]", FS_EFORMAT, "b.bias",
              "array of two integers");
    case_edit("oob5.safetensors", "[24,36]", "[24,18446744073709551615]", FS_EFORMAT, "b.bias",
              NULL);
}

static void rejects_overlapping_offsets(void **state)
{
    (void)state;
    /* b.bias [20,32) has the right size for 3 floats but overlaps a.weight [0,24) */
    case_edit("overlap.safetensors", "[24,36]", "[20,32]", FS_EFORMAT, "b.bias", "overlap");
    expect_error(tmp_path("overlap.safetensors"), FS_EFORMAT, "a.weight", NULL);
    /* a gap, and trailing bytes, break the contiguous layout too */
    char *h = edit("[24,36]", "[28,40]");
    float more[10] = {0};
    case_header("gap.safetensors", h, more, sizeof more, FS_EFORMAT, "b.bias", "gap of 4 bytes");
    free(h);
    case_header("trail.safetensors", good_header, more, sizeof more, FS_EFORMAT, "b.bias",
                "4 trailing bytes");
}

static void rejects_shape_dtype_vs_length(void **state)
{
    (void)state;
    case_edit("size1.safetensors", "[2,3]", "[2,4]", FS_EFORMAT, "a.weight",
              "shape [2, 4] of dtype F32 needs 32 bytes but data_offsets cover 24");
    case_edit("size2.safetensors", "\"dtype\":\"F32\",\"shape\":[3]",
              "\"dtype\":\"F16\",\"shape\":[3]", FS_EFORMAT, "b.bias", "needs 6 bytes");
    case_edit("size3.safetensors", "[2,3]", "[2,-3]", FS_EFORMAT, "a.weight", "shape[1]");
    case_edit("size4.safetensors", "[2,3]", "[2,3.0]", FS_EFORMAT, "a.weight", "shape[1]");
    case_edit("size5.safetensors", "[2,3]", "[4294967296,4294967296,4294967296]", FS_EFORMAT,
              "a.weight", "overflows");
    case_edit("size6.safetensors", "[2,3]", "[1,1,1,1,1,1,1,1,2,3]", FS_EFORMAT, "a.weight",
              "10 dimensions");
    case_edit("size7.safetensors", "\"shape\":[2,3]", "\"shape\":\"2x3\"", FS_EFORMAT,
              "a.weight", "not an array");
}

static void rejects_unknown_dtype(void **state)
{
    (void)state;
    case_edit("dt1.safetensors", "\"dtype\":\"F32\",\"shape\":[3]",
              "\"dtype\":\"F33\",\"shape\":[3]", FS_EFORMAT, "b.bias", "unknown dtype 'F33'");
    case_edit("dt2.safetensors", "\"dtype\":\"F32\",\"shape\":[3]",
              "\"dtype\":\"F64\",\"shape\":[3]", FS_EUNSUPPORTED, "b.bias",
              "unsupported dtype 'F64'");
    case_edit("dt3.safetensors", "\"dtype\":\"F32\",\"shape\":[3]", "\"dtype\":32,\"shape\":[3]",
              FS_EFORMAT, "b.bias", "dtype is not a string");
}

static void rejects_duplicate_tensor(void **state)
{
    (void)state;
    case_edit("dup.safetensors", "\"b.bias\"", "\"a.weight\"", FS_EFORMAT, "a.weight",
              "duplicate tensor");
    case_edit("dup3.safetensors", "\"format\":\"pt\"", "\"format\":\"pt\",\"format\":\"np\"",
              FS_EFORMAT, NULL, "__metadata__: duplicate object key");
    case_edit("dup4.safetensors", "\"a.weight\"", "\"__metadata__\":{},\"a.weight\"", FS_EFORMAT,
              NULL, "__metadata__ appears twice");
    case_edit("json7.safetensors", "\"format\":\"pt\"", "\"format\":pt", FS_EFORMAT, NULL,
              "not valid JSON, in __metadata__");
    case_edit("dup2.safetensors", "\"shape\":[3]", "\"shape\":[3],\"shape\":[3]", FS_EFORMAT,
              "b.bias", "duplicate");
}

static void rejects_truncated_file(void **state)
{
    (void)state;
    /* the good file without its last 4 bytes: b.bias runs past the end */
    case_header("trunc.safetensors", good_header, good_data, sizeof good_data - 4, FS_EFORMAT,
                "b.bias", "truncated");
}

static void rejects_bad_entries(void **state)
{
    (void)state;
    case_edit("ent1.safetensors", "\"dtype\":\"F32\",\"shape\":[3],", "\"shape\":[3],",
              FS_EFORMAT, "b.bias", "missing field 'dtype'");
    case_edit("ent2.safetensors", "\"data_offsets\":[24,36]}", "\"data_offset\":[24,36]}",
              FS_EFORMAT, "b.bias", "unknown field 'data_offset'");
    case_edit("ent3.safetensors", "{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[24,36]}",
              "[1]", FS_EFORMAT, "b.bias", "not a JSON object");
    case_edit("ent4.safetensors", "{\"format\":\"pt\"}", "[]", FS_EFORMAT, NULL,
              "__metadata__ is not a JSON object");
    /* names that could forge log lines are refused, and printed defanged */
    case_edit("ent5.safetensors", "\"b.bias\"", "\"b\\nFAKE LOG LINE\"", FS_EFORMAT, NULL,
              "tensor name 'b?FAKE LOG LINE' is not printable");
    case_edit("ent6.safetensors", "\"dtype\":\"F32\",\"shape\":[3]",
              "\"dtype\":\"F\\u0007\",\"shape\":[3]", FS_EFORMAT, "b.bias", "unknown dtype 'F?'");
    expect_error(tmp_path("does-not-exist.safetensors"), FS_EIO, NULL, "cannot open");
}

static void refuses_huge_file_and_unwritable_path(void **state)
{
    (void)state;
    /* a sparse 4 GiB + 1 byte file: refused from its size, before any allocation */
    const char *path = tmp_path("huge.safetensors");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), (off_t)FS_ST_MAX_FILE_BYTES + 1), 0);
    fclose(f);
    expect_error(path, FS_EFORMAT, NULL, "more than the limit");
    unlink(path);

    fs_safetensors_writer *w = NULL;
    fs_diag d = {0};
    float x = 1.0f;
    int64_t one = 1;
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "x", FS_ST_F32, 1, &one, &x, &d), 0);
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/m.safetensors", tmpdir);
    assert_int_equal(fs_safetensors_writer_write(w, bad, &d), FS_EIO);
    assert_non_null(strstr(d.msg, "no/such/dir/m.safetensors"));
    fs_safetensors_writer_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_pytorch_resnet20),
        cmocka_unit_test(dtypes_match_pytorch),
        cmocka_unit_test(f16_all_patterns),
        cmocka_unit_test(writer_round_trip),
        cmocka_unit_test(writer_copies_pytorch_file_exactly),
        cmocka_unit_test(good_file_is_good),
        cmocka_unit_test(rejects_header_length_past_eof),
        cmocka_unit_test(rejects_bad_json),
        cmocka_unit_test(rejects_offsets_out_of_bounds),
        cmocka_unit_test(rejects_overlapping_offsets),
        cmocka_unit_test(rejects_shape_dtype_vs_length),
        cmocka_unit_test(rejects_unknown_dtype),
        cmocka_unit_test(rejects_duplicate_tensor),
        cmocka_unit_test(rejects_truncated_file),
        cmocka_unit_test(rejects_bad_entries),
        cmocka_unit_test(refuses_huge_file_and_unwritable_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
