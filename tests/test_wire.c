/*
 * test_wire.c — the wire format without sockets: golden vectors for every message type (byte for
 * byte), round trips, strict-decoder rejections (truncated, trailing bytes, duplicate keys, wrong
 * types, limits, allocation bombs), sessions (replay, stale job/round/step, garbage threshold),
 * model transfer, allow-list parsing and key files.
 *
 * Regenerate the vectors after an intentional format change (then review the diff!):
 *   FS_REGEN_VECTORS=1 build/<dir>/bin/test_wire      (writes $FS_SOURCE_DIR/tests/vectors/)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_keys.h"
#include "fs_wire.h"

/* ---- sample messages ------------------------------------------------------------------------ */

static const char *const CAPS[] = {"loss_grad", "moments", "hist"};
static const uint64_t CLASSES[] = {600, 580, 0, 612};
static const double NUMS[] = {0.5, -1.25, 3.0};
static fs_kv CONFIG[] = {
    {.key = "phase", .kind = FS_KV_STR, .s = "recover"},
    {.key = "rounds", .kind = FS_KV_INT, .i = 40},
    {.key = "lr", .kind = FS_KV_FLOAT, .f = 0.01},
    {.key = "betas", .kind = FS_KV_NUMS, .nums = NUMS, .n_nums = 3},
};
static fs_kv ARGS[] = {
    {.key = "batch", .kind = FS_KV_INT, .i = 64},
    {.key = "temperature", .kind = FS_KV_FLOAT, .f = 4.0},
};
static fs_kv SCALARS[] = {
    {.key = "loss", .kind = FS_KV_FLOAT, .f = 123.5},
    {.key = "correct", .kind = FS_KV_FLOAT, .f = 57},
};
static float W1[40];   /* 160 bytes: 3 chunks of 64 bytes in the vectors */
static fs_wire_slice SLICES[2];
static float B1[4];
static uint8_t MODEL[100];

static void fill_data(void)
{
    for (int i = 0; i < 40; i++)
        W1[i] = (float)i * 0.5f - 3.0f;
    for (int i = 0; i < 4; i++)
        B1[i] = (float)i;
    for (int i = 0; i < 100; i++)
        MODEL[i] = (uint8_t)(i * 7 + 1);
}

static fs_wire_tensor TENSORS[2];

static void make_sample(fs_msg_type t, fs_wire_msg *m)
{
    fill_data();
    memset(m, 0, sizeof *m);
    m->type = t;
    strcpy(m->job, "job-7f3a");
    m->round = 12;
    m->step = 3;
    m->seq = 1000 + (uint64_t)t;
    memset(TENSORS, 0, sizeof TENSORS);
    strcpy(TENSORS[0].name, "layer1.0.conv1.weight");
    TENSORS[0].dtype = FS_WIRE_F32;
    TENSORS[0].ndim = 4;
    TENSORS[0].shape[0] = 2;
    TENSORS[0].shape[1] = 5;
    TENSORS[0].shape[2] = 2;
    TENSORS[0].shape[3] = 2;
    TENSORS[0].data = W1;
    TENSORS[0].nbytes = sizeof W1;
    strcpy(TENSORS[1].name, "fc.bias");
    TENSORS[1].dtype = FS_WIRE_F32;
    TENSORS[1].ndim = 1;
    TENSORS[1].shape[0] = 4;
    TENSORS[1].data = B1;
    TENSORS[1].nbytes = sizeof B1;
    switch (t) {
    case FS_MSG_HELLO:
        m->job[0] = '\0';
        m->round = m->step = 0;
        m->u.hello.proto_min = 1;
        m->u.hello.proto_max = 1;
        strcpy(m->u.hello.version, "fedslim 0.1.0");
        strcpy(m->u.hello.site, "site-b");
        m->u.hello.caps = CAPS;
        m->u.hello.n_caps = 3;
        m->u.hello.n_samples = 1792;
        m->u.hello.n_labeled = 1792;
        m->u.hello.classes = CLASSES;
        m->u.hello.n_classes = 4;
        break;
    case FS_MSG_WELCOME:
        m->job[0] = '\0';
        m->u.welcome.proto = 1;
        strcpy(m->u.welcome.agent, "site-b");
        m->u.welcome.heartbeat_ms = 5000;
        break;
    case FS_MSG_HEARTBEAT:
        m->u.heartbeat.progress = 0.25;
        break;
    case FS_MSG_JOB_OFFER:
        m->u.job_offer.config.items = CONFIG;
        m->u.job_offer.config.n = 4;
        fs_wire_digest(MODEL, sizeof MODEL, m->u.job_offer.model_digest);
        m->u.job_offer.model_bytes = sizeof MODEL;
        break;
    case FS_MSG_JOB_ACCEPT:
        break;
    case FS_MSG_JOB_DECLINE:
        strcpy(m->u.job_reply.reason, "busy with job job-0001");
        break;
    case FS_MSG_MODEL_REQ:
        fs_wire_digest(MODEL, sizeof MODEL, m->u.model_req.digest);
        m->u.model_req.offset = 64;
        m->u.model_req.len = 64;
        break;
    case FS_MSG_MODEL_CHUNK:
        fs_wire_digest(MODEL, sizeof MODEL, m->u.model_chunk.digest);
        m->u.model_chunk.total = sizeof MODEL;
        m->u.model_chunk.offset = 64;
        m->u.model_chunk.data = MODEL + 64;
        m->u.model_chunk.len = 36;
        break;
    case FS_MSG_COMPUTE_REQ:
        strcpy(m->u.compute_req.kind, "loss_grad");
        m->u.compute_req.args.items = ARGS;
        m->u.compute_req.args.n = 2;
        m->tensors = TENSORS;
        m->n_tensors = 2;
        break;
    case FS_MSG_COMPUTE_REPLY:
        m->u.compute_reply.count = 1792;
        m->u.compute_reply.scalars.items = SCALARS;
        m->u.compute_reply.scalars.n = 2;
        m->tensors = TENSORS;
        m->n_tensors = 2;
        break;
    case FS_MSG_ERROR:
        fs_wire_make_version_error(m, 2);
        m->seq = 1000 + (uint64_t)t;
        break;
    case FS_MSG_BYE:
        strcpy(m->u.bye.reason, "shutting down");
        break;
    case FS_MSG_COMPUTE_HEAD:
        m->u.compute_head.count = 1792;
        m->u.compute_head.scalars.items = SCALARS;
        m->u.compute_head.scalars.n = 2;
        m->u.compute_head.parts = 2;
        m->tensors = TENSORS;
        m->n_tensors = 2;
        break;
    case FS_MSG_COMPUTE_PART:
        /* part 1 of the head above in 64-byte slices: the end of the weight, then the bias */
        memset(SLICES, 0, sizeof SLICES);
        strcpy(SLICES[0].name, "layer1.0.conv1.weight");
        SLICES[0].offset = 128;
        SLICES[0].data = (const uint8_t *)W1 + 128;
        SLICES[0].len = 32;
        strcpy(SLICES[1].name, "fc.bias");
        SLICES[1].offset = 0;
        SLICES[1].data = B1;
        SLICES[1].len = sizeof B1;
        m->u.compute_part.part = 1;
        m->u.compute_part.slices = SLICES;
        m->u.compute_part.n_slices = 2;
        break;
    }
}

#define VEC_CHUNK 64

/* Vector file: u32 LE frame count, then per frame u32 LE length + bytes. */
static uint8_t *serialize(const fs_wire_frames *f, size_t *len)
{
    size_t n = 4;
    for (size_t i = 0; i < f->n_frames; i++)
        n += 4 + f->frames[i].len;
    uint8_t *b = malloc(n), *p = b;
    assert_non_null(b);
    uint32_t k = (uint32_t)f->n_frames;
    memcpy(p, &k, 4);
    p += 4;
    for (size_t i = 0; i < f->n_frames; i++) {
        k = (uint32_t)f->frames[i].len;
        memcpy(p, &k, 4);
        p += 4;
        memcpy(p, f->frames[i].data, f->frames[i].len);
        p += f->frames[i].len;
    }
    *len = n;
    return b;
}

static char *lower(const char *s, char *buf)
{
    size_t i = 0;
    for (; s[i]; i++)
        buf[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    buf[i] = '\0';
    return buf;
}

static void vector_path(fs_msg_type t, char *path, size_t len)
{
    const char *src = getenv("FS_SOURCE_DIR");
    char nm[32];
    snprintf(path, len, "%s/tests/vectors/%s_v1.bin", src ? src : ".",
             lower(fs_msg_type_name(t), nm));
}

static void check_equal(const fs_wire_msg *a, const fs_wire_msg *b)
{
    assert_int_equal(a->type, b->type);
    assert_string_equal(a->job, b->job);
    assert_int_equal(a->round, b->round);
    assert_int_equal(a->step, b->step);
    assert_int_equal(a->seq, b->seq);
    switch (a->type) {
    case FS_MSG_HELLO:
        assert_string_equal(a->u.hello.site, b->u.hello.site);
        assert_string_equal(a->u.hello.version, b->u.hello.version);
        assert_int_equal(a->u.hello.n_caps, b->u.hello.n_caps);
        for (size_t i = 0; i < a->u.hello.n_caps; i++)
            assert_string_equal(a->u.hello.caps[i], b->u.hello.caps[i]);
        assert_int_equal(a->u.hello.n_classes, b->u.hello.n_classes);
        assert_memory_equal(a->u.hello.classes, b->u.hello.classes, 4 * 8);
        assert_int_equal(a->u.hello.n_labeled, b->u.hello.n_labeled);
        break;
    case FS_MSG_JOB_OFFER:
        assert_int_equal(b->u.job_offer.config.n, 4);
        assert_string_equal(fs_kv_get_str(&b->u.job_offer.config, "phase"), "recover");
        {
            int64_t r;
            double lr;
            assert_int_equal(fs_kv_get_i64(&b->u.job_offer.config, "rounds", &r), 0);
            assert_int_equal(r, 40);
            assert_int_equal(fs_kv_get_f64(&b->u.job_offer.config, "lr", &lr), 0);
            assert_true(lr == 0.01);
            const fs_kv *kv = fs_kv_find(&b->u.job_offer.config, "betas");
            assert_non_null(kv);
            assert_int_equal(kv->n_nums, 3);
            assert_true(kv->nums[1] == -1.25);
        }
        assert_memory_equal(a->u.job_offer.model_digest, b->u.job_offer.model_digest, 32);
        break;
    case FS_MSG_MODEL_CHUNK:
        assert_int_equal(a->u.model_chunk.len, b->u.model_chunk.len);
        assert_memory_equal(a->u.model_chunk.data, b->u.model_chunk.data, a->u.model_chunk.len);
        break;
    case FS_MSG_COMPUTE_REQ:
    case FS_MSG_COMPUTE_REPLY:
        assert_int_equal(a->n_tensors, b->n_tensors);
        for (size_t i = 0; i < a->n_tensors; i++) {
            assert_string_equal(a->tensors[i].name, b->tensors[i].name);
            assert_int_equal(a->tensors[i].ndim, b->tensors[i].ndim);
            assert_int_equal(a->tensors[i].nbytes, b->tensors[i].nbytes);
            assert_memory_equal(a->tensors[i].data, b->tensors[i].data, a->tensors[i].nbytes);
            assert_int_equal((uintptr_t)b->tensors[i].data % 64, 0);
        }
        if (a->type == FS_MSG_COMPUTE_REPLY) {
            double x;
            assert_int_equal(fs_kv_get_f64(&b->u.compute_reply.scalars, "correct", &x), 0);
            assert_true(x == 57.0);
        }
        break;
    case FS_MSG_COMPUTE_HEAD:
        assert_int_equal(b->u.compute_head.count, 1792);
        assert_int_equal(b->u.compute_head.parts, 2);
        assert_int_equal(b->u.compute_head.scalars.n, 2);
        assert_int_equal(a->n_tensors, b->n_tensors);
        for (size_t i = 0; i < a->n_tensors; i++) {
            assert_string_equal(a->tensors[i].name, b->tensors[i].name);
            assert_int_equal(a->tensors[i].dtype, b->tensors[i].dtype);
            assert_int_equal(a->tensors[i].nbytes, b->tensors[i].nbytes);
            assert_null(b->tensors[i].data);
        }
        break;
    case FS_MSG_COMPUTE_PART:
        assert_int_equal(b->u.compute_part.part, 1);
        assert_int_equal(a->u.compute_part.n_slices, b->u.compute_part.n_slices);
        for (size_t i = 0; i < a->u.compute_part.n_slices; i++) {
            const fs_wire_slice *x = &a->u.compute_part.slices[i], *y = &b->u.compute_part.slices[i];
            assert_string_equal(x->name, y->name);
            assert_int_equal(x->offset, y->offset);
            assert_int_equal(x->len, y->len);
            assert_memory_equal(x->data, y->data, x->len);
        }
        break;
    case FS_MSG_ERROR:
        assert_string_equal(b->u.error.code, "version");
        assert_true(b->u.error.has_supported);
        assert_int_equal(b->u.error.supported_min, 1);
        assert_int_equal(b->u.error.supported_max, 1);
        break;
    default:
        break;
    }
}

static void golden_vectors(void **state)
{
    (void)state;
    bool regen = getenv("FS_REGEN_VECTORS") != NULL;
    for (int t = 1; t <= FS_MSG_TYPE_MAX; t++) {
        fs_wire_msg m;
        fs_wire_frames f;
        fs_diag d = {0};
        make_sample((fs_msg_type)t, &m);
        assert_int_equal(fs_wire_encode(&m, VEC_CHUNK, &f, &d), 0);
        size_t len;
        uint8_t *bytes = serialize(&f, &len);
        char path[4096];
        vector_path((fs_msg_type)t, path, sizeof path);
        if (regen) {
            FILE *fp = fopen(path, "wb");
            assert_non_null(fp);
            assert_int_equal(fwrite(bytes, 1, len, fp), len);
            fclose(fp);
        }
        uint8_t *want = NULL;
        size_t want_len = 0;
        int rc = fs_read_file(path, 1 << 20, &want, &want_len, &d);
        if (rc)
            fail_msg("%s: %s (regenerate with FS_REGEN_VECTORS=1)", path, d.msg);
        if (want_len != len || memcmp(want, bytes, len) != 0)
            fail_msg("%s: encoding of %s differs from the golden vector", path,
                     fs_msg_type_name(t));
        /* decode the stored vector and compare with the sample */
        uint32_t nf;
        memcpy(&nf, want, 4);
        fs_wire_buf fb[8];
        assert_true(nf >= 1 && nf <= 8);
        size_t p = 4;
        for (uint32_t i = 0; i < nf; i++) {
            uint32_t fl;
            memcpy(&fl, want + p, 4);
            fb[i].data = want + p + 4;
            fb[i].len = fl;
            p += 4 + fl;
        }
        assert_int_equal(p, want_len);
        fs_wire_msg *out = NULL;
        rc = fs_wire_decode(fb, nf, NULL, &out, NULL, &d);
        if (rc)
            fail_msg("%s: %s", fs_msg_type_name(t), d.msg);
        check_equal(&m, out);
        fs_wire_msg_free(out);
        free(want);
        free(bytes);
        fs_wire_frames_free(&f);
    }
}

/* ---- helpers for hand-made headers -------------------------------------------------------- */

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mp;

static void mp_init(mp *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void ks(mp *b, const char *s)
{
    msgpack_pack_str_with_body(&b->pk, s, strlen(s));
}

/* envelope with `extra` additional leading pairs already counted by the caller */
static void env(mp *b, int n_pairs, uint64_t v, uint64_t t)
{
    msgpack_pack_map(&b->pk, (size_t)n_pairs);
    ks(b, "v");
    msgpack_pack_uint64(&b->pk, v);
    ks(b, "t");
    msgpack_pack_uint64(&b->pk, t);
    ks(b, "job");
    ks(b, "j1");
    ks(b, "round");
    msgpack_pack_uint64(&b->pk, 1);
    ks(b, "step");
    msgpack_pack_uint64(&b->pk, 0);
    ks(b, "seq");
    msgpack_pack_uint64(&b->pk, 5);
}

static int decode1(const void *p, size_t n, fs_diag *d)
{
    fs_wire_buf f = {p, n};
    fs_wire_msg *m = NULL;
    int rc = fs_wire_decode(&f, 1, NULL, &m, NULL, d);
    fs_wire_msg_free(m);
    return rc;
}

static void decoder_rejects(void **state)
{
    (void)state;
    fs_diag d = {0};
    fs_wire_msg m;
    fs_wire_frames f;
    make_sample(FS_MSG_HEARTBEAT, &m);
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), 0);
    const uint8_t *h = f.header;
    size_t hl = f.header_len;
    assert_int_equal(decode1(h, hl, &d), 0);
    /* every truncation is rejected as malformed */
    for (size_t k = 0; k < hl; k++)
        assert_int_equal(decode1(h, k, &d), FS_EFORMAT);
    /* trailing bytes */
    uint8_t buf[512];
    memcpy(buf, h, hl);
    buf[hl] = 0xc0;
    assert_int_equal(decode1(buf, hl + 1, &d), FS_EFORMAT);
    /* every single-byte corruption: no crash, and never silently a different message type */
    for (size_t k = 0; k < hl; k++) {
        for (int x = 1; x < 256; x += 37) {
            memcpy(buf, h, hl);
            buf[k] ^= (uint8_t)x;
            fs_wire_buf fb = {buf, hl};
            fs_wire_msg *out = NULL;
            if (fs_wire_decode(&fb, 1, NULL, &out, NULL, &d) == 0) {
                assert_true(out->type >= 1 && out->type <= FS_MSG_TYPE_MAX);
                fs_wire_msg_free(out);
            }
        }
    }
    fs_wire_frames_free(&f);

    /* duplicate envelope key */
    mp b;
    mp_init(&b);
    env(&b, 8, 1, FS_MSG_HEARTBEAT);
    ks(&b, "seq");
    msgpack_pack_uint64(&b.pk, 6);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 1);
    ks(&b, "progress");
    msgpack_pack_double(&b.pk, 0.5);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "seq: duplicate"));
    msgpack_sbuffer_destroy(&b.sb);

    /* unknown keys are ignored (forward compatibility) */
    mp_init(&b);
    env(&b, 8, 1, FS_MSG_HEARTBEAT);
    ks(&b, "future");
    msgpack_pack_array(&b.pk, 2);
    msgpack_pack_nil(&b.pk);
    msgpack_pack_true(&b.pk);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 2);
    ks(&b, "progress");
    msgpack_pack_float(&b.pk, 0.5f); /* float32 accepted */
    ks(&b, "eta_s");
    msgpack_pack_uint64(&b.pk, 30);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), 0);
    msgpack_sbuffer_destroy(&b.sb);

    /* wrong type of a field, named in the error */
    mp_init(&b);
    env(&b, 7, 1, FS_MSG_WELCOME);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 3);
    ks(&b, "proto");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "agent");
    msgpack_pack_uint64(&b.pk, 7);
    ks(&b, "heartbeat_ms");
    msgpack_pack_uint64(&b.pk, 5000);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "agent"));
    msgpack_sbuffer_destroy(&b.sb);

    /* u32 out of range */
    mp_init(&b);
    msgpack_pack_map(&b.pk, 7);
    ks(&b, "v");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "t");
    msgpack_pack_uint64(&b.pk, FS_MSG_HEARTBEAT);
    ks(&b, "job");
    ks(&b, "");
    ks(&b, "round");
    msgpack_pack_uint64(&b.pk, (uint64_t)1 << 32);
    ks(&b, "step");
    msgpack_pack_uint64(&b.pk, 0);
    ks(&b, "seq");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 1);
    ks(&b, "progress");
    msgpack_pack_double(&b.pk, 0.5);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "round"));
    msgpack_sbuffer_destroy(&b.sb);

    /* bad job charset */
    mp_init(&b);
    msgpack_pack_map(&b.pk, 7);
    ks(&b, "v");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "t");
    msgpack_pack_uint64(&b.pk, FS_MSG_HEARTBEAT);
    ks(&b, "job");
    ks(&b, "j\n1");
    ks(&b, "round");
    msgpack_pack_uint64(&b.pk, 0);
    ks(&b, "step");
    msgpack_pack_uint64(&b.pk, 0);
    ks(&b, "seq");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 1);
    ks(&b, "progress");
    msgpack_pack_double(&b.pk, 0.5);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "job"));
    msgpack_sbuffer_destroy(&b.sb);

    /* version mismatch reported distinctly, with the peer's version */
    mp_init(&b);
    env(&b, 7, 2, FS_MSG_HEARTBEAT);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 0);
    {
        fs_wire_buf fb = {b.sb.data, b.sb.size};
        fs_wire_msg *out = NULL;
        uint64_t pv = 0;
        assert_int_equal(fs_wire_decode(&fb, 1, NULL, &out, &pv, &d), FS_EUNSUPPORTED);
        assert_int_equal(pv, 2);
        assert_null(out);
    }
    msgpack_sbuffer_destroy(&b.sb);

    /* HELLO.version is free text but at most 64 characters (it is copied into a 64-char field) */
    mp_init(&b);
    env(&b, 7, 1, FS_MSG_HELLO);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 6);
    ks(&b, "proto_min");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "proto_max");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "version");
    {
        char v[201];
        memset(v, 'x', 200);
        v[200] = '\0';
        ks(&b, v);
    }
    ks(&b, "site");
    ks(&b, "s");
    ks(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    ks(&b, "data");
    msgpack_pack_map(&b.pk, 3);
    ks(&b, "n_samples");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "n_labeled");
    msgpack_pack_uint64(&b.pk, 1);
    ks(&b, "classes");
    msgpack_pack_array(&b.pk, 0);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "version: longer than 64"));
    {
        FILE *fp = getenv("FS_WRITE_SEEDS") ? fopen("hello_long_version.seed", "wb") : NULL;
        if (fp) {
            uint16_t l = (uint16_t)b.sb.size;
            fputc(0, fp);
            fwrite(&l, 2, 1, fp);
            fwrite(b.sb.data, 1, b.sb.size, fp);
            fclose(fp);
        }
    }
    msgpack_sbuffer_destroy(&b.sb);

    /* unknown type */
    mp_init(&b);
    env(&b, 7, 1, 99);
    ks(&b, "body");
    msgpack_pack_map(&b.pk, 0);
    assert_int_equal(decode1(b.sb.data, b.sb.size, &d), FS_EPROTO);
    msgpack_sbuffer_destroy(&b.sb);
}

static void precheck_bombs(void **state)
{
    (void)state;
    /* array32 claiming 2^27 elements: msgpack-c would malloc 3 GiB before reading any */
    static const uint8_t a32[] = {0xdd, 0x08, 0x00, 0x00, 0x00};
    static const uint8_t m32[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0x00, 0x00};
    static const uint8_t s32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    static const uint8_t c1[] = {0xc1};
    fs_diag d;
    assert_int_equal(fs_mp_precheck(a32, sizeof a32, 8, 4096), FS_EFORMAT);
    assert_int_equal(fs_mp_precheck(m32, sizeof m32, 8, 4096), FS_EFORMAT);
    assert_int_equal(fs_mp_precheck(s32, sizeof s32, 8, 4096), FS_EFORMAT);
    assert_int_equal(fs_mp_precheck(c1, sizeof c1, 8, 4096), FS_EFORMAT);
    assert_int_equal(decode1(a32, sizeof a32, &d), FS_EFORMAT);
    assert_int_equal(decode1(m32, sizeof m32, &d), FS_EFORMAT);
    /* depth: 9 nested arrays exceed depth 8, 8 are fine */
    uint8_t nest[16];
    memset(nest, 0x91, 9);
    nest[9] = 0xc0;
    assert_int_equal(fs_mp_precheck(nest, 10, 8, 4096), FS_EFORMAT);
    assert_int_equal(fs_mp_precheck(nest + 1, 9, 8, 4096), 0);
    /* object count: 100 nils in an array: 101 objects */
    uint8_t arr[104] = {0xdc, 0x00, 100};
    memset(arr + 3, 0xc0, 100);
    assert_int_equal(fs_mp_precheck(arr, 103, 8, 101), 0);
    assert_int_equal(fs_mp_precheck(arr, 103, 8, 100), FS_EFORMAT);
    /* header frame larger than the limit is refused before parsing */
    fs_wire_limits lim = fs_wire_limits_default();
    lim.max_header_bytes = 50;
    fs_wire_buf fb = {arr, 103};
    fs_wire_msg *m = NULL;
    assert_int_equal(fs_wire_decode(&fb, 1, &lim, &m, NULL, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "header frame of 103 bytes"));
}

static void tensors_strict(void **state)
{
    (void)state;
    fs_diag d = {0};
    fs_wire_msg m;
    fs_wire_frames f;
    make_sample(FS_MSG_COMPUTE_REQ, &m);
    assert_int_equal(fs_wire_encode(&m, VEC_CHUNK, &f, &d), 0);
    assert_int_equal(f.n_frames, 1 + 3 + 1);
    fs_wire_buf fb[8];
    memcpy(fb, f.frames, f.n_frames * sizeof fb[0]);
    fs_wire_msg *out = NULL;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, NULL, &out, NULL, &d), 0);
    fs_wire_msg_free(out);
    /* a raw frame shorter than its descriptor says */
    fb[2].len -= 4;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, NULL, &out, NULL, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "layer1.0.conv1.weight"));
    fb[2].len += 4;
    /* a missing frame */
    assert_int_equal(fs_wire_decode(fb, f.n_frames - 1, NULL, &out, NULL, &d), FS_EPROTO);
    /* an extra frame */
    fb[f.n_frames] = fb[1];
    assert_int_equal(fs_wire_decode(fb, f.n_frames + 1, NULL, &out, NULL, &d), FS_EPROTO);
    /* tensor over max_tensor_bytes */
    fs_wire_limits lim = fs_wire_limits_default();
    lim.max_tensor_bytes = 100;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, &lim, &out, NULL, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "exceeds 100"));
    /* chunk frame over max_chunk_bytes, total over max_message_bytes, too many frames */
    lim = fs_wire_limits_default();
    lim.max_chunk_bytes = 32;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, &lim, &out, NULL, &d), FS_EFORMAT);
    lim = fs_wire_limits_default();
    lim.max_message_bytes = 200;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, &lim, &out, NULL, &d), FS_EFORMAT);
    lim = fs_wire_limits_default();
    lim.max_frames = 4;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, &lim, &out, NULL, &d), FS_EFORMAT);
    lim = fs_wire_limits_default();
    lim.max_chunks = 2;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, &lim, &out, NULL, &d), FS_EPROTO);
    /* swapped chunk frames: offsets no longer continue */
    fs_wire_buf t = fb[1];
    fb[1] = fb[2];
    fb[2] = t;
    assert_int_equal(fs_wire_decode(fb, f.n_frames, NULL, &out, NULL, &d), 0); /* same sizes */
    assert_memory_not_equal(out->tensors[0].data, W1, sizeof W1);               /* data moved */
    fs_wire_msg_free(out);
    fs_wire_frames_free(&f);

    /* the encoder refuses what the decoder would reject */
    make_sample(FS_MSG_COMPUTE_REQ, &m);
    TENSORS[0].nbytes = 12;
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), FS_EINVAL);
    make_sample(FS_MSG_COMPUTE_REQ, &m);
    strcpy(TENSORS[1].name, TENSORS[0].name);
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), FS_EINVAL);
    make_sample(FS_MSG_COMPUTE_REQ, &m);
    TENSORS[0].shape[2] = 0;
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), FS_EINVAL);
    make_sample(FS_MSG_HELLO, &m);
    strcpy(m.u.hello.site, "bad site");
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "hello.site"));
}

static void big_tensor_roundtrip(void **state)
{
    (void)state;
    /* 9 MiB + 12 bytes in 1 MiB chunks: 10 frames, reassembled exactly, aligned */
    size_t n = (9u << 20) / 4 + 3;
    float *w = malloc(n * 4);
    assert_non_null(w);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)i;
    fs_wire_tensor t = {.name = "big", .dtype = FS_WIRE_F32, .ndim = 1, .shape = {n},
                        .data = w, .nbytes = n * 4};
    fs_wire_msg m = {.type = FS_MSG_COMPUTE_REPLY, .tensors = &t, .n_tensors = 1};
    m.u.compute_reply.count = 1;
    fs_wire_frames f;
    fs_diag d = {0};
    assert_int_equal(fs_wire_encode(&m, 1u << 20, &f, &d), 0);
    assert_int_equal(f.n_frames, 1 + 10);
    fs_wire_msg *out = NULL;
    assert_int_equal(fs_wire_decode(f.frames, f.n_frames, NULL, &out, NULL, &d), 0);
    assert_int_equal(out->tensors[0].nbytes, n * 4);
    assert_memory_equal(out->tensors[0].data, w, n * 4);
    /* the caller may take the buffer */
    void *taken = out->tensors[0].data;
    out->tensors[0].data = NULL;
    fs_wire_msg_free(out);
    fs_free(taken);
    fs_wire_frames_free(&f);
    free(w);
}

static void session_rules(void **state)
{
    (void)state;
    fs_wire_session s;
    fs_diag d = {0};
    fs_wire_msg m;
    fs_wire_session_init(&s);
    make_sample(FS_MSG_HELLO, &m);
    m.seq = 1;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), 0);
    fs_wire_session_expect(&s, "job-7f3a", 12, 3);
    make_sample(FS_MSG_COMPUTE_REPLY, &m);
    m.seq = 2;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), 0);
    /* replay of the same seq, and an older one */
    assert_int_equal(fs_wire_session_check(&s, &m, &d), FS_EAGAIN);
    m.seq = 1;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), FS_EAGAIN);
    assert_int_equal(s.n_replays, 2);
    /* wrong round / step / job */
    m.seq = 3;
    m.round = 11;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "round 11, expected 12"));
    m.round = 12;
    m.step = 4;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "step 4"));
    m.step = 3;
    strcpy(m.job, "other");
    assert_int_equal(fs_wire_session_check(&s, &m, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "job 'other'"));
    assert_int_equal(s.n_rejected, 3);
    /* heartbeat outside the job is fine, a restarted agent (HELLO seq 1) starts a new epoch */
    make_sample(FS_MSG_HEARTBEAT, &m);
    m.job[0] = '\0';
    m.seq = 4;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), 0);
    make_sample(FS_MSG_HELLO, &m);
    m.seq = 1;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), 0);
    make_sample(FS_MSG_HEARTBEAT, &m);
    m.seq = 2;
    assert_int_equal(fs_wire_session_check(&s, &m, &d), 0);
    /* garbage threshold */
    s.garbage_threshold = 3;
    assert_false(fs_wire_session_garbage(&s));
    assert_false(fs_wire_session_garbage(&s));
    assert_true(fs_wire_session_garbage(&s));
}

static void model_transfer(void **state)
{
    (void)state;
    size_t total = 1000003;
    uint8_t *blob = malloc(total);
    assert_non_null(blob);
    for (size_t i = 0; i < total; i++)
        blob[i] = (uint8_t)(i * 31 + (i >> 9));
    uint8_t dg[32];
    fs_wire_digest(blob, total, dg);
    fs_model_rx rx;
    fs_diag d = {0};
    assert_int_equal(fs_model_rx_init(&rx, dg, total, 1 << 20, &d), 0);
    fs_wire_msg req, chunk;
    int n = 0;
    while (fs_model_rx_next_req(&rx, 65536, &req)) {
        assert_int_equal(fs_model_make_chunk(&req, blob, total, dg, 65536, &chunk, &d), 0);
        /* through the encoder and decoder, as on the wire */
        fs_wire_frames f;
        assert_int_equal(fs_wire_encode(&chunk, 65536, &f, &d), 0);
        fs_wire_msg *got = NULL;
        assert_int_equal(fs_wire_decode(f.frames, f.n_frames, NULL, &got, NULL, &d), 0);
        assert_int_equal(fs_model_rx_add(&rx, got, &d), 0);
        /* a duplicate chunk is refused */
        assert_int_equal(fs_model_rx_add(&rx, got, &d), FS_EPROTO);
        fs_wire_msg_free(got);
        fs_wire_frames_free(&f);
        n++;
    }
    assert_int_equal(n, 16);
    assert_int_equal(fs_model_rx_finish(&rx, &d), 0);
    assert_memory_equal(rx.buf, blob, total);
    fs_model_rx_free(&rx);
    /* a corrupted byte is caught by the digest */
    assert_int_equal(fs_model_rx_init(&rx, dg, total, 1 << 20, &d), 0);
    blob[500000] ^= 1;
    while (fs_model_rx_next_req(&rx, 1 << 20, &req)) {
        assert_int_equal(fs_model_make_chunk(&req, blob, total, dg, 1 << 20, &chunk, &d), 0);
        assert_int_equal(fs_model_rx_add(&rx, &chunk, &d), 0);
    }
    assert_int_equal(fs_model_rx_finish(&rx, &d), FS_EAUTH);
    fs_model_rx_free(&rx);
    /* the buffer comes from the expected size; a chunk claiming another total is refused */
    assert_int_equal(fs_model_rx_init(&rx, dg, 100, 1 << 20, &d), 0);
    fs_wire_msg_free(NULL);
    make_sample(FS_MSG_MODEL_CHUNK, &chunk);
    memcpy(chunk.u.model_chunk.digest, dg, 32);
    chunk.u.model_chunk.offset = 0;
    chunk.u.model_chunk.total = total;
    assert_int_equal(fs_model_rx_add(&rx, &chunk, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "expected 100"));
    fs_model_rx_free(&rx);
    assert_int_equal(fs_model_rx_init(&rx, dg, 2000, 1000, &d), FS_EINVAL);
    /* the sender answers only requests for its model and within it; lengths are clipped */
    make_sample(FS_MSG_MODEL_REQ, &req);
    memcpy(req.u.model_req.digest, dg, 32);
    req.u.model_req.offset = total - 10;
    req.u.model_req.len = 1000;
    assert_int_equal(fs_model_make_chunk(&req, blob, total, dg, 65536, &chunk, &d), 0);
    assert_int_equal(chunk.u.model_chunk.len, 10);
    req.u.model_req.offset = total;
    assert_int_equal(fs_model_make_chunk(&req, blob, total, dg, 65536, &chunk, &d), FS_EPROTO);
    req.u.model_req.offset = 0;
    req.u.model_req.digest[0] ^= 1;
    assert_int_equal(fs_model_make_chunk(&req, blob, total, dg, 65536, &chunk, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "unknown model digest"));
    free(blob);
}

/* ---- allow-list and keys ------------------------------------------------------------------- */

static void allowlist_parse(void **state)
{
    (void)state;
    fs_key k1, k2;
    char z1[41], z2[41];
    for (int i = 0; i < 32; i++) {
        k1[i] = (uint8_t)(i * 3 + 1);
        k2[i] = (uint8_t)(200 - i);
    }
    fs_key_to_z85(k1, z1);
    fs_key_to_z85(k2, z2);
    char text[1024];
    snprintf(text, sizeof text, "# agents\n\n  # indented comment\nsite-a %s\nsite_b\t%s  \r\n", z1,
             z2);
    fs_allow_entry *e = NULL;
    size_t n = 0;
    fs_diag d = {0};
    assert_int_equal(fs_allowlist_parse(text, strlen(text), "t", &e, &n, &d), 0);
    assert_int_equal(n, 2);
    assert_string_equal(e[0].name, "site-a");
    assert_memory_equal(e[1].key, k2, 32);
    free(e);
    /* a key containing '#' is not a comment: find one such key */
    fs_key kh;
    char zh[41];
    for (int seed = 0;; seed++) {
        for (int i = 0; i < 32; i++)
            kh[i] = (uint8_t)(seed * 13 + i * 7);
        fs_key_to_z85(kh, zh);
        if (strchr(zh, '#'))
            break;
    }
    snprintf(text, sizeof text, "hashy %s\n", zh);
    assert_int_equal(fs_allowlist_parse(text, strlen(text), "t", &e, &n, &d), 0);
    assert_memory_equal(e[0].key, kh, 32);
    free(e);
    /* rejections name the line */
    char cases[6][256];
    const char *want[6] = {"t:2: duplicate name",   "t:2: key of 'site-b' already",
                           "t:1: expected",         "t:1: expected",
                           "t:1: name",             "t:1: key of 'site-a'"};
    snprintf(cases[0], 256, "site-a %s\nsite-a %s\n", z1, z2);
    snprintf(cases[1], 256, "site-a %s\nsite-b %s\n", z1, z1);
    snprintf(cases[2], 256, "site-a %s extra\n", z1);
    snprintf(cases[3], 256, "site-a\n");
    snprintf(cases[4], 256, "bad/name %s\n", z1);
    snprintf(cases[5], 256, "site-a %.39s\n", z1);
    for (size_t i = 0; i < 6; i++) {
        e = NULL;
        assert_int_equal(fs_allowlist_parse(cases[i], strlen(cases[i]), "t", &e, &n, &d),
                         FS_EFORMAT);
        if (!strstr(d.msg, want[i]))
            fail_msg("case %zu: '%s' lacks '%s'", i, d.msg, want[i]);
        assert_null(e);
    }
    /* bad Z85 character */
    snprintf(text, sizeof text, "site-a %s\n", z1);
    text[7] = '"';
    assert_int_equal(fs_allowlist_parse(text, strlen(text), "t", &e, &n, &d), FS_EFORMAT);
    /* Z85 group overflowing 32 bits ("#####" = 85^5 - 1 > 2^32) */
    snprintf(text, sizeof text, "site-a #####%.35s\n", z1 + 5);
    assert_int_equal(fs_allowlist_parse(text, strlen(text), "t", &e, &n, &d), FS_EFORMAT);
}

static char g_dir[256];

static void keys_files(void **state)
{
    (void)state;
    fs_diag d = {0};
    snprintf(g_dir, sizeof g_dir, "/tmp/fs-test-wire-%d", (int)getpid());
    assert_int_equal(mkdir(g_dir, 0700), 0);
    char pz[41];
    assert_int_equal(fs_keys_generate(g_dir, "agent1", pz, &d), 0);
    char path[512], ppath[512];
    snprintf(path, sizeof path, "%s/agent1.key", g_dir);
    snprintf(ppath, sizeof ppath, "%s/agent1.pub", g_dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(ppath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    fs_key sec, pub, pub2;
    assert_int_equal(fs_keys_load_secret(path, sec, pub, &d), 0);
    assert_int_equal(fs_keys_load_public(ppath, pub2, &d), 0);
    assert_memory_equal(pub, pub2, 32);
    char z[41];
    fs_key_to_z85(pub, z);
    assert_string_equal(z, pz);
    /* never overwrites */
    assert_int_not_equal(fs_keys_generate(g_dir, "agent1", NULL, &d), 0);
    assert_non_null(strstr(d.msg, "exists"));
    /* a secret readable by others is refused, naming the file and the mode */
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(fs_keys_load_secret(path, sec, NULL, &d), FS_EAUTH);
    assert_non_null(strstr(d.msg, path));
    assert_non_null(strstr(d.msg, "0644"));
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(fs_keys_load_secret(path, sec, NULL, &d), FS_EAUTH);
    /* a public key file is not a secret key file */
    assert_int_equal(chmod(ppath, 0600), 0);
    assert_int_equal(fs_keys_load_secret(ppath, sec, NULL, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "line 1"));
    unlink(path);
    unlink(ppath);
    rmdir(g_dir);
}

/* ---- streamed replies ------------------------------------------------------------------------ */

/* Sends a three-tensor reply as head + parts through the encoder and decoder, reassembles it with
 * fs_wire_stream_rx, and checks the receiver's rejections (gap, repeat, wrong offset, wrong tensor,
 * split element, part after the end, last part short). */
static void stream_roundtrip_and_rejections(void **state)
{
    (void)state;
    enum { NA = 1000, NB = 3, NC = 70001 };
    static float a[NA], c[NC];
    static double b[NB];
    for (int i = 0; i < NA; i++)
        a[i] = (float)i * 0.25f;
    for (int i = 0; i < NB; i++)
        b[i] = -1.5 * i;
    for (int i = 0; i < NC; i++)
        c[i] = (float)(i % 977) - 400.0f;
    fs_wire_tensor t[3];
    memset(t, 0, sizeof t);
    strcpy(t[0].name, "grad/a");
    t[0].dtype = FS_WIRE_F32;
    t[0].ndim = 2;
    t[0].shape[0] = 10;
    t[0].shape[1] = 100;
    t[0].data = a;
    t[0].nbytes = sizeof a;
    strcpy(t[1].name, "grad/b");
    t[1].dtype = FS_WIRE_F64;
    t[1].ndim = 1;
    t[1].shape[0] = NB;
    t[1].data = b;
    t[1].nbytes = sizeof b;
    strcpy(t[2].name, "grad/c");
    t[2].dtype = FS_WIRE_F32;
    t[2].ndim = 1;
    t[2].shape[0] = NC;
    t[2].data = c;
    t[2].nbytes = sizeof c;
    fs_kv sc[] = {{.key = "loss_sum", .kind = FS_KV_FLOAT, .f = 2.5}};
    fs_wire_msg reply;
    memset(&reply, 0, sizeof reply);
    reply.type = FS_MSG_COMPUTE_REPLY;
    strcpy(reply.job, "j1");
    reply.round = 7;
    reply.u.compute_reply.count = 40;
    reply.u.compute_reply.scalars.items = sc;
    reply.u.compute_reply.scalars.n = 1;
    reply.tensors = t;
    reply.n_tensors = 3;

    fs_wire_stream_tx tx;
    fs_wire_msg head, part;
    fs_diag d = {0};
    assert_int_equal(fs_wire_stream_tx_init(&tx, &reply, 10000, 4096, &head, &d), 0);
    /* head through the codec */
    fs_wire_frames f;
    assert_int_equal(fs_wire_encode(&head, 4096, &f, &d), 0);
    assert_int_equal(f.n_frames, 1);
    fs_wire_msg *h = NULL;
    assert_int_equal(fs_wire_decode(f.frames, f.n_frames, NULL, &h, NULL, &d), 0);
    fs_wire_frames_free(&f);
    assert_int_equal(h->type, FS_MSG_COMPUTE_HEAD);
    assert_int_equal(h->round, 7);
    assert_int_equal(h->u.compute_head.parts, tx.parts);
    assert_true(tx.parts >= (sizeof a + sizeof b + sizeof c) / 10000);
    fs_wire_stream_rx rx;
    assert_int_equal(fs_wire_stream_rx_begin(&rx, h, 1u << 30, &d), 0);
    assert_int_equal(rx.total, sizeof a + sizeof b + sizeof c);
    /* a ceiling below the announced bytes is refused */
    fs_wire_stream_rx small;
    assert_int_equal(fs_wire_stream_rx_begin(&small, h, 1000, &d), FS_EPROTO);
    fs_wire_msg_free(h);

    static uint8_t got[3][sizeof c];
    memset(got, 0, sizeof got);
    uint32_t n = 0;
    while (fs_wire_stream_tx_next(&tx, &part)) {
        assert_false(fs_wire_stream_rx_done(&rx));
        assert_int_equal(fs_wire_encode(&part, 4096, &f, &d), 0);
        fs_wire_msg *pm = NULL;
        assert_int_equal(fs_wire_decode(f.frames, f.n_frames, NULL, &pm, NULL, &d), 0);
        assert_int_equal(pm->u.compute_part.part, n);
        if (n == 1) {
            /* a repeat of part 0 or a jump to part 2 is refused and leaves rx as it was */
            fs_wire_msg bad = *pm;
            bad.u.compute_part.part = 0;
            assert_int_equal(fs_wire_stream_rx_part(&rx, &bad, &d), FS_EPROTO);
            assert_non_null(strstr(d.msg, "part 0 arrived where part 1"));
            bad.u.compute_part.part = 2;
            assert_int_equal(fs_wire_stream_rx_part(&rx, &bad, &d), FS_EPROTO);
            /* a slice that does not continue where the last one stopped */
            fs_wire_slice sl[FS_WIRE_STREAM_MAX_SLICES];
            memcpy(sl, pm->u.compute_part.slices, pm->u.compute_part.n_slices * sizeof sl[0]);
            bad = *pm;
            bad.u.compute_part.slices = sl;
            sl[0].offset += 4;
            assert_int_equal(fs_wire_stream_rx_part(&rx, &bad, &d), FS_EPROTO);
            sl[0].offset -= 4;
            strcpy(sl[0].name, "grad/b");
            assert_int_equal(fs_wire_stream_rx_part(&rx, &bad, &d), FS_EPROTO);
            assert_non_null(strstr(d.msg, "expected the next bytes of 'grad/"));
            memcpy(sl, pm->u.compute_part.slices, pm->u.compute_part.n_slices * sizeof sl[0]);
            sl[0].len -= 2; /* half an element */
            assert_int_equal(fs_wire_stream_rx_part(&rx, &bad, &d), FS_EPROTO);
        }
        assert_int_equal(fs_wire_stream_rx_part(&rx, pm, &d), 0);
        for (size_t i = 0; i < pm->u.compute_part.n_slices; i++) {
            const fs_wire_slice *sl = &pm->u.compute_part.slices[i];
            assert_true(sl->len <= 4096);
            int k = sl->name[5] - 'a';
            assert_true(k >= 0 && k < 3 && sl->offset + sl->len <= t[k].nbytes);
            memcpy(got[k] + sl->offset, sl->data, sl->len);
        }
        fs_wire_msg_free(pm);
        fs_wire_frames_free(&f);
        n++;
    }
    assert_int_equal(n, tx.parts);
    assert_true(fs_wire_stream_rx_done(&rx));
    assert_memory_equal(got[0], a, sizeof a);
    assert_memory_equal(got[1], b, sizeof b);
    assert_memory_equal(got[2], c, sizeof c);
    /* nothing more is accepted */
    fs_wire_slice extra = {.name = "grad/c", .offset = 0, .data = c, .len = 4};
    fs_wire_msg more;
    memset(&more, 0, sizeof more);
    more.type = FS_MSG_COMPUTE_PART;
    more.u.compute_part.part = n;
    more.u.compute_part.slices = &extra;
    more.u.compute_part.n_slices = 1;
    assert_int_equal(fs_wire_stream_rx_part(&rx, &more, &d), FS_EPROTO);
    fs_wire_stream_rx_free(&rx);

    /* a last part that leaves bytes missing: head announces 1 part, the part covers only 'a' */
    assert_int_equal(fs_wire_stream_tx_init(&tx, &reply, 10000, 4096, &head, &d), 0);
    head.u.compute_head.parts = 1;
    head.tensors = t;
    head.n_tensors = 3;
    assert_int_equal(fs_wire_stream_rx_begin(&rx, &head, 1u << 30, &d), 0);
    fs_wire_slice one = {.name = "grad/a", .offset = 0, .data = a, .len = sizeof a};
    more.u.compute_part.part = 0;
    more.u.compute_part.slices = &one;
    assert_int_equal(fs_wire_stream_rx_part(&rx, &more, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "last part 0 ends with"));
    assert_false(fs_wire_stream_rx_done(&rx));
    fs_wire_stream_rx_free(&rx);

    /* the decoder: a part whose slice len disagrees with its frame, and a head with parts but no
     * tensors, are rejected */
    fs_wire_msg pm;
    make_sample(FS_MSG_COMPUTE_PART, &pm);
    assert_int_equal(fs_wire_encode(&pm, 64, &f, &d), 0);
    f.frames[1].len -= 1;
    fs_wire_msg *out = NULL;
    assert_int_equal(fs_wire_decode(f.frames, f.n_frames, NULL, &out, NULL, &d), FS_EPROTO);
    fs_wire_frames_free(&f);
    make_sample(FS_MSG_COMPUTE_HEAD, &pm);
    pm.n_tensors = 0;
    assert_int_equal(fs_wire_encode(&pm, 64, &f, &d), FS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_vectors),   cmocka_unit_test(decoder_rejects),
        cmocka_unit_test(precheck_bombs),   cmocka_unit_test(tensors_strict),
        cmocka_unit_test(big_tensor_roundtrip), cmocka_unit_test(session_rules),
        cmocka_unit_test(model_transfer),   cmocka_unit_test(allowlist_parse),
        cmocka_unit_test(keys_files),       cmocka_unit_test(stream_roundtrip_and_rejections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
