/*
 * zap.c — the ZAP (ZeroMQ authentication protocol, RFC 27) handler for the coordinator's CURVE
 * server: a thread with a REP socket at inproc://zeromq.zap.01 on the server's context that admits
 * only keys in the allow-list and answers User-Id = allow-list name. fs_zap_start returns only once
 * the REP socket is bound: with libzmq 4.3.4 a CURVE server with no ZAP handler bound admits any
 * client key, so the ROUTER must never bind before this.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "fs_keys.h"
#include "fs_log.h"
#include "protocol_internal.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_FRAMES 7

struct fs_zap {
    void *ctx;
    fs_allowlist *al;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int bound; /* 0 pending, 1 bound, -errno failed */
    fs_ratelimit rl;
};

bool fs_ratelimit_ok(fs_ratelimit *r, uint64_t *suppressed)
{
    uint64_t now = fs_now_usec();
    if (now - r->window_start_usec >= 60ull * 1000000ull || r->window_start_usec == 0) {
        r->window_start_usec = now;
        r->used = 0;
    }
    if (r->used >= r->burst) {
        r->suppressed++;
        return false;
    }
    r->used++;
    if (suppressed)
        *suppressed = r->suppressed;
    r->suppressed = 0;
    return true;
}

static void set_bound(fs_zap *z, int v)
{
    pthread_mutex_lock(&z->mu);
    z->bound = v;
    pthread_cond_broadcast(&z->cv);
    pthread_mutex_unlock(&z->mu);
}

static bool frame_is(zmq_msg_t *m, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(m) == n && !memcmp(zmq_msg_data(m), s, n);
}

static int send_bytes(void *sock, const void *p, size_t n, int flags)
{
    return zmq_send(sock, p, n, flags) < 0 ? -1 : 0;
}

static void handle_request(fs_zap *z, void *rep)
{
    zmq_msg_t f[ZAP_FRAMES];
    int n = 0, more = 1;
    /* Receive all frames; keep the first 7, drain any extra. */
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_init(&tmp);
        if (zmq_msg_recv(&tmp, rep, 0) < 0) {
            zmq_msg_close(&tmp);
            for (int i = 0; i < n; i++)
                zmq_msg_close(&f[i]);
            return;
        }
        more = zmq_msg_more(&tmp);
        if (n < ZAP_FRAMES) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n], &tmp);
            n++;
        }
        zmq_msg_close(&tmp);
    }
    const char *status = "500", *text = "unexpected ZAP request";
    char user[65] = "";
    char key_z85[41] = "?";
    char addr[64] = "?";
    if (n > 3) {
        size_t al = zmq_msg_size(&f[3]);
        fs_wire_sample(zmq_msg_data(&f[3]), al, 46, addr, sizeof addr);
    }
    if (n == ZAP_FRAMES && frame_is(&f[0], "1.0") && frame_is(&f[5], "CURVE") &&
        zmq_msg_size(&f[6]) == FS_KEY_BYTES) {
        fs_key key;
        memcpy(key, zmq_msg_data(&f[6]), FS_KEY_BYTES);
        fs_key_to_z85(key, key_z85);
        if (fs_allowlist_lookup(z->al, key, user, sizeof user) == 0) {
            status = "200";
            text = "OK";
        } else {
            status = "400";
            text = "key not allowed";
        }
    } else if (n == ZAP_FRAMES && frame_is(&f[0], "1.0")) {
        status = "400";
        text = "CURVE required";
    }
    /* Reply: version, request id, status code, status text, user id, metadata. */
    int rc = send_bytes(rep, "1.0", 3, ZMQ_SNDMORE);
    if (rc == 0)
        rc = send_bytes(rep, n > 1 ? zmq_msg_data(&f[1]) : "", n > 1 ? zmq_msg_size(&f[1]) : 0,
                        ZMQ_SNDMORE);
    if (rc == 0)
        rc = send_bytes(rep, status, 3, ZMQ_SNDMORE);
    if (rc == 0)
        rc = send_bytes(rep, text, strlen(text), ZMQ_SNDMORE);
    if (rc == 0)
        rc = send_bytes(rep, user, strlen(user), ZMQ_SNDMORE);
    if (rc == 0)
        rc = send_bytes(rep, "", 0, 0);
    if (status[0] == '2') {
        fs_log_kv(FS_LOG_INFO, "agent authenticated", "AGENT", user, "ADDRESS", addr, NULL);
    } else {
        uint64_t supp = 0;
        if (fs_ratelimit_ok(&z->rl, &supp)) {
            char sbuf[24];
            snprintf(sbuf, sizeof sbuf, "%llu", (unsigned long long)supp);
            fs_log_kv(FS_LOG_WARNING, "CURVE key rejected by allow-list", "KEY", key_z85,
                      "ADDRESS", addr, "REASON", text, "SUPPRESSED", sbuf, NULL);
        }
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static void *zap_main(void *arg)
{
    fs_zap *z = arg;
    void *rep = zmq_socket(z->ctx, ZMQ_REP);
    int linger = 0;
    if (!rep) {
        set_bound(z, -errno);
        return NULL;
    }
    zmq_setsockopt(rep, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(rep, ZAP_ENDPOINT) != 0) {
        int e = errno;
        zmq_close(rep);
        set_bound(z, -e);
        return NULL;
    }
    set_bound(z, 1);
    while (!atomic_load(&z->stop)) {
        zmq_pollitem_t it = {rep, 0, ZMQ_POLLIN, 0};
        int r = zmq_poll(&it, 1, 100);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        if (r > 0 && (it.revents & ZMQ_POLLIN))
            handle_request(z, rep);
    }
    zmq_close(rep);
    return NULL;
}

int fs_zap_start(fs_zap **out, void *zctx, fs_allowlist *al, unsigned log_burst, fs_diag *d)
{
    *out = NULL;
    fs_zap *z = calloc(1, sizeof *z);
    if (!z)
        return fs_diag_set(d, FS_ENOMEM, "zap: out of memory");
    z->ctx = zctx;
    z->al = al;
    z->rl.burst = log_burst ? log_burst : 10;
    atomic_init(&z->stop, false);
    pthread_mutex_init(&z->mu, NULL);
    pthread_cond_init(&z->cv, NULL);
    if (pthread_create(&z->thread, NULL, zap_main, z) != 0) {
        pthread_mutex_destroy(&z->mu);
        pthread_cond_destroy(&z->cv);
        free(z);
        return fs_diag_set(d, FS_ESYS, "zap: cannot start thread");
    }
    pthread_mutex_lock(&z->mu);
    while (z->bound == 0)
        pthread_cond_wait(&z->cv, &z->mu);
    int b = z->bound;
    pthread_mutex_unlock(&z->mu);
    if (b < 0) {
        pthread_join(z->thread, NULL);
        pthread_mutex_destroy(&z->mu);
        pthread_cond_destroy(&z->cv);
        free(z);
        return fs_diag_set(d, FS_ESYS, "zap: cannot bind %s: %s%s", ZAP_ENDPOINT,
                           zmq_strerror(-b),
                           -b == EADDRINUSE ? " (another ZAP handler on this ZeroMQ context)" : "");
    }
    *out = z;
    return 0;
}

void fs_zap_stop(fs_zap *z)
{
    if (!z)
        return;
    atomic_store(&z->stop, true);
    pthread_join(z->thread, NULL);
    pthread_mutex_destroy(&z->mu);
    pthread_cond_destroy(&z->cv);
    free(z);
}
