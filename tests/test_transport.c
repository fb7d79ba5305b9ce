/*
 * test_transport.c — the CURVE transport on real sockets over tcp://127.0.0.1:* (port read from
 * ZMQ_LAST_ENDPOINT, LINGER 0): allowed and unknown keys, revocation by allow-list reload,
 * tampered / truncated / oversized messages while another agent keeps being served, version
 * mismatch answered with ERROR{version, supported}, replayed seq dropped and counted, stale round
 * answered with ERROR{stale}, quarantine after repeated garbage, and a large model transfer in
 * chunks verified by digest (FS_TRANSFER_MIB, default 256; see docs/protocol.md).
 *
 * Each test starts its own server (own ZeroMQ context: one ZAP handler per context) and agents on
 * another context, all driven from this one thread (the handshakes run on libzmq's I/O threads and
 * the ZAP thread).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "fs_keys.h"
#include "fs_link.h"
#include "fs_log.h"
#include "fs_wire.h"

/* ---- captured log ---------------------------------------------------------------------------- */

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[1 << 16];
static size_t g_log_len;

static void capture_sink(int level, const char *file, int line, const char *func, const char *msg,
                         const char *const *kv, void *ud)
{
    (void)file, (void)line, (void)func, (void)ud;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "[%d] %s", level, msg);
    for (; kv && kv[0] && kv[1] && n < (int)sizeof buf; kv += 2)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " %s=%s", kv[0], kv[1]);
    if (n >= (int)sizeof buf)
        n = (int)sizeof buf - 1;
    pthread_mutex_lock(&g_log_mu);
    if (g_log_len + (size_t)n + 2 < sizeof g_log) {
        memcpy(g_log + g_log_len, buf, (size_t)n);
        g_log_len += (size_t)n;
        g_log[g_log_len++] = '\n';
        g_log[g_log_len] = '\0';
    }
    pthread_mutex_unlock(&g_log_mu);
    if (getenv("FS_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", buf);
}

static bool log_has(const char *a, const char *b)
{
    pthread_mutex_lock(&g_log_mu);
    bool found = false;
    for (char *p = g_log; (p = strstr(p, a)) != NULL; p++) {
        char *eol = strchr(p, '\n');
        char *q = b ? strstr(p, b) : p;
        if (q && (!eol || q < eol)) {
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&g_log_mu);
    return found;
}

static void log_clear(void)
{
    pthread_mutex_lock(&g_log_mu);
    g_log_len = 0;
    g_log[0] = '\0';
    pthread_mutex_unlock(&g_log_mu);
}

/* ---- fixture ------------------------------------------------------------------------------- */

typedef struct {
    fs_key pub, sec;
    char z85[41];
} keypair;

static char g_dir[256];
static keypair g_server, g_a1, g_a2, g_unknown;
static char g_allow[512];

static void make_keys(const char *name, keypair *k)
{
    fs_diag d = {0};
    char path[512];
    if (fs_keys_generate(g_dir, name, k->z85, &d) != 0)
        fail_msg("keygen %s: %s", name, d.msg);
    snprintf(path, sizeof path, "%s/%s.key", g_dir, name);
    assert_int_equal(fs_keys_load_secret(path, k->sec, k->pub, &d), 0);
}

static void write_allow(bool with_a2)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_allow);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "# test agents\nagent-1 %s\n", g_a1.z85);
    if (with_a2)
        fprintf(f, "agent-2 %s\n", g_a2.z85);
    fclose(f);
    assert_int_equal(rename(tmp, g_allow), 0);
}

static int group_setup(void **state)
{
    (void)state;
    fs_log_set_sink(capture_sink, NULL);
    fs_log_set_level(FS_LOG_DEBUG);
    snprintf(g_dir, sizeof g_dir, "/tmp/fs-test-transport-%d", (int)getpid());
    if (mkdir(g_dir, 0700) != 0)
        return -1;
    make_keys("server", &g_server);
    make_keys("agent-1", &g_a1);
    make_keys("agent-2", &g_a2);
    make_keys("stranger", &g_unknown);
    snprintf(g_allow, sizeof g_allow, "%s/agents.allow", g_dir);
    write_allow(true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct {
    void *sctx, *cctx;
    fs_link_server *srv;
    fs_link_options opt;
} world;

static fs_link_options test_options(void)
{
    fs_link_options o = fs_link_options_default();
    o.linger_ms = 0;
    o.reconnect_ivl_ms = 100;
    o.reconnect_ivl_max_ms = 400;
    o.send_timeout_ms = 3000;
    o.max_garbage = 1000;
    o.auth_log_burst = 100;
    return o;
}

static void world_open(world *w, const fs_link_options *opt)
{
    fs_diag d = {0};
    memset(w, 0, sizeof *w);
    w->opt = opt ? *opt : test_options();
    w->sctx = zmq_ctx_new();
    w->cctx = zmq_ctx_new();
    assert_non_null(w->sctx);
    int rc = fs_link_server_open(&w->srv, w->sctx, "tcp://127.0.0.1:*", g_server.sec, g_allow,
                                 &w->opt, &d);
    if (rc)
        fail_msg("server open: %s", d.msg);
    assert_non_null(strstr(fs_link_server_endpoint(w->srv), "tcp://127.0.0.1:"));
}

static fs_link_client *client(world *w, const keypair *k, int send_timeout_ms)
{
    fs_diag d = {0};
    fs_link_client *c = NULL;
    fs_link_options o = w->opt;
    o.send_timeout_ms = send_timeout_ms;
    int rc = fs_link_client_open(&c, w->cctx, fs_link_server_endpoint(w->srv), g_server.pub, k->pub,
                                 k->sec, &o, &d);
    if (rc)
        fail_msg("client open: %s", d.msg);
    return c;
}

static void world_close(world *w)
{
    fs_link_server_close(w->srv);
    zmq_ctx_term(w->sctx);
    zmq_ctx_term(w->cctx);
}

static void hello(fs_wire_msg *m, const char *site)
{
    memset(m, 0, sizeof *m);
    m->type = FS_MSG_HELLO;
    m->u.hello.proto_min = m->u.hello.proto_max = 1;
    strcpy(m->u.hello.version, "test");
    snprintf(m->u.hello.site, sizeof m->u.hello.site, "%s", site);
}

static void heartbeat(fs_wire_msg *m, double p)
{
    memset(m, 0, sizeof *m);
    m->type = FS_MSG_HEARTBEAT;
    m->u.heartbeat.progress = p;
}

/* Receives on the server until a message arrives (skipping rejections) or timeout. */
static int srv_recv(world *w, fs_link_peer *peer, fs_wire_msg **m, int timeout_ms)
{
    uint64_t end = fs_now_usec() + (uint64_t)timeout_ms * 1000;
    fs_diag d = {0};
    for (;;) {
        uint64_t now = fs_now_usec();
        int left = now >= end ? 0 : (int)((end - now) / 1000);
        int rc = fs_link_server_recv(w->srv, peer, m, left, &d);
        if (rc != FS_EAGAIN || left == 0)
            return rc;
    }
}

static int cli_recv(fs_link_client *c, fs_wire_msg **m, int timeout_ms)
{
    uint64_t end = fs_now_usec() + (uint64_t)timeout_ms * 1000;
    fs_diag d = {0};
    for (;;) {
        uint64_t now = fs_now_usec();
        int left = now >= end ? 0 : (int)((end - now) / 1000);
        int rc = fs_link_client_recv(c, m, left, &d);
        if (rc != FS_EAGAIN || left == 0)
            return rc;
    }
}

static void send_ok(fs_link_client *c, const fs_wire_msg *m)
{
    fs_diag d = {0};
    int rc = fs_link_client_send(c, m, &d);
    if (rc)
        fail_msg("client send: %s", d.msg);
}

/* After a reconnect, a message sent before the agent noticed that its old connection died is lost
 * (the protocol's round logic resends). Sends heartbeats until one arrives (from `who`). */
static bool resend_until_received(world *w, fs_link_client *c, const char *who, int tries)
{
    for (int i = 0; i < tries; i++) {
        fs_wire_msg m;
        heartbeat(&m, 0.5);
        fs_diag d = {0};
        (void)fs_link_client_send(c, &m, &d); /* may time out while reconnecting */
        fs_link_peer peer;
        fs_wire_msg *got = NULL;
        if (srv_recv(w, &peer, &got, 500) == 0) {
            assert_string_equal(peer.name, who);
            fs_wire_msg_free(got);
            return true;
        }
    }
    return false;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void allowed_agent_roundtrip(void **state)
{
    (void)state;
    world w;
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_a1, 3000);
    fs_wire_msg m;
    hello(&m, "site-a");
    send_ok(c, &m);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_HELLO);
    /* identity comes from ZAP (allow-list name), not from the payload's site */
    assert_string_equal(peer.name, "agent-1");
    assert_string_equal(got->u.hello.site, "site-a");
    fs_wire_msg_free(got);
    fs_wire_msg wl = {.type = FS_MSG_WELCOME};
    wl.u.welcome.proto = 1;
    strcpy(wl.u.welcome.agent, peer.name);
    wl.u.welcome.heartbeat_ms = 5000;
    fs_diag d = {0};
    assert_int_equal(fs_link_server_send(w.srv, &peer, &wl, &d), 0);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_WELCOME);
    assert_string_equal(got->u.welcome.agent, "agent-1");
    fs_wire_msg_free(got);
    /* a routing id nobody owns (ZMQ_ROUTER_MANDATORY): reported, not silently dropped */
    fs_link_peer ghost = peer;
    ghost.rid[ghost.rid_len - 1] ^= 0x55;
    assert_int_equal(fs_link_server_send(w.srv, &ghost, &wl, &d), FS_ENOTFOUND);
    /* an unencodable message is refused before anything is sent */
    strcpy(wl.u.welcome.agent, "bad name");
    assert_int_equal(fs_link_server_send(w.srv, &peer, &wl, &d), FS_EINVAL);
    fs_link_client_close(c);
    world_close(&w);
}

static void unknown_key_never_gets_through(void **state)
{
    (void)state;
    world w;
    log_clear();
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_unknown, 1500);
    fs_wire_msg m;
    hello(&m, "intruder");
    fs_diag d = {0};
    /* ZMQ_IMMEDIATE: nothing is queued while no authenticated connection exists */
    assert_int_equal(fs_link_client_send(c, &m, &d), FS_ETIMEDOUT);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_null(got);
    /* the ZAP handler logged the rejected key (Z85) with the address; the monitor saw it too */
    assert_true(log_has("CURVE key rejected", g_unknown.z85));
    assert_true(log_has("CURVE key rejected", "ADDRESS=127.0.0.1"));
    assert_true(fs_link_server_stats(w.srv).auth_failures >= 1);
    fs_link_client_close(c);
    world_close(&w);
}

static void send_raw(fs_link_client *c, const void *p, size_t n)
{
    fs_wire_buf b = {p, n};
    fs_diag d = {0};
    assert_int_equal(fs_link_client_send_raw(c, &b, 1, &d), 0);
}

static void garbage_rejected_while_serving_others(void **state)
{
    (void)state;
    world w;
    log_clear();
    world_open(&w, NULL);
    fs_link_client *bad = client(&w, &g_a1, 3000);
    fs_link_client *good = client(&w, &g_a2, 3000);
    fs_wire_msg m;
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    fs_diag d = {0};

    /* 1. random bytes */
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131 + 7);
    send_raw(bad, junk, sizeof junk);
    /* 2. a valid header, truncated */
    heartbeat(&m, 0.5);
    m.seq = 77;
    fs_wire_frames f;
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), 0);
    send_raw(bad, f.header, f.header_len - 3);
    /* 3. a valid header with one byte tampered into an invalid type code */
    uint8_t tampered[256];
    memcpy(tampered, f.header, f.header_len);
    tampered[0] = 0xc1;
    send_raw(bad, tampered, f.header_len);
    fs_wire_frames_free(&f);
    /* 4. an oversized header (under ZMQ_MAXMSGSIZE, over max_header_bytes) */
    size_t big = 100 * 1024;
    uint8_t *bigbuf = calloc(1, big);
    send_raw(bad, bigbuf, big);
    free(bigbuf);
    /* 5. too many frames: drained and rejected as a whole */
    {
        size_t nfr = w.opt.limits.max_frames + 5;
        fs_wire_buf *fr = calloc(nfr, sizeof *fr);
        for (size_t i = 0; i < nfr; i++) {
            fr[i].data = "x";
            fr[i].len = 1;
        }
        assert_int_equal(fs_link_client_send_raw(bad, fr, nfr, &d), 0);
        free(fr);
    }
    /* meanwhile the other agent is served normally */
    heartbeat(&m, 0.75);
    send_ok(good, &m);
    int ok = 0;
    for (int i = 0; i < 20 && !ok; i++) {
        int rc = fs_link_server_recv(w.srv, &peer, &got, 2000, &d);
        if (rc == 0) {
            assert_string_equal(peer.name, "agent-2");
            assert_true(got->u.heartbeat.progress == 0.75);
            fs_wire_msg_free(got);
            ok = 1;
        } else {
            assert_int_equal(rc, FS_EAGAIN);
            assert_string_equal(peer.name, "agent-1");
        }
    }
    assert_true(ok);
    /* drain the rest of the garbage */
    while (srv_recv(&w, &peer, &got, 1500) == 0)
        fs_wire_msg_free(got);
    fs_link_stats st = fs_link_server_stats(w.srv);
    assert_int_equal(st.garbage, 5);
    assert_true(log_has("protocol error", "AGENT=agent-1"));
    assert_true(log_has("protocol error", "header frame of 102400 bytes"));
    assert_true(log_has("protocol error", "exceeds the limits"));
    assert_true(log_has("protocol error", "SAMPLE=\\x"));
    /* a frame over ZMQ_MAXMSGSIZE gets the connection dropped by libzmq; the agent reconnects
     * and is still served afterwards */
    size_t huge = w.opt.limits.max_chunk_bytes + 128 * 1024;
    uint8_t *hb = calloc(1, huge);
    send_raw(bad, hb, huge);
    free(hb);
    assert_int_equal(srv_recv(&w, &peer, &got, 500), FS_ETIMEDOUT);
    assert_true(resend_until_received(&w, bad, "agent-1", 20));
    fs_link_client_close(bad);
    fs_link_client_close(good);
    world_close(&w);
}

static void version_mismatch_answered(void **state)
{
    (void)state;
    world w;
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_a1, 3000);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, 2);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_str_with_body(&pk, "future", 6);
    msgpack_pack_array(&pk, 0);
    send_raw(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_ERROR);
    assert_string_equal(got->u.error.code, "version");
    assert_true(got->u.error.has_supported);
    assert_int_equal(got->u.error.supported_min, 1);
    assert_int_equal(got->u.error.supported_max, 1);
    assert_non_null(strstr(got->u.error.text, "version 2"));
    fs_wire_msg_free(got);
    assert_int_equal(fs_link_server_stats(w.srv).rejected, 1);
    fs_link_client_close(c);
    world_close(&w);
}

static void replay_dropped_and_stale_answered(void **state)
{
    (void)state;
    world w;
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_a1, 3000);
    fs_diag d = {0};
    fs_wire_msg m;
    heartbeat(&m, 0.1);
    m.seq = 10;
    fs_wire_frames f;
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), 0);
    send_raw(c, f.header, f.header_len);
    send_raw(c, f.header, f.header_len); /* the same seq again */
    fs_wire_frames_free(&f);
    m.seq = 11;
    m.u.heartbeat.progress = 0.2;
    assert_int_equal(fs_wire_encode(&m, 0, &f, &d), 0);
    send_raw(c, f.header, f.header_len);
    fs_wire_frames_free(&f);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->seq, 10);
    fs_wire_msg_free(got);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->seq, 11);
    fs_wire_msg_free(got);
    assert_int_equal(fs_link_server_stats(w.srv).replays, 1);
    assert_int_equal(fs_link_server_session(w.srv, "agent-1")->n_replays, 1);

    /* the link numbers its own messages from 1: a HELLO starts that new epoch */
    fs_wire_msg h;
    hello(&h, "site-a");
    send_ok(c, &h);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->seq, 1);
    fs_wire_msg_free(got);
    /* stale round: the server expects job-1 round 3 step 0 */
    fs_link_server_expect_all(w.srv, "job-1", 3, 0);
    fs_wire_msg r = {.type = FS_MSG_COMPUTE_REPLY};
    strcpy(r.job, "job-1");
    r.round = 2;
    send_ok(c, &r);
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_ERROR);
    assert_string_equal(got->u.error.code, "stale");
    assert_non_null(strstr(got->u.error.text, "round 2, expected 3"));
    fs_wire_msg_free(got);
    /* more of the same stale exchange (the rest of a streamed reply) is dropped without another
     * ERROR each; a different stale round is answered again */
    uint64_t rejected = fs_link_server_stats(w.srv).rejected;
    send_ok(c, &r);
    send_ok(c, &r);
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_int_equal(fs_link_server_stats(w.srv).rejected, rejected + 2);
    assert_int_equal(cli_recv(c, &got, 300), FS_ETIMEDOUT);
    r.round = 1;
    send_ok(c, &r);
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_string_equal(got->u.error.code, "stale");
    fs_wire_msg_free(got);
    r.round = 3;
    send_ok(c, &r);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_COMPUTE_REPLY);
    fs_wire_msg_free(got);
    fs_link_client_close(c);
    world_close(&w);
}

static void quarantine_after_garbage(void **state)
{
    (void)state;
    fs_link_options o = test_options();
    o.max_garbage = 3;
    world w;
    world_open(&w, &o);
    fs_link_client *c = client(&w, &g_a1, 3000);
    for (int i = 0; i < 3; i++)
        send_raw(c, "\xc1", 1);
    fs_wire_msg m;
    heartbeat(&m, 0.3);
    send_ok(c, &m);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    assert_true(fs_link_server_quarantined(w.srv, "agent-1"));
    assert_int_equal(fs_link_server_stats(w.srv).quarantined, 1);
    fs_link_server_unquarantine(w.srv, "agent-1");
    send_ok(c, &m);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    fs_wire_msg_free(got);
    fs_link_client_close(c);
    world_close(&w);
}

static void removed_key_cut_off_after_reload(void **state)
{
    (void)state;
    world w;
    log_clear();
    write_allow(true);
    world_open(&w, NULL);
    fs_link_client *c1 = client(&w, &g_a1, 3000);
    fs_link_client *c2 = client(&w, &g_a2, 1500);
    fs_wire_msg m;
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    fs_diag d = {0};
    heartbeat(&m, 0.1);
    send_ok(c1, &m);
    send_ok(c2, &m);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    fs_wire_msg_free(got);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    fs_wire_msg_free(got);

    /* a bad new list is rejected and the old one kept */
    FILE *f = fopen(g_allow, "w");
    fprintf(f, "agent-1 %s\nagent-1 %s\n", g_a1.z85, g_a2.z85);
    fclose(f);
    assert_int_equal(fs_link_server_reload(w.srv, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, ":2: duplicate name"));
    send_ok(c2, &m);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_string_equal(peer.name, "agent-2");
    fs_wire_msg_free(got);

    /* remove agent-2: reload re-creates the ROUTER, agent-2 can no longer get anything in */
    write_allow(false);
    assert_int_equal(fs_link_server_reload(w.srv, &d), 0);
    assert_int_equal(fs_link_server_stats(w.srv).rebinds, 1);
    assert_null(fs_link_server_session(w.srv, "agent-2"));
    int rc = fs_link_client_send(c2, &m, &d); /* may be queued on a dying link or time out */
    (void)rc;
    /* agent-1 reconnects by itself and is served; nothing from agent-2 ever arrives */
    assert_true(resend_until_received(&w, c1, "agent-1", 20));
    for (int i = 0; i < 3; i++) {
        (void)fs_link_client_send(c2, &m, &d);
        rc = srv_recv(&w, &peer, &got, 500);
        if (rc == 0) {
            assert_string_equal(peer.name, "agent-1"); /* a late duplicate at most, never agent-2 */
            fs_wire_msg_free(got);
        }
    }
    assert_true(log_has("CURVE key rejected", g_a2.z85));
    write_allow(true);
    fs_link_client_close(c1);
    fs_link_client_close(c2);
    world_close(&w);
}

static void removed_key_dropped_before_rebind(void **state)
{
    (void)state;
    /* The per-message User-Id check against the CURRENT list: with rebinding turned off, a key
     * removed from the file keeps its connection but none of its messages gets through. */
    fs_link_options o = test_options();
    o.rebind_on_removal = false;
    world w;
    write_allow(true);
    world_open(&w, &o);
    fs_link_client *c2 = client(&w, &g_a2, 3000);
    fs_wire_msg m;
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    fs_diag d = {0};
    heartbeat(&m, 0.1);
    send_ok(c2, &m);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    fs_wire_msg_free(got);
    write_allow(false);
    assert_int_equal(fs_link_server_reload(w.srv, &d), 0);
    assert_int_equal(fs_link_server_stats(w.srv).rebinds, 0);
    send_ok(c2, &m); /* the old connection is still up: the send itself succeeds */
    assert_int_equal(fs_link_server_recv(w.srv, &peer, &got, 5000, &d), FS_EAGAIN);
    assert_null(got);
    assert_non_null(strstr(d.msg, "revoked"));
    assert_int_equal(fs_link_server_stats(w.srv).unauthorized, 1);
    /* and an explicit rebind cuts the connection: the next send finds no authenticated link */
    assert_int_equal(fs_link_server_rebind(w.srv, &d), 0);
    usleep(300 * 1000);
    assert_int_equal(srv_recv(&w, &peer, &got, 1000), FS_ETIMEDOUT);
    write_allow(true);
    fs_link_client_close(c2);
    world_close(&w);
}

static void release_count(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* The coordinator side of the transfer on its own thread, as in the daemon. The server socket
 * migrates to this thread (pthread_create/join are full barriers, which libzmq requires). */
typedef struct {
    world *w;
    const uint8_t *blob;
    size_t total;
    const uint8_t *dg;
    atomic_int stop;
    atomic_int released;
    int sent;
    int err;
} xfer;

static void *coordinator_thread(void *arg)
{
    xfer *x = arg;
    fs_diag d = {0};
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    while (!atomic_load(&x->stop)) {
        int rc = fs_link_server_recv(x->w->srv, &peer, &got, 50, &d);
        if (rc == FS_ETIMEDOUT || rc == FS_EAGAIN)
            continue;
        if (rc) {
            x->err = rc;
            break;
        }
        fs_wire_msg ch;
        rc = fs_model_make_chunk(got, x->blob, x->total, x->dg, x->w->opt.chunk_bytes, &ch, &d);
        if (rc == 0) {
            do {
                rc = fs_link_server_send_zc(x->w->srv, &peer, &ch, release_count, &x->released,
                                            &d);
            } while (rc == FS_EAGAIN);
        }
        fs_wire_msg_free(got);
        if (rc) {
            x->err = rc;
            break;
        }
        x->sent++;
    }
    return NULL;
}

/* Tensors cross the link in many raw frames, both ways (the receiver copies each frame into its
 * tensor as it arrives): bytes, shapes and alignment intact, including chunks of <= 33 bytes
 * (which libzmq stores inside the zmq_msg_t) and a MODEL_CHUNK that small; frames that disagree
 * with their header are rejected as garbage while the next good message still gets through. */
static void tensors_cross_in_chunks(void **state)
{
    (void)state;
    fs_link_options o = test_options();
    o.chunk_bytes = 1000;
    world w;
    world_open(&w, &o);
    fs_link_client *c = client(&w, &g_a1, 3000);
    static float a[2500];
    static uint8_t b[7];
    static double cc[129];
    for (size_t i = 0; i < 2500; i++)
        a[i] = (float)i * 0.25f;
    for (size_t i = 0; i < 7; i++)
        b[i] = (uint8_t)(200 + i);
    for (size_t i = 0; i < 129; i++)
        cc[i] = -(double)i;
    fs_wire_tensor t[3] = {
        {.name = "a", .dtype = FS_WIRE_F32, .ndim = 2, .shape = {50, 50}, .data = a,
         .nbytes = sizeof a},
        {.name = "b", .dtype = FS_WIRE_U8, .ndim = 1, .shape = {7}, .data = b, .nbytes = sizeof b},
        {.name = "c", .dtype = FS_WIRE_F64, .ndim = 1, .shape = {129}, .data = cc,
         .nbytes = sizeof cc},
    };
    fs_wire_msg m = {.type = FS_MSG_COMPUTE_REPLY, .tensors = t, .n_tensors = 3};
    m.u.compute_reply.count = 3;
    send_ok(c, &m);
    fs_link_peer peer;
    fs_wire_msg *got = NULL;
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->n_tensors, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(got->tensors[i].name, t[i].name);
        assert_int_equal(got->tensors[i].nbytes, t[i].nbytes);
        assert_memory_equal(got->tensors[i].data, t[i].data, t[i].nbytes);
        assert_int_equal((uintptr_t)got->tensors[i].data % 64, 0);
    }
    assert_int_equal(got->tensors[0].shape[1], 50);
    fs_wire_msg_free(got);

    /* coordinator -> agent, zero-copy */
    fs_wire_msg req = {.type = FS_MSG_COMPUTE_REQ, .tensors = t, .n_tensors = 3};
    strcpy(req.u.compute_req.kind, "loss_grad");
    fs_diag d = {0};
    atomic_int released;
    atomic_init(&released, 0);
    assert_int_equal(fs_link_server_send_zc(w.srv, &peer, &req, release_count, &released, &d), 0);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_COMPUTE_REQ);
    for (size_t i = 0; i < 3; i++)
        assert_memory_equal(got->tensors[i].data, t[i].data, t[i].nbytes);
    fs_wire_msg_free(got);

    /* a MODEL_CHUNK of 20 bytes: its data lives in the received frame */
    static uint8_t blob[100];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)(i * 3 + 1);
    fs_wire_msg mc = {.type = FS_MSG_MODEL_CHUNK};
    fs_wire_digest(blob, sizeof blob, mc.u.model_chunk.digest);
    mc.u.model_chunk.total = sizeof blob;
    mc.u.model_chunk.offset = 80;
    mc.u.model_chunk.data = blob + 80;
    mc.u.model_chunk.len = 20;
    assert_int_equal(fs_link_server_send(w.srv, &peer, &mc, &d), 0);
    assert_int_equal(cli_recv(c, &got, 5000), 0);
    assert_int_equal(got->u.model_chunk.len, 20);
    assert_memory_equal(got->u.model_chunk.data, blob + 80, 20);
    fs_wire_msg_free(got);

    /* frames that contradict the header: one 4 bytes short, then one missing */
    fs_wire_frames f;
    m.seq = 100;
    assert_int_equal(fs_wire_encode(&m, 1000, &f, &d), 0);
    uint64_t garbage0 = fs_link_server_stats(w.srv).garbage;
    f.frames[2].len -= 4;
    assert_int_equal(fs_link_client_send_raw(c, f.frames, f.n_frames, &d), 0);
    f.frames[2].len += 4;
    assert_int_equal(fs_link_client_send_raw(c, f.frames, f.n_frames - 1, &d), 0);
    fs_wire_frames_free(&f);
    fs_wire_msg hb;
    heartbeat(&hb, 0.25);
    send_ok(c, &hb);
    assert_int_equal(srv_recv(&w, &peer, &got, 5000), 0);
    assert_int_equal(got->type, FS_MSG_HEARTBEAT);
    fs_wire_msg_free(got);
    assert_int_equal(fs_link_server_stats(w.srv).garbage, garbage0 + 2);
    fs_link_client_close(c);
    world_close(&w);
    assert_int_equal(atomic_load(&released), 1);
}

static void large_model_transfer(void **state)
{
    (void)state;
    const char *env = getenv("FS_TRANSFER_MIB");
    size_t mib = env ? (size_t)atoi(env) : 256;
    size_t total = mib << 20;
    uint8_t *blob = malloc(total);
    assert_non_null(blob);
    for (size_t i = 0; i < total; i += 8) {
        uint64_t v = i * 0x9E3779B97F4A7C15ull;
        memcpy(blob + i, &v, 8);
    }
    uint8_t dg[32];
    fs_wire_digest(blob, total, dg);
    world w;
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_a1, 3000);
    fs_model_rx rx;
    fs_diag d = {0};
    assert_int_equal(fs_model_rx_init(&rx, dg, total, total, &d), 0);
    xfer x = {.w = &w, .blob = blob, .total = total, .dg = dg};
    atomic_init(&x.stop, 0);
    atomic_init(&x.released, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, coordinator_thread, &x), 0);
    uint64_t t0 = fs_now_usec();
    size_t chunk = w.opt.chunk_bytes;
    int in_flight = 0;
    uint64_t next_off = 0;
    fs_wire_msg *got = NULL;
    /* credit-based flow: the agent keeps up to 4 chunk requests outstanding */
    while (rx.received < total) {
        while (in_flight < 4 && next_off < total) {
            fs_wire_msg req = {.type = FS_MSG_MODEL_REQ};
            memcpy(req.u.model_req.digest, dg, 32);
            req.u.model_req.offset = next_off;
            req.u.model_req.len = chunk;
            send_ok(c, &req);
            next_off += chunk;
            in_flight++;
        }
        int rc = fs_link_client_recv(c, &got, 10000, &d);
        if (rc)
            fail_msg("agent recv: %s", d.msg);
        assert_int_equal(got->type, FS_MSG_MODEL_CHUNK);
        if (fs_model_rx_add(&rx, got, &d))
            fail_msg("chunk: %s", d.msg);
        fs_wire_msg_free(got);
        in_flight--;
    }
    double sec = (double)(fs_now_usec() - t0) / 1e6;
    atomic_store(&x.stop, 1);
    pthread_join(th, NULL);
    assert_int_equal(x.err, 0);
    assert_int_equal(fs_model_rx_finish(&rx, &d), 0);
    assert_memory_equal(rx.buf, blob, total);
    fprintf(stderr, "large_model_transfer: %zu MiB in %.2f s (%.0f MB/s), %d chunks of %zu bytes\n",
            mib, sec, (double)total / sec / 1e6, x.sent, chunk);
    fs_model_rx_free(&rx);
    fs_link_client_close(c);
    world_close(&w); /* after the contexts end libzmq has released every frame */
    assert_int_equal(atomic_load(&x.released), x.sent);
    free(blob);
}

/* A gradient reply streamed over a real link as COMPUTE_HEAD + COMPUTE_PART: the parts' slices
 * point into the received frames (kept alive until fs_wire_msg_free), every byte arrives in order
 * and exactly once; a stream with a part missing is refused by fs_wire_stream_rx and the link
 * keeps serving. */
static void streamed_reply(void **state)
{
    (void)state;
    enum { NA = 100000, NB = 77 };
    float *a = malloc(NA * sizeof(float)), *b = malloc(NB * sizeof(float));
    uint8_t *ga = calloc(NA, sizeof(float)), *gb = calloc(NB, sizeof(float));
    assert_true(a && b && ga && gb);
    for (int i = 0; i < NA; i++)
        a[i] = (float)i * 0.5f;
    for (int i = 0; i < NB; i++)
        b[i] = -(float)i;
    fs_wire_tensor t[2];
    memset(t, 0, sizeof t);
    strcpy(t[0].name, "grad/w");
    t[0].dtype = FS_WIRE_F32;
    t[0].ndim = 1;
    t[0].shape[0] = NA;
    t[0].data = a;
    t[0].nbytes = NA * sizeof(float);
    strcpy(t[1].name, "grad/b");
    t[1].dtype = FS_WIRE_F32;
    t[1].ndim = 1;
    t[1].shape[0] = NB;
    t[1].data = b;
    t[1].nbytes = NB * sizeof(float);
    world w;
    world_open(&w, NULL);
    fs_link_client *c = client(&w, &g_a1, 3000);
    for (uint32_t round = 5; round <= 6; round++) {
        fs_link_server_expect_all(w.srv, "j1", round, 0);
        fs_wire_msg reply, head, part;
        memset(&reply, 0, sizeof reply);
        reply.type = FS_MSG_COMPUTE_REPLY;
        strcpy(reply.job, "j1");
        reply.round = round;
        reply.u.compute_reply.count = 12;
        reply.tensors = t;
        reply.n_tensors = 2;
        fs_wire_stream_tx tx;
        fs_diag d = {0};
        assert_int_equal(fs_wire_stream_tx_init(&tx, &reply, 64 << 10, 16 << 10, &head, &d), 0);
        send_ok(c, &head);
        uint32_t k = 0;
        while (fs_wire_stream_tx_next(&tx, &part)) {
            if (round == 6 && k++ == 1)
                continue; /* round 6 loses part 1 */
            send_ok(c, &part);
        }
        fs_link_peer peer;
        fs_wire_msg *m = NULL;
        assert_int_equal(srv_recv(&w, &peer, &m, 5000), 0);
        assert_int_equal(m->type, FS_MSG_COMPUTE_HEAD);
        assert_string_equal(peer.name, "agent-1");
        fs_wire_stream_rx rx;
        assert_int_equal(fs_wire_stream_rx_begin(&rx, m, 1u << 30, &d), 0);
        fs_wire_msg_free(m);
        int refused = 0;
        while (!fs_wire_stream_rx_done(&rx) && !refused) {
            assert_int_equal(srv_recv(&w, &peer, &m, 5000), 0);
            assert_int_equal(m->type, FS_MSG_COMPUTE_PART);
            if (fs_wire_stream_rx_part(&rx, m, &d) != 0) {
                assert_int_equal(round, 6);
                assert_non_null(strstr(d.msg, "part 2 arrived where part 1"));
                refused = 1;
            } else {
                for (size_t i = 0; i < m->u.compute_part.n_slices; i++) {
                    const fs_wire_slice *sl = &m->u.compute_part.slices[i];
                    uint8_t *dst = !strcmp(sl->name, "grad/w") ? ga : gb;
                    memcpy(dst + sl->offset, sl->data, sl->len);
                }
            }
            fs_wire_msg_free(m);
        }
        if (round == 5) {
            assert_true(fs_wire_stream_rx_done(&rx));
            assert_memory_equal(ga, a, NA * sizeof(float));
            assert_memory_equal(gb, b, NB * sizeof(float));
        } else {
            assert_true(refused);
            /* drain the rest of the broken stream: the link is still serving */
            while (srv_recv(&w, &peer, &m, 300) == 0)
                fs_wire_msg_free(m);
        }
        fs_wire_stream_rx_free(&rx);
    }
    fs_link_client_close(c);
    world_close(&w);
    free(a);
    free(b);
    free(ga);
    free(gb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(allowed_agent_roundtrip),
        cmocka_unit_test(unknown_key_never_gets_through),
        cmocka_unit_test(garbage_rejected_while_serving_others),
        cmocka_unit_test(version_mismatch_answered),
        cmocka_unit_test(replay_dropped_and_stale_answered),
        cmocka_unit_test(quarantine_after_garbage),
        cmocka_unit_test(removed_key_cut_off_after_reload),
        cmocka_unit_test(removed_key_dropped_before_rebind),
        cmocka_unit_test(tensors_cross_in_chunks),
        cmocka_unit_test(large_model_transfer),
        cmocka_unit_test(streamed_reply),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
