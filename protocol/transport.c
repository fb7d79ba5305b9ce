/*
 * transport.c — coordinator ROUTER (CURVE server + ZAP allow-list + monitor) and agent DEALER
 * (CURVE client, pinned server key), with frame-by-frame receive under application caps, strict
 * decoding, per-peer sessions and garbage quarantine (STYLE C12). Message semantics beyond
 * job/round/step/seq belong to the daemons.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sodium.h>
#include <zmq.h>

#include "fs_link.h"
#include "fs_log.h"
#include "protocol_internal.h"

fs_link_options fs_link_options_default(void)
{
    fs_link_options o = {
        .chunk_bytes = FS_WIRE_CHUNK_DEFAULT,
        .limits = fs_wire_limits_default(),
        .heartbeat_ivl_ms = 5000,
        .heartbeat_timeout_ms = 15000,
        .heartbeat_ttl_ms = 30000,
        .sndhwm = 16,
        .rcvhwm = 64,
        .linger_ms = 2000,
        .handshake_ivl_ms = 10000,
        .reconnect_ivl_ms = 1000,
        .reconnect_ivl_max_ms = 30000,
        .send_timeout_ms = 5000,
        .max_garbage = 16,
        .auth_log_burst = 10,
        .rebind_on_removal = true,
    };
    return o;
}

static int check_options(const fs_link_options *o, fs_diag *d)
{
    if (o->chunk_bytes == 0 || o->chunk_bytes > o->limits.max_chunk_bytes)
        return fs_diag_set(d, FS_EINVAL, "link: chunk_bytes %zu not in 1..max_chunk_bytes (%zu)",
                           o->chunk_bytes, o->limits.max_chunk_bytes);
    if (o->limits.max_frames < 1 || o->limits.max_header_bytes == 0)
        return fs_diag_set(d, FS_EINVAL, "link: limits.max_frames / max_header_bytes is 0");
    return 0;
}

/* Socket options common to both sides; all before bind/connect. */
static int common_sockopts(void *s, const fs_link_options *o)
{
    int64_t maxmsg = (int64_t)o->limits.max_chunk_bytes + 64 * 1024;
    if ((int64_t)o->limits.max_header_bytes + 1024 > maxmsg)
        maxmsg = (int64_t)o->limits.max_header_bytes + 1024;
    int hs_ttl = o->heartbeat_ttl_ms;
    return zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
           zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &o->heartbeat_ivl_ms, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &o->heartbeat_timeout_ms, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_HEARTBEAT_TTL, &hs_ttl, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_SNDHWM, &o->sndhwm, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_RCVHWM, &o->rcvhwm, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_LINGER, &o->linger_ms, sizeof(int)) ||
           zmq_setsockopt(s, ZMQ_HANDSHAKE_IVL, &o->handshake_ivl_ms, sizeof(int));
}

/* ---- receiving: frames under caps ---------------------------------------------------------- */

typedef struct {
    zmq_msg_t *m;
    size_t n, cap;
    bool over;        /* limits exceeded: frames past the limit were drained, not kept */
    size_t frames;    /* frames seen */
    size_t bytes;     /* bytes seen */
} rxbuf;

static void rx_close(rxbuf *r)
{
    for (size_t i = 0; i < r->n; i++)
        zmq_msg_close(&r->m[i]);
    free(r->m);
    memset(r, 0, sizeof *r);
}

/* Receives one whole multipart message: keeps at most max_frames frames and max_bytes bytes,
 * drains the rest. 0 (check r->over) or FS_ESYS/FS_ENOMEM. */
static int rx_multipart(void *sock, rxbuf *r, size_t max_frames, size_t max_bytes, fs_diag *d)
{
    int more = 1;
    memset(r, 0, sizeof *r);
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_init(&tmp);
        if (zmq_msg_recv(&tmp, sock, r->frames == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(&tmp);
            if (r->frames == 0 && e == EAGAIN)
                return FS_EAGAIN;
            rx_close(r);
            errno = e;
            return fs_diag_errno(d, FS_ESYS, "link: receive failed");
        }
        more = zmq_msg_more(&tmp);
        r->frames++;
        r->bytes += zmq_msg_size(&tmp);
        if (!r->over && (r->frames > max_frames || r->bytes > max_bytes))
            r->over = true;
        if (!r->over) {
            if (r->n == r->cap) {
                size_t nc = r->cap ? r->cap * 2 : 8;
                zmq_msg_t *nm = realloc(r->m, nc * sizeof *nm);
                if (!nm) {
                    zmq_msg_close(&tmp);
                    r->over = true;
                    continue;
                }
                r->m = nm;
                r->cap = nc;
            }
            zmq_msg_init(&r->m[r->n]);
            zmq_msg_move(&r->m[r->n], &tmp);
            r->n++;
        }
        zmq_msg_close(&tmp);
    }
    return 0;
}

/* Frames kept alive for a decoded message that points into them (MODEL_CHUNK, COMPUTE_PART). */
typedef struct {
    size_t n;
    zmq_msg_t m[];
} held_frames;

static void held_release(void *arg)
{
    held_frames *h = arg;
    for (size_t i = 0; i < h->n; i++)
        zmq_msg_close(&h->m[i]);
    free(h);
}

/* `p` pointed into frame b[i] before the frames moved into h: the same place in h->m[i]. A frame
 * of <= 33 bytes keeps its bytes inside the zmq_msg_t, so they moved with it (libzmq 4.3.4's CURVE
 * decode shrinks the received message in place and never produces one; without CURVE it would). */
static const void *repoint(const void *p, const fs_wire_buf *b, held_frames *h)
{
    uintptr_t q = (uintptr_t)p;
    for (size_t i = 0; i < h->n; i++) {
        uintptr_t s = (uintptr_t)b[i].data;
        if (b[i].len && q >= s && q - s < b[i].len)
            return (const uint8_t *)zmq_msg_data(&h->m[i]) + (q - s);
    }
    return p;
}

/* Decodes frames r->m[first..n). On success, if the message borrows its frames, they move into it
 * (r keeps none); otherwise r still owns them. */
static int rx_decode(rxbuf *r, size_t first, const fs_wire_limits *lim, fs_wire_msg **out,
                     uint64_t *peer_version, fs_diag *d)
{
    size_t n = r->n - first;
    fs_wire_buf *b = calloc(n ? n : 1, sizeof *b);
    if (!b)
        return fs_diag_set(d, FS_ENOMEM, "link: out of memory");
    for (size_t i = 0; i < n; i++) {
        b[i].data = zmq_msg_data(&r->m[first + i]);
        b[i].len = zmq_msg_size(&r->m[first + i]);
    }
    int rc = fs_wire_decode(b, n, lim, out, peer_version, d);
    if (rc == 0 && ((*out)->type == FS_MSG_MODEL_CHUNK || (*out)->type == FS_MSG_COMPUTE_PART)) {
        held_frames *h = malloc(sizeof *h + n * sizeof(zmq_msg_t));
        if (!h) {
            free(b);
            fs_wire_msg_free(*out);
            *out = NULL;
            return fs_diag_set(d, FS_ENOMEM, "link: out of memory");
        }
        h->n = n;
        for (size_t i = 0; i < n; i++) {
            zmq_msg_init(&h->m[i]);
            zmq_msg_move(&h->m[i], &r->m[first + i]);
        }
        if ((*out)->type == FS_MSG_MODEL_CHUNK) {
            (*out)->u.model_chunk.data = repoint((*out)->u.model_chunk.data, b, h);
        } else {
            /* the decoder allocated the slices; only the link re-points them */
            fs_wire_slice *sl = (fs_wire_slice *)(*out)->u.compute_part.slices;
            for (size_t k = 0; k < (*out)->u.compute_part.n_slices; k++)
                sl[k].data = repoint(sl[k].data, b, h);
        }
        fs_wire_msg_set_release(*out, held_release, h);
    }
    free(b);
    return rc;
}

/* ---- sending ------------------------------------------------------------------------------- */

typedef struct {
    atomic_size_t refs;
    void (*release)(void *);
    void *arg;
} zc_hold;

static void zc_unref(void *data, void *hint)
{
    (void)data;
    zc_hold *h = hint;
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        h->release(h->arg);
        free(h);
    }
}

static void free_cb(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void snapshot_free(void *arg)
{
    fs_free(arg);
}

/* A copying send of a message with several raw frames copies them all into one snapshot buffer
 * and sends that zero-copy (freed when libzmq has released its last frame), instead of one
 * zmq_msg_init_size + memcpy per frame. Measured (docs/protocol.md §8.1): per-frame buffers of
 * 256 KiB, allocated on this thread and freed on libzmq's I/O thread, came back as fresh pages
 * every time: 270-300 ms of CPU per 64 MiB on the sending thread, against 9-30 ms for one copy
 * into a huge-page buffer. Points f's raw frames into the snapshot; NULL if out of memory (the
 * caller then copies frame by frame). */
static zc_hold *snapshot_frames(fs_wire_frames *f)
{
    size_t total = 0;
    for (size_t i = 1; i < f->n_frames; i++)
        total += f->frames[i].len; /* no overflow: the encoder checked every tensor's size */
    uint8_t *snap = fs_wire_alloc_big(total);
    zc_hold *zc = snap ? malloc(sizeof *zc) : NULL;
    if (!zc) {
        fs_free(snap);
        return NULL;
    }
    size_t off = 0;
    for (size_t i = 1; i < f->n_frames; i++) {
        memcpy(snap + off, f->frames[i].data, f->frames[i].len);
        f->frames[i].data = snap + off;
        off += f->frames[i].len;
    }
    atomic_init(&zc->refs, 1);
    zc->release = snapshot_free;
    zc->arg = snap;
    return zc;
}

/* Sends [rid]? header raw... ; `flags` is ZMQ_DONTWAIT or 0. Takes ownership of f->header. *zc:
 * the hold of the caller's zero-copy buffers, or NULL: then, once the header is accepted (a full
 * queue refuses the first frame, so a refused send costs no copy), the raw frames are copied into
 * a snapshot whose hold is returned in *zc. */
static int tx_frames(void *sock, const fs_link_peer *peer, fs_wire_frames *f, zc_hold **zcp,
                     int flags, fs_diag *d)
{
    zmq_msg_t m;
    if (peer) {
        if (zmq_send(sock, peer->rid, peer->rid_len, ZMQ_SNDMORE | flags) < 0) {
            if (errno == EAGAIN)
                return fs_diag_set(d, FS_EAGAIN, "send to '%s': queue full", peer->name);
            if (errno == EHOSTUNREACH)
                return fs_diag_set(d, FS_ENOTFOUND, "send to '%s': not connected", peer->name);
            return fs_diag_errno(d, FS_ESYS, "send to '%s'", peer->name);
        }
    }
    for (size_t i = 0; i < f->n_frames; i++) {
        int more = i + 1 < f->n_frames ? ZMQ_SNDMORE : 0;
        int rc;
        if (i == 1 && !*zcp && f->n_frames > 2)
            *zcp = snapshot_frames(f);
        zc_hold *zc = *zcp;
        if (i == 0) {
            rc = zmq_msg_init_data(&m, f->header, f->header_len, free_cb, NULL);
            if (rc == 0)
                f->header = NULL; /* libzmq frees it now */
        } else if (zc) {
            atomic_fetch_add(&zc->refs, 1);
            rc = zmq_msg_init_data(&m, (void *)f->frames[i].data, f->frames[i].len, zc_unref, zc);
            if (rc != 0)
                atomic_fetch_sub(&zc->refs, 1);
        } else {
            rc = zmq_msg_init_size(&m, f->frames[i].len);
            if (rc == 0 && f->frames[i].len)
                memcpy(zmq_msg_data(&m), f->frames[i].data, f->frames[i].len);
        }
        if (rc != 0)
            return fs_diag_set(d, FS_ENOMEM, "send: out of memory");
        if (zmq_msg_send(&m, sock, more | flags) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            if (i == 0 && !peer && e == EAGAIN)
                return fs_diag_set(d, FS_ETIMEDOUT, "send: no connection to the coordinator");
            errno = e;
            return fs_diag_errno(d, FS_ESYS, "send: frame %zu", i);
        }
    }
    return 0;
}

static int send_msg(void *sock, const fs_link_peer *peer, const fs_wire_msg *msg, uint64_t seq,
                    size_t chunk, void (*release)(void *), void *arg, int flags, fs_diag *d)
{
    fs_wire_msg tmp = *msg;
    fs_wire_frames f;
    zc_hold *zc = NULL;
    tmp.seq = seq;
    int rc = fs_wire_encode(&tmp, chunk, &f, d);
    if (rc == 0 && release) {
        zc = malloc(sizeof *zc);
        if (!zc)
            rc = fs_diag_set(d, FS_ENOMEM, "send: out of memory");
        else {
            atomic_init(&zc->refs, 1);
            zc->release = release;
            zc->arg = arg;
        }
    }
    if (rc == 0)
        rc = tx_frames(sock, peer, &f, &zc, flags, d);
    fs_wire_frames_free(&f);
    if (zc)
        zc_unref(NULL, zc); /* our reference; releases now if libzmq holds none */
    else if (release)
        release(arg);
    return rc;
}

/* ---- server -------------------------------------------------------------------------------- */

typedef struct {
    char name[65];
    fs_wire_session sess;
    uint64_t tx_seq;
    bool quarantined;
    bool stale_told;            /* a stale ERROR went out for (stale_round, stale_step) */
    uint32_t stale_round, stale_step;
    int fd;     /* the connection its latest message came on (ZMQ_SRCFD), -1 unknown */
    bool lost;  /* that connection closed; not yet taken by fs_link_server_take_lost */
} peer_state;

struct fs_link_server {
    void *ctx;
    fs_link_options opt;
    fs_key secret;
    fs_allowlist *al;
    fs_zap *zap;
    void *router;
    void *mon;
    unsigned gen;
    char endpoint[256];
    peer_state **peers;
    size_t n_peers, cap_peers;
    fs_link_stats st;
    fs_ratelimit rl_mon;
    fs_ratelimit rl_proto;
    bool expect_set; /* fs_link_server_expect_all: also applied to peers first seen later */
    char expect_job[FS_WIRE_NAME_MAX + 1];
    uint32_t expect_round, expect_step;
};

static peer_state *find_peer(fs_link_server *s, const char *name, bool create)
{
    for (size_t i = 0; i < s->n_peers; i++)
        if (!strcmp(s->peers[i]->name, name))
            return s->peers[i];
    if (!create)
        return NULL;
    if (s->n_peers == s->cap_peers) {
        size_t nc = s->cap_peers ? s->cap_peers * 2 : 16;
        peer_state **np = realloc(s->peers, nc * sizeof *np);
        if (!np)
            return NULL;
        s->peers = np;
        s->cap_peers = nc;
    }
    peer_state *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->fd = -1;
    fs_wire_session_init(&p->sess);
    p->sess.garbage_threshold = s->opt.max_garbage;
    if (s->expect_set)
        fs_wire_session_expect(&p->sess, s->expect_job, s->expect_round, s->expect_step);
    s->peers[s->n_peers++] = p;
    return p;
}

static void close_router(fs_link_server *s)
{
    if (s->router) {
        zmq_socket_monitor(s->router, NULL, 0);
        zmq_close(s->router);
        s->router = NULL;
    }
    if (s->mon) {
        zmq_close(s->mon);
        s->mon = NULL;
    }
}

/* Creates the ROUTER + monitor and binds `endpoint`. Retries EADDRINUSE for up to 2 s (a closed
 * ROUTER releases its port asynchronously in libzmq's I/O thread). */
static int open_router(fs_link_server *s, const char *endpoint, fs_diag *d)
{
    int one = 1;
    s->router = zmq_socket(s->ctx, ZMQ_ROUTER);
    if (!s->router)
        return fs_diag_set(d, FS_ESYS, "link: zmq_socket(ROUTER): %s", zmq_strerror(errno));
    if (zmq_setsockopt(s->router, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(s->router, ZMQ_CURVE_SECRETKEY, s->secret, FS_KEY_BYTES) ||
        zmq_setsockopt(s->router, ZMQ_ZAP_DOMAIN, "fedslim", 7) ||
        zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        common_sockopts(s->router, &s->opt)) {
        int e = errno;
        close_router(s);
        return fs_diag_set(d, FS_ESYS, "link: ROUTER options: %s", zmq_strerror(e));
    }
    char mon_ep[96];
    snprintf(mon_ep, sizeof mon_ep, "inproc://fs-link-mon-%p-%u", (void *)s, ++s->gen);
    if (zmq_socket_monitor(s->router, mon_ep,
                           ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0 ||
        !(s->mon = zmq_socket(s->ctx, ZMQ_PAIR)) || zmq_connect(s->mon, mon_ep) != 0) {
        int e = errno;
        close_router(s);
        return fs_diag_set(d, FS_ESYS, "link: socket monitor: %s", zmq_strerror(e));
    }
    int rc = -1;
    for (int tries = 0; tries < 100; tries++) {
        rc = zmq_bind(s->router, endpoint);
        if (rc == 0 || errno != EADDRINUSE || !strstr(s->endpoint, "tcp://"))
            break;
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (rc != 0) {
        int e = errno;
        close_router(s);
        return fs_diag_set(d, FS_ESYS, "link: cannot bind %s: %s", endpoint, zmq_strerror(e));
    }
    size_t len = sizeof s->endpoint;
    if (zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &len) != 0) {
        int e = errno;
        close_router(s);
        return fs_diag_set(d, FS_ESYS, "link: ZMQ_LAST_ENDPOINT: %s", zmq_strerror(e));
    }
    return 0;
}

int fs_link_server_open(fs_link_server **out, void *zctx, const char *endpoint,
                        const fs_key server_secret, const char *allowlist_path,
                        const fs_link_options *opt, fs_diag *d)
{
    int rc;
    *out = NULL;
    fs_link_server *s = calloc(1, sizeof *s);
    if (!s)
        return fs_diag_set(d, FS_ENOMEM, "link: out of memory");
    s->ctx = zctx;
    s->opt = opt ? *opt : fs_link_options_default();
    s->rl_mon.burst = s->opt.auth_log_burst ? s->opt.auth_log_burst : 10;
    s->rl_proto.burst = s->rl_mon.burst * 5;
    memcpy(s->secret, server_secret, FS_KEY_BYTES);
    if ((rc = check_options(&s->opt, d)))
        goto fail;
    if (sodium_init() < 0) {
        rc = fs_diag_set(d, FS_ESYS, "libsodium initialisation failed");
        goto fail;
    }
    if (!zmq_has("curve")) {
        rc = fs_diag_set(d, FS_EUNSUPPORTED, "libzmq was built without CURVE");
        goto fail;
    }
    if ((rc = fs_allowlist_open(&s->al, allowlist_path, d)))
        goto fail;
    /* Security property: the ZAP handler is bound before the ROUTER exists (SYSTEMS b3). */
    if ((rc = fs_zap_start(&s->zap, zctx, s->al, s->opt.auth_log_burst, d)))
        goto fail;
    snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
    if ((rc = open_router(s, endpoint, d)))
        goto fail;
    fs_log_kv(FS_LOG_INFO, "coordinator listening", "ENDPOINT", s->endpoint, NULL);
    *out = s;
    return 0;
fail:
    fs_link_server_close(s);
    return rc;
}

const char *fs_link_server_endpoint(const fs_link_server *s)
{
    return s->endpoint;
}

void *fs_link_server_socket(fs_link_server *s)
{
    return s->router;
}

void *fs_link_server_monitor_socket(fs_link_server *s)
{
    return s->mon;
}

static const char *event_name(unsigned ev)
{
    switch (ev) {
    case ZMQ_EVENT_ACCEPTED: return "accepted";
    case ZMQ_EVENT_DISCONNECTED: return "disconnected";
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: return "handshake succeeded";
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: return "handshake failed: authentication";
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: return "handshake failed: protocol";
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: return "handshake failed";
    default: return "event";
    }
}

void fs_link_server_service_monitor(fs_link_server *s)
{
    for (;;) {
        zmq_msg_t f1, f2;
        zmq_msg_init(&f1);
        if (zmq_msg_recv(&f1, s->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f1);
            return;
        }
        zmq_msg_init(&f2);
        bool two = zmq_msg_more(&f1) && zmq_msg_recv(&f2, s->mon, 0) >= 0;
        if (zmq_msg_size(&f1) == 6) {
            uint16_t ev;
            uint32_t val;
            memcpy(&ev, zmq_msg_data(&f1), 2);
            memcpy(&val, (uint8_t *)zmq_msg_data(&f1) + 2, 4);
            char addr[96] = "", vbuf[16];
            if (two)
                fs_wire_sample(zmq_msg_data(&f2), zmq_msg_size(&f2), 80, addr, sizeof addr);
            snprintf(vbuf, sizeof vbuf, "%u", val);
            bool failure = ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                           ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
                           ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
            if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
                s->st.auth_failures++;
            if (ev == ZMQ_EVENT_DISCONNECTED)   /* val: the closed connection's fd */
                for (size_t i = 0; i < s->n_peers; i++)
                    if (s->peers[i]->fd >= 0 && (uint32_t)s->peers[i]->fd == val) {
                        s->peers[i]->fd = -1;
                        s->peers[i]->lost = true;
                    }
            uint64_t supp = 0;
            if (!failure)
                fs_log_kv(FS_LOG_DEBUG, event_name(ev), "ENDPOINT", addr, "VALUE", vbuf, NULL);
            else if (fs_ratelimit_ok(&s->rl_mon, &supp)) {
                char sbuf[24];
                snprintf(sbuf, sizeof sbuf, "%llu", (unsigned long long)supp);
                fs_log_kv(FS_LOG_WARNING, event_name(ev), "ENDPOINT", addr, "STATUS", vbuf,
                          "SUPPRESSED", sbuf, NULL);
            }
        }
        /* drain anything unexpected */
        while (two && zmq_msg_more(&f2)) {
            zmq_msg_close(&f2);
            zmq_msg_init(&f2);
            if (zmq_msg_recv(&f2, s->mon, 0) < 0)
                break;
        }
        zmq_msg_close(&f1);
        zmq_msg_close(&f2);
    }
}

static void log_reject(fs_ratelimit *rl, int level, const char *what, const char *agent,
                       const char *reason, const zmq_msg_t *sample_frame)
{
    char sample[272] = "";
    if (!fs_ratelimit_ok(rl, NULL))
        return;
    if (sample_frame)
        fs_wire_sample(zmq_msg_data((zmq_msg_t *)sample_frame),
                       zmq_msg_size((zmq_msg_t *)sample_frame), 64, sample, sizeof sample);
    fs_log_kv(level, what, "AGENT", agent, "REASON", reason, "SAMPLE", sample, NULL);
}

static void server_reply_error(fs_link_server *s, const fs_link_peer *peer, peer_state *ps,
                               const fs_wire_msg *e)
{
    fs_diag d2 = {0};
    if (send_msg(s->router, peer, e, ++ps->tx_seq, s->opt.chunk_bytes, NULL, NULL, ZMQ_DONTWAIT,
                 &d2) != 0)
        fs_log_kv(FS_LOG_DEBUG, "error reply not sent", "AGENT", peer->name, "REASON", d2.msg,
                  NULL);
}

static int server_recv_one(fs_link_server *s, fs_link_peer *peer, fs_wire_msg **out, fs_diag *d)
{
    const fs_wire_limits *lim = &s->opt.limits;
    rxbuf r;
    int rc = rx_multipart(s->router, &r, lim->max_frames + 1, lim->max_message_bytes + 256, d);
    if (rc == FS_EAGAIN)
        return FS_ETIMEDOUT;
    if (rc)
        return rc;
    memset(peer, 0, sizeof *peer);
    if (r.n >= 1 && zmq_msg_size(&r.m[0]) <= sizeof peer->rid) {
        peer->rid_len = zmq_msg_size(&r.m[0]);
        memcpy(peer->rid, zmq_msg_data(&r.m[0]), peer->rid_len);
    }
    const char *uid = r.n >= 2 ? zmq_msg_gets(&r.m[1], "User-Id") : NULL;
    if (!uid || !fs_allowlist_has_name(s->al, uid)) {
        s->st.unauthorized++;
        rc = fs_diag_set(d, FS_EAGAIN, "message from %s peer dropped",
                         uid ? "a revoked" : "an unauthenticated");
        log_reject(&s->rl_proto, FS_LOG_WARNING, "message dropped", uid ? uid : "?", d->msg,
                   NULL);
        goto out;
    }
    snprintf(peer->name, sizeof peer->name, "%s", uid);
    const char *addr = zmq_msg_gets(&r.m[1], "Peer-Address");
    snprintf(peer->address, sizeof peer->address, "%s", addr ? addr : "");
    peer_state *ps = find_peer(s, uid, true);
    if (!ps) {
        rc = fs_diag_set(d, FS_EAGAIN, "out of memory for peer '%s'", uid);
        goto out;
    }
    ps->fd = zmq_msg_get(&r.m[1], ZMQ_SRCFD);   /* deprecated, but the only link to the monitor */
    ps->lost = false;
    if (ps->quarantined) {
        s->st.quarantined++;
        rc = fs_diag_set(d, FS_EAGAIN, "'%s' is quarantined: message dropped", uid);
        goto out;
    }
    fs_wire_msg *m = NULL;
    uint64_t pv = 0;
    if (r.over)
        rc = fs_diag_set(d, FS_EFORMAT, "message of %zu frames / %zu bytes exceeds the limits "
                         "(%zu frames, %zu bytes)", r.frames - 1, r.bytes, lim->max_frames,
                         lim->max_message_bytes);
    else
        rc = rx_decode(&r, 1, lim, &m, &pv, d);
    if (rc == FS_EUNSUPPORTED) {
        s->st.rejected++;
        log_reject(&s->rl_proto, FS_LOG_WARNING, "protocol version mismatch", uid, d->msg, NULL);
        fs_wire_msg e;
        fs_wire_make_version_error(&e, pv);
        server_reply_error(s, peer, ps, &e);
        rc = FS_EAGAIN;
        goto out;
    }
    if (rc) {
        s->st.garbage++;
        log_reject(&s->rl_proto, FS_LOG_WARNING, "protocol error", uid, d->msg,
                   r.n >= 2 ? &r.m[1] : NULL);
        if (fs_wire_session_garbage(&ps->sess)) {
            ps->quarantined = true;
            fs_log_kv(FS_LOG_ERR, "peer quarantined: too many protocol errors", "AGENT", uid,
                      NULL);
        }
        d->code = FS_EAGAIN;
        rc = FS_EAGAIN;
        goto out;
    }
    rc = fs_wire_session_check(&ps->sess, m, d);
    if (rc == FS_EAGAIN) {
        s->st.replays++;
        fs_log_kv(FS_LOG_DEBUG, "duplicate dropped", "AGENT", uid, "REASON", d->msg, NULL);
        fs_wire_msg_free(m);
        goto out;
    }
    if (rc) {
        s->st.rejected++;
        /* one ERROR per stale exchange: the rest of a streamed reply (every COMPUTE_PART of the
         * same round and step) is dropped quietly */
        if (ps->stale_told && ps->stale_round == m->round && ps->stale_step == m->step) {
            fs_log_kv(FS_LOG_DEBUG, "stale message dropped", "AGENT", uid, "REASON", d->msg,
                      NULL);
            fs_wire_msg_free(m);
            rc = FS_EAGAIN;
            goto out;
        }
        ps->stale_told = true;
        ps->stale_round = m->round;
        ps->stale_step = m->step;
        log_reject(&s->rl_proto, FS_LOG_NOTICE, "stale message rejected", uid, d->msg, NULL);
        fs_wire_msg e;
        memset(&e, 0, sizeof e);
        e.type = FS_MSG_ERROR;
        snprintf(e.job, sizeof e.job, "%s", m->job);
        e.round = m->round;
        e.step = m->step;
        snprintf(e.u.error.code, sizeof e.u.error.code, "stale");
        snprintf(e.u.error.text, sizeof e.u.error.text, "%.256s", d->msg);
        server_reply_error(s, peer, ps, &e);
        fs_wire_msg_free(m);
        fs_diag_set(d, FS_EAGAIN, "%s", e.u.error.text);
        rc = FS_EAGAIN;
        goto out;
    }
    s->st.received++;
    *out = m;
out:
    rx_close(&r);
    return rc;
}

static int remaining_ms(int timeout_ms, uint64_t start)
{
    if (timeout_ms < 0)
        return -1;
    uint64_t el = (fs_now_usec() - start) / 1000;
    return el >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)el;
}

int fs_link_server_recv(fs_link_server *s, fs_link_peer *peer, fs_wire_msg **msg, int timeout_ms,
                        fs_diag *d)
{
    fs_diag local;
    if (!d)
        d = &local;
    uint64_t start = fs_now_usec();
    *msg = NULL;
    for (;;) {
        zmq_pollitem_t it[2] = {{s->router, 0, ZMQ_POLLIN, 0}, {s->mon, 0, ZMQ_POLLIN, 0}};
        int wait = remaining_ms(timeout_ms, start);
        int n = zmq_poll(it, 2, wait);
        if (n < 0) {
            if (errno == EINTR)
                return fs_diag_set(d, FS_ETIMEDOUT, "interrupted");
            return fs_diag_errno(d, FS_ESYS, "link: zmq_poll");
        }
        if (it[1].revents & ZMQ_POLLIN)
            fs_link_server_service_monitor(s);
        if (it[0].revents & ZMQ_POLLIN) {
            int rc = server_recv_one(s, peer, msg, d);
            if (rc != FS_ETIMEDOUT)
                return rc;
        }
        if (wait == 0)
            return fs_diag_set(d, FS_ETIMEDOUT, "nothing received");
    }
}

static int server_send(fs_link_server *s, const fs_link_peer *peer, const fs_wire_msg *msg,
                       void (*release)(void *), void *arg, fs_diag *d)
{
    peer_state *ps = find_peer(s, peer->name, true);
    if (!ps) {
        if (release)
            release(arg);
        return fs_diag_set(d, FS_ENOMEM, "send: out of memory");
    }
    return send_msg(s->router, peer, msg, ++ps->tx_seq, s->opt.chunk_bytes, release, arg,
                    ZMQ_DONTWAIT, d);
}

int fs_link_server_send(fs_link_server *s, const fs_link_peer *peer, const fs_wire_msg *msg,
                        fs_diag *d)
{
    return server_send(s, peer, msg, NULL, NULL, d);
}

int fs_link_server_send_zc(fs_link_server *s, const fs_link_peer *peer, const fs_wire_msg *msg,
                           void (*release)(void *), void *arg, fs_diag *d)
{
    return server_send(s, peer, msg, release, arg, d);
}

fs_wire_session *fs_link_server_session(fs_link_server *s, const char *name)
{
    if (!fs_allowlist_has_name(s->al, name))
        return NULL;
    peer_state *p = find_peer(s, name, true);
    return p ? &p->sess : NULL;
}

void fs_link_server_expect_all(fs_link_server *s, const char *job, uint32_t round, uint32_t step)
{
    s->expect_set = true;
    snprintf(s->expect_job, sizeof s->expect_job, "%s", job ? job : "");
    s->expect_round = round;
    s->expect_step = step;
    for (size_t i = 0; i < s->n_peers; i++)
        fs_wire_session_expect(&s->peers[i]->sess, job, round, step);
}

bool fs_link_server_quarantined(fs_link_server *s, const char *name)
{
    peer_state *p = find_peer(s, name, false);
    return p && p->quarantined;
}

void fs_link_server_unquarantine(fs_link_server *s, const char *name)
{
    peer_state *p = find_peer(s, name, false);
    if (p) {
        p->quarantined = false;
        p->sess.n_garbage = 0;
    }
}

int fs_link_server_rebind(fs_link_server *s, fs_diag *d)
{
    char ep[256];
    snprintf(ep, sizeof ep, "%s", s->endpoint);
    close_router(s);
    for (size_t i = 0; i < s->n_peers; i++)   /* every connection went with the old ROUTER */
        if (s->peers[i]->fd >= 0) {
            s->peers[i]->fd = -1;
            s->peers[i]->lost = true;
        }
    int rc = open_router(s, ep, d);
    if (rc == 0) {
        s->st.rebinds++;
        fs_log_kv(FS_LOG_NOTICE, "ROUTER re-created; agents reconnect", "ENDPOINT", s->endpoint,
                  NULL);
    }
    return rc;
}

int fs_link_server_reload(fs_link_server *s, fs_diag *d)
{
    size_t removed = 0;
    int rc = fs_allowlist_reload(s->al, &removed, d);
    if (rc) {
        fs_log_kv(FS_LOG_ERR, "allow-list reload rejected; keeping the old list", "REASON",
                  d->msg, NULL);
        return rc;
    }
    char nbuf[24], rbuf[24];
    snprintf(nbuf, sizeof nbuf, "%zu", fs_allowlist_count(s->al));
    snprintf(rbuf, sizeof rbuf, "%zu", removed);
    fs_log_kv(FS_LOG_NOTICE, "allow-list reloaded", "ENTRIES", nbuf, "REMOVED", rbuf, NULL);
    if (removed && s->opt.rebind_on_removal)
        return fs_link_server_rebind(s, d);
    return 0;
}

bool fs_link_server_take_lost(fs_link_server *s, char *name, size_t cap)
{
    for (size_t i = 0; i < s->n_peers; i++)
        if (s->peers[i]->lost) {
            s->peers[i]->lost = false;
            snprintf(name, cap, "%s", s->peers[i]->name);
            return true;
        }
    return false;
}

fs_link_stats fs_link_server_stats(const fs_link_server *s)
{
    return s->st;
}

void fs_link_server_close(fs_link_server *s)
{
    if (!s)
        return;
    close_router(s);
    fs_zap_stop(s->zap);
    fs_allowlist_free(s->al);
    for (size_t i = 0; i < s->n_peers; i++)
        free(s->peers[i]);
    free(s->peers);
    sodium_memzero(s->secret, sizeof s->secret);
    free(s);
}

/* ---- client -------------------------------------------------------------------------------- */

struct fs_link_client {
    void *sock;
    fs_link_options opt;
    fs_wire_session sess;
    uint64_t tx_seq;
    fs_link_stats st;
    fs_ratelimit rl;
};

int fs_link_client_open(fs_link_client **out, void *zctx, const char *endpoint,
                        const fs_key server_public, const fs_key client_public,
                        const fs_key client_secret, const fs_link_options *opt, fs_diag *d)
{
    int rc, one = 1;
    *out = NULL;
    fs_link_client *c = calloc(1, sizeof *c);
    if (!c)
        return fs_diag_set(d, FS_ENOMEM, "link: out of memory");
    c->opt = opt ? *opt : fs_link_options_default();
    c->rl.burst = 50;
    fs_wire_session_init(&c->sess);
    c->sess.garbage_threshold = c->opt.max_garbage;
    if ((rc = check_options(&c->opt, d)))
        goto fail;
    c->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!c->sock) {
        rc = fs_diag_set(d, FS_ESYS, "link: zmq_socket(DEALER): %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, server_public, FS_KEY_BYTES) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, client_public, FS_KEY_BYTES) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, client_secret, FS_KEY_BYTES) ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &c->opt.reconnect_ivl_ms, sizeof(int)) ||
        zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, &c->opt.reconnect_ivl_max_ms,
                       sizeof(int)) ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->opt.send_timeout_ms, sizeof(int)) ||
        common_sockopts(c->sock, &c->opt)) {
        rc = fs_diag_set(d, FS_ESYS, "link: DEALER options: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        rc = fs_diag_set(d, FS_ESYS, "link: cannot connect to %s: %s", endpoint,
                         zmq_strerror(errno));
        goto fail;
    }
    *out = c;
    return 0;
fail:
    fs_link_client_close(c);
    return rc;
}

void *fs_link_client_socket(fs_link_client *c)
{
    return c->sock;
}

int fs_link_client_send(fs_link_client *c, const fs_wire_msg *msg, fs_diag *d)
{
    return send_msg(c->sock, NULL, msg, ++c->tx_seq, c->opt.chunk_bytes, NULL, NULL, 0, d);
}

int fs_link_client_send_zc(fs_link_client *c, const fs_wire_msg *msg, void (*release)(void *),
                           void *arg, fs_diag *d)
{
    return send_msg(c->sock, NULL, msg, ++c->tx_seq, c->opt.chunk_bytes, release, arg, 0, d);
}

int fs_link_client_send_raw(fs_link_client *c, const fs_wire_buf *frames, size_t n, fs_diag *d)
{
    for (size_t i = 0; i < n; i++) {
        if (zmq_send(c->sock, frames[i].data, frames[i].len, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            if (i == 0 && errno == EAGAIN)
                return fs_diag_set(d, FS_ETIMEDOUT, "send: no connection to the coordinator");
            return fs_diag_errno(d, FS_ESYS, "send raw frame %zu", i);
        }
    }
    return 0;
}

static int client_recv_one(fs_link_client *c, fs_wire_msg **out, fs_diag *d)
{
    const fs_wire_limits *lim = &c->opt.limits;
    rxbuf r;
    int rc = rx_multipart(c->sock, &r, lim->max_frames, lim->max_message_bytes, d);
    if (rc == FS_EAGAIN)
        return FS_ETIMEDOUT;
    if (rc)
        return rc;
    fs_wire_msg *m = NULL;
    uint64_t pv = 0;
    if (r.over)
        rc = fs_diag_set(d, FS_EFORMAT, "message of %zu frames / %zu bytes exceeds the limits",
                         r.frames, r.bytes);
    else
        rc = rx_decode(&r, 0, lim, &m, &pv, d);
    if (rc == FS_EUNSUPPORTED) {
        c->st.rejected++;
        log_reject(&c->rl, FS_LOG_WARNING, "protocol version mismatch", "coordinator", d->msg,
                   NULL);
        fs_wire_msg e;
        fs_wire_make_version_error(&e, pv);
        fs_diag d2 = {0};
        (void)send_msg(c->sock, NULL, &e, ++c->tx_seq, c->opt.chunk_bytes, NULL, NULL,
                       ZMQ_DONTWAIT, &d2);
        rc = FS_EAGAIN;
    } else if (rc) {
        c->st.garbage++;
        log_reject(&c->rl, FS_LOG_WARNING, "protocol error", "coordinator", d->msg,
                   r.n ? &r.m[0] : NULL);
        fs_wire_session_garbage(&c->sess);
        d->code = FS_EAGAIN;
        rc = FS_EAGAIN;
    } else if ((rc = fs_wire_session_check(&c->sess, m, d)) != 0) {
        if (rc == FS_EAGAIN)
            c->st.replays++;
        else
            c->st.rejected++;
        log_reject(&c->rl, rc == FS_EAGAIN ? FS_LOG_DEBUG : FS_LOG_NOTICE, "message dropped",
                   "coordinator", d->msg, NULL);
        fs_wire_msg_free(m);
        d->code = FS_EAGAIN;
        rc = FS_EAGAIN;
    } else {
        c->st.received++;
        *out = m;
    }
    rx_close(&r);
    return rc;
}

int fs_link_client_recv(fs_link_client *c, fs_wire_msg **msg, int timeout_ms, fs_diag *d)
{
    fs_diag local;
    if (!d)
        d = &local;
    uint64_t start = fs_now_usec();
    *msg = NULL;
    for (;;) {
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        int wait = remaining_ms(timeout_ms, start);
        int n = zmq_poll(&it, 1, wait);
        if (n < 0) {
            if (errno == EINTR)
                return fs_diag_set(d, FS_ETIMEDOUT, "interrupted");
            return fs_diag_errno(d, FS_ESYS, "link: zmq_poll");
        }
        if (it.revents & ZMQ_POLLIN) {
            int rc = client_recv_one(c, msg, d);
            if (rc != FS_ETIMEDOUT)
                return rc;
        }
        if (wait == 0)
            return fs_diag_set(d, FS_ETIMEDOUT, "nothing received");
    }
}

fs_wire_session *fs_link_client_session(fs_link_client *c)
{
    return &c->sess;
}

fs_link_stats fs_link_client_stats(const fs_link_client *c)
{
    return c->st;
}

void fs_link_client_close(fs_link_client *c)
{
    if (!c)
        return;
    if (c->sock)
        zmq_close(c->sock);
    free(c);
}
