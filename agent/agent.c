/*
 * agent.c — fedslim-agent: the daemon at a site. Connects to the coordinator over CURVE (pinned
 * server key), introduces itself with counts only, fetches a job's teacher by digest, opens only
 * the datasets its own configuration names, and answers compute requests with sums and counts
 * computed by the same local code `fedslim compress` uses (fs_fed_serve -> fs_local).
 *
 * One thread: the zmq_poll loop owns the socket, the signals pipe and the watchdog; a request is
 * computed on the loop thread between polls.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "fs_config.h"
#include "fs_daemon.h"
#include "fs_fed.h"
#include "fs_link.h"
#include "fs_log.h"

#define HELLO_EVERY_USEC 2000000u
#define HEARTBEAT_EVERY_USEC 5000000u
#define MODEL_REQ_BYTES (1u << 20)
#define MAX_MODEL_BYTES ((uint64_t)2 << 30)

typedef struct {
    fs_agent_config cfg;
    const char *config_path;
    void *zctx;
    fs_link_client *link;
    fs_watchdog wd;
    int welcomed;
    int connected;              /* a CURVE session is up (socket monitor); nothing is sent without
                                 * one, so a stop never waits out the send timeout */
    uint64_t next_hello, next_heartbeat;
    uint64_t n_samples, n_labeled;
    uint64_t classes[1024];
    size_t n_classes;
    /* the current job */
    char job[FS_WIRE_NAME_MAX + 1];
    int job_state;              /* 0 none, 1 fetching the model, 2 serving */
    fs_model_rx rx;
    char data_name[FS_WIRE_NAME_MAX + 1];
    int64_t shots, per_class, seed, max_batch;
    fs_model *teacher;
    fs_dataset *data, *fewshot;
    fs_fed_agent *fa;
    int stopping;
} agent;

static void job_clear(agent *a)
{
    fs_fed_agent_free(a->fa);
    fs_dataset_free(a->fewshot);
    fs_dataset_free(a->data);
    fs_model_free(a->teacher);
    fs_model_rx_free(&a->rx);
    a->fa = NULL;
    a->fewshot = a->data = NULL;
    a->teacher = NULL;
    memset(&a->rx, 0, sizeof a->rx);
    a->job[0] = '\0';
    a->job_state = 0;
    fs_wire_session_expect(fs_link_client_session(a->link), "", 0, 0);
}

static int send_msg(agent *a, fs_wire_msg *m)
{
    fs_diag d = {0};
    if (!m->job[0] && a->job[0] && m->type != FS_MSG_HELLO)
        snprintf(m->job, sizeof m->job, "%s", a->job);
    int rc = fs_link_client_send(a->link, m, &d);
    if (rc)
        fs_log_kv(FS_LOG_WARNING, "send failed", "TYPE", fs_msg_type_name(m->type), "REASON",
                  fs_diag_text(&d, rc), NULL);
    return rc;
}

static void send_error(agent *a, const fs_wire_msg *req, const char *code, const char *text)
{
    fs_wire_msg m;
    memset(&m, 0, sizeof m);
    m.type = FS_MSG_ERROR;
    snprintf(m.job, sizeof m.job, "%s", req ? req->job : a->job);
    if (req) {
        m.round = req->round;
        m.step = req->step;
    }
    snprintf(m.u.error.code, sizeof m.u.error.code, "%s", code);
    snprintf(m.u.error.text, sizeof m.u.error.text, "%s", text);
    send_msg(a, &m);
}

static void send_hello(agent *a)
{
    fs_wire_msg m;
    memset(&m, 0, sizeof m);
    m.type = FS_MSG_HELLO;
    m.u.hello.proto_min = FS_WIRE_PROTO_MIN;
    m.u.hello.proto_max = FS_WIRE_PROTO_MAX;
    snprintf(m.u.hello.version, sizeof m.u.hello.version, "%s", FS_VERSION);
    snprintf(m.u.hello.site, sizeof m.u.hello.site, "%s", a->cfg.name);
    /* "holds.JOB": after a reconnect, the job this agent still serves (its state is intact) */
    char holds[FS_WIRE_NAME_MAX + 1];
    snprintf(holds, sizeof holds, "holds.%.50s", a->job);
    const char *caps[6] = {"loss", "moments", "hist", "eval", "drop-blocks", holds};
    m.u.hello.caps = caps;
    m.u.hello.n_caps = a->job_state == 2 ? 6 : 5;
    m.u.hello.n_samples = a->n_samples;
    m.u.hello.n_labeled = a->n_labeled;
    m.u.hello.classes = a->classes;
    m.u.hello.n_classes = a->n_classes;
    send_msg(a, &m);
}

static const fs_cfg_entry *dataset_entry(const agent *a, const char *name)
{
    return fs_agent_config_dataset(&a->cfg, name);
}

/* "idx:PATH" etc. from a [data] entry. */
static void entry_spec(const fs_cfg_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "%s:%s", fs_agent_dataset_kinds[e->kind], e->path);
}

static int open_dataset(const fs_cfg_entry *e, const fs_model *m, fs_dataset **out,
                        fs_diag *d)
{
    char spec[4200];
    entry_spec(e, spec, sizeof spec);
    fs_data_opts o = {0};
    if (m) {
        o.channels = m->arch.in_c;
        o.height = m->arch.in_h;
        o.width = m->arch.in_w;
        o.resize = 1;
    }
    return fs_dataset_open(out, spec, &o, d);
}

/* Counts of the first configured dataset, for HELLO (counts only, never samples). */
static int summarize(agent *a, fs_diag *d)
{
    if (a->cfg.data.n == 0)
        return fs_diag_set(d, FS_EINVAL, "%s: [data] names no dataset", a->config_path);
    fs_dataset *ds = NULL;
    int rc = open_dataset(&a->cfg.data.v[0], NULL, &ds, d);
    if (rc)
        return rc;
    a->n_samples = (uint64_t)ds->n;
    a->n_labeled = ds->labels ? (uint64_t)ds->n : 0;
    a->n_classes = 0;
    if (ds->labels && ds->num_classes <= 1024) {
        int64_t counts[1024];
        if (fs_dataset_class_counts(ds, NULL, 0, counts, d) == 0) {
            for (int k = 0; k < ds->num_classes; k++)
                a->classes[k] = (uint64_t)counts[k];
            a->n_classes = (size_t)ds->num_classes;
        }
    }
    fs_dataset_free(ds);
    return 0;
}

static void decline(agent *a, const fs_wire_msg *offer, const char *reason)
{
    fs_wire_msg m;
    memset(&m, 0, sizeof m);
    m.type = FS_MSG_JOB_DECLINE;
    snprintf(m.job, sizeof m.job, "%s", offer->job);
    snprintf(m.u.job_reply.reason, sizeof m.u.job_reply.reason, "%s", reason);
    send_msg(a, &m);
    fs_log_kv(FS_LOG_WARNING, "job declined", "JOB", offer->job, "REASON", reason, NULL);
}

static void request_model(agent *a)
{
    fs_wire_msg req;
    if (fs_model_rx_next_req(&a->rx, MODEL_REQ_BYTES, &req)) {
        snprintf(req.job, sizeof req.job, "%s", a->job);
        send_msg(a, &req);
    }
}

static void on_offer(agent *a, const fs_wire_msg *m)
{
    const fs_kvlist *cfg = &m->u.job_offer.config;
    const char *data = fs_kv_get_str(cfg, "data");
    char reason[256];
    if (!data)
        data = a->cfg.data.n ? a->cfg.data.v[0].name : "";
    if (!dataset_entry(a, data)) {
        snprintf(reason, sizeof reason, "no dataset named '%s' in this site's [data]", data);
        decline(a, m, reason);
        return;
    }
    if (a->job_state && strcmp(a->job, m->job)) {
        snprintf(reason, sizeof reason, "busy with job %s", a->job);
        decline(a, m, reason);
        return;
    }
    job_clear(a);
    snprintf(a->job, sizeof a->job, "%s", m->job);
    snprintf(a->data_name, sizeof a->data_name, "%s", data);
    a->shots = a->per_class = a->seed = 0;
    a->max_batch = 64;
    (void)fs_kv_get_i64(cfg, "shots", &a->shots);
    (void)fs_kv_get_i64(cfg, "per_class", &a->per_class);
    (void)fs_kv_get_i64(cfg, "seed", &a->seed);
    (void)fs_kv_get_i64(cfg, "max_batch", &a->max_batch);
    if (a->shots < 0 || a->seed < 0 || a->max_batch < 1 || a->max_batch > 4096) {
        decline(a, m, "bad job settings (shots, seed or max_batch out of range)");
        job_clear(a);
        return;
    }
    fs_diag d = {0};
    if (fs_model_rx_init(&a->rx, m->u.job_offer.model_digest, m->u.job_offer.model_bytes,
                         MAX_MODEL_BYTES, &d) != 0) {
        decline(a, m, fs_diag_text(&d, d.code));
        job_clear(a);
        return;
    }
    a->job_state = 1;
    fs_wire_session_expect(fs_link_client_session(a->link), a->job, 0, 0);
    fs_link_client_session(a->link)->check_round = false;
    fs_link_client_session(a->link)->check_step = false;
    fs_log_kv(FS_LOG_INFO, "job offered: fetching the teacher", "JOB", a->job, NULL);
    request_model(a);
}

/* The teacher arrived: load it, open and sample the data, accept. */
static void start_job(agent *a)
{
    fs_diag d = {0};
    char path[4200];
    char hex[65];
    fs_wire_digest_hex(a->rx.digest, hex);
    snprintf(path, sizeof path, "%s/teacher-%.16s.safetensors", a->cfg.state_dir, hex);
    int rc = fs_write_file_atomic(path, a->rx.buf, a->rx.total, &d);
    if (rc == 0)
        rc = fs_model_load(&a->teacher, path, &d);
    unlink(path);
    const fs_cfg_entry *e = dataset_entry(a, a->data_name);
    if (rc == 0)
        rc = e ? open_dataset(e, a->teacher, &a->data, &d)
               : fs_diag_set(&d, FS_ENOTFOUND, "dataset '%s' vanished", a->data_name);
    int32_t *idx = NULL;
    int n = 0;
    if (rc == 0 && a->shots > 0) {
        if (a->per_class)
            rc = fs_sample_per_class(&idx, &n, a->data, (int)a->shots, (uint64_t)a->seed, &d);
        else {
            n = a->shots < a->data->n ? (int)a->shots : a->data->n;
            rc = fs_sample_total(&idx, a->data, n, (uint64_t)a->seed, &d);
        }
        if (rc == 0)
            rc = fs_dataset_subset(&a->fewshot, a->data, idx, n, &d);
    }
    free(idx);
    uint64_t tag = 0;
    for (const char *p = a->cfg.name; *p; p++)
        tag = tag * 131 + (unsigned char)*p;
    if (rc == 0)
        rc = fs_fed_agent_create(&a->fa, a->teacher, a->fewshot ? a->fewshot : a->data,
                                 (int)a->max_batch, tag, &d);
    fs_wire_msg m;
    memset(&m, 0, sizeof m);
    snprintf(m.job, sizeof m.job, "%s", a->job);
    if (rc) {
        m.type = FS_MSG_JOB_DECLINE;
        snprintf(m.u.job_reply.reason, sizeof m.u.job_reply.reason, "%s", fs_diag_text(&d, rc));
        fs_log_kv(FS_LOG_ERR, "job failed to start", "JOB", a->job, "REASON", fs_diag_text(&d, rc),
                  NULL);
        send_msg(a, &m);
        job_clear(a);
        return;
    }
    a->job_state = 2;
    m.type = FS_MSG_JOB_ACCEPT;
    char info[128];
    snprintf(info, sizeof info, "%d samples", (a->fewshot ? a->fewshot : a->data)->n);
    snprintf(m.u.job_reply.reason, sizeof m.u.job_reply.reason, "%s", info);
    send_msg(a, &m);
    fs_log_kv(FS_LOG_INFO, "job accepted", "JOB", a->job, "SAMPLES", info, NULL);
    fs_notify_status("job %s: serving compute requests (%s)", a->job, info);
}

static void on_compute(agent *a, const fs_wire_msg *req)
{
    if (a->job_state != 2 || strcmp(req->job, a->job)) {
        send_error(a, req, "no-job", "this agent holds no such job");
        return;
    }
    fs_wire_msg reply;
    fs_diag d = {0};
    int rc = fs_fed_serve(a->fa, req, &reply, &d);
    if (rc) {
        fs_log_kv(FS_LOG_WARNING, "compute request failed", "JOB", a->job, "KIND",
                  req->u.compute_req.kind, "REASON", fs_diag_text(&d, rc), NULL);
        send_error(a, req, rc == FS_EDIVERGED ? "diverged" : "compute", fs_diag_text(&d, rc));
        return;
    }
    snprintf(reply.job, sizeof reply.job, "%s", req->job);
    reply.round = req->round;
    reply.step = req->step;
    /* whole, or streamed in parts when the request asks for it (fs_fed_send_reply) */
    rc = fs_fed_send_reply(a->link, req, &reply, a->cfg.limits.chunk_size, &d);
    if (rc)
        fs_log_kv(FS_LOG_WARNING, "send failed", "TYPE", "COMPUTE_REPLY", "REASON",
                  fs_diag_text(&d, rc), NULL);
}

/* Drains the socket monitor: each event is two frames, the first starting with the 16-bit event
 * id (zmq_socket_monitor(3)). A new handshake means a new session: say hello again. */
static void on_monitor_events(agent *a, void *mon)
{
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t id = 0;
        if (zmq_msg_size(&ev) >= sizeof id)
            memcpy(&id, zmq_msg_data(&ev), sizeof id);
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {              /* the endpoint frame */
            zmq_msg_init(&ev);
            (void)zmq_msg_recv(&ev, mon, ZMQ_DONTWAIT);
            zmq_msg_close(&ev);
        }
        if (id == ZMQ_EVENT_DISCONNECTED) {
            if (a->connected)
                fs_log_kv(FS_LOG_WARNING, "connection to the coordinator lost", NULL);
            a->connected = 0;
        } else if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            if (a->welcomed)
                fs_log_kv(FS_LOG_INFO, "reconnected: introducing ourselves again", NULL);
            a->connected = 1;
            a->welcomed = 0;
            a->next_hello = 0;
        }
    }
}

static void on_message(agent *a, fs_wire_msg *m)
{
    switch (m->type) {
    case FS_MSG_WELCOME:
        if (!a->welcomed)
            fs_log_kv(FS_LOG_INFO, "welcomed by the coordinator", "AGENT", m->u.welcome.agent,
                      NULL);
        a->welcomed = 1;
        break;
    case FS_MSG_JOB_OFFER:
        on_offer(a, m);
        break;
    case FS_MSG_MODEL_CHUNK: {
        if (a->job_state != 1)
            break;
        fs_diag d = {0};
        int rc = fs_model_rx_add(&a->rx, m, &d);
        if (rc == 0 && a->rx.received == a->rx.total)
            rc = fs_model_rx_finish(&a->rx, &d);
        if (rc) {
            fs_log_kv(FS_LOG_ERR, "teacher transfer failed", "JOB", a->job, "REASON",
                      fs_diag_text(&d, rc), NULL);
            fs_wire_msg off;
            memset(&off, 0, sizeof off);
            snprintf(off.job, sizeof off.job, "%s", a->job);
            decline(a, &off, fs_diag_text(&d, rc));
            job_clear(a);
        } else if (a->rx.received == a->rx.total) {
            start_job(a);
        } else {
            request_model(a);
        }
        break;
    }
    case FS_MSG_COMPUTE_REQ:
        on_compute(a, m);
        break;
    case FS_MSG_ERROR:
        if (!strcmp(m->u.error.code, "hello")) {
            a->welcomed = 0;       /* the coordinator restarted: introduce ourselves again */
            a->next_hello = 0;
        } else {
            fs_log_kv(FS_LOG_WARNING, "error from the coordinator", "CODE", m->u.error.code,
                      "REASON", m->u.error.text, NULL);
        }
        break;
    case FS_MSG_BYE:
        if (a->job[0] && (!m->job[0] || !strcmp(m->job, a->job))) {
            fs_log_kv(FS_LOG_INFO, "job ended", "JOB", a->job, "REASON", m->u.bye.reason, NULL);
            job_clear(a);
            fs_notify_status("idle, connected");
        }
        break;
    default:
        break;
    }
}

static int load_keys(agent *a, fs_key spub, fs_key mpub, fs_key msec, fs_diag *d)
{
    int rc;
    if (!a->cfg.secret_key)
        return fs_diag_set(d, FS_EINVAL, "%s: [agent] secret_key is not set", a->config_path);
    if ((rc = fs_keys_load_secret(a->cfg.secret_key, msec, mpub, d)) != 0)
        return rc;
    if (a->cfg.coordinator_public_key) {
        if (fs_key_from_z85(a->cfg.coordinator_public_key, strlen(a->cfg.coordinator_public_key),
                            spub) != 0)
            return fs_diag_set(d, FS_EFORMAT, "%s: coordinator_public_key is not a Z85 key",
                               a->config_path);
    } else if ((rc = fs_keys_load_public(a->cfg.coordinator_public_key_file, spub, d)) != 0) {
        return rc;
    }
    if (a->cfg.public_key) {
        fs_key want;
        if (fs_key_from_z85(a->cfg.public_key, strlen(a->cfg.public_key), want) != 0 ||
            memcmp(want, mpub, sizeof want))
            return fs_diag_set(d, FS_EAUTH, "%s: public_key does not match the secret key in %s",
                               a->config_path, a->cfg.secret_key);
    }
    return 0;
}

static int usage(FILE *f, int status)
{
    fprintf(f, "usage: fedslim-agent --config FILE [--check]\n"
               "  --config FILE   agent configuration (default /etc/fedslim/agent.conf)\n"
               "  --check         validate the configuration, keys and datasets, then exit\n");
    return status;
}

int main(int argc, char **argv)
{
    fs_blas_select_core(argv);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"check", no_argument, 0, 'k'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    agent a;
    memset(&a, 0, sizeof a);
    a.config_path = "/etc/fedslim/agent.conf";
    int c, check = 0;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c')
            a.config_path = optarg;
        else if (c == 'k')
            check = 1;
        else if (c == 'h')
            return usage(stdout, 0);
        else
            return usage(stderr, 2);
    }
    if (optind != argc)
        return usage(stderr, 2);
    fs_diag d = {0};
    int rc = fs_agent_config_load(a.config_path, &a.cfg, &d);
    if (rc) {
        fprintf(stderr, "fedslim-agent: %s\n", d.msg);
        fs_notify_failed(EINVAL, d.msg);
        return 1;
    }
    fs_log_setup("fedslim-agent", fs_cfg_log_level(a.cfg.log_level));
    fs_key spub, mpub, msec;
    if ((rc = load_keys(&a, spub, mpub, msec, &d)) != 0 || (rc = summarize(&a, &d)) != 0) {
        fs_log_kv(FS_LOG_ERR, "cannot start", "REASON", d.msg, NULL);
        fs_notify_failed(EINVAL, d.msg);
        sodium_memzero(msec, sizeof msec);
        fs_agent_config_free(&a.cfg);
        return 1;
    }
    if (check) {
        printf("fedslim-agent: %s is valid (%llu samples in '%s')\n", a.config_path,
               (unsigned long long)a.n_samples, a.cfg.data.v[0].name);
        sodium_memzero(msec, sizeof msec);
        fs_agent_config_free(&a.cfg);
        return 0;
    }
    fs_threads_configure((int)a.cfg.threads);
    mkdir(a.cfg.state_dir, 0750);
    if ((rc = fs_signals_install(&d)) != 0) {
        fs_log_kv(FS_LOG_ERR, "cannot install signal handlers", "REASON", d.msg, NULL);
        return 1;
    }
    a.zctx = zmq_ctx_new();
    fs_link_options lo = fs_link_options_default();
    lo.chunk_bytes = a.cfg.limits.chunk_size;
    lo.limits.max_chunk_bytes = a.cfg.limits.chunk_size > lo.limits.max_chunk_bytes
                                    ? a.cfg.limits.chunk_size
                                    : lo.limits.max_chunk_bytes;
    lo.limits.max_message_bytes = a.cfg.limits.max_message;
    lo.limits.max_frames = (size_t)a.cfg.limits.max_frames + 1;
    lo.max_garbage = (unsigned)a.cfg.limits.max_protocol_errors;
    rc = fs_link_client_open(&a.link, a.zctx, a.cfg.coordinator, spub, mpub, msec, &lo, &d);
    sodium_memzero(msec, sizeof msec);
    if (rc) {
        fs_log_kv(FS_LOG_ERR, "cannot open the link", "REASON", d.msg, NULL);
        zmq_ctx_term(a.zctx);
        return 1;
    }
    /* Every (re)connection is a new handshake: introduce ourselves again, so that a restarted
     * coordinator learns who we are (its sequence numbers start again with its WELCOME). The
     * monitor also says when the connection drops: then we send nothing (ZMQ_IMMEDIATE would
     * block every send for the send timeout) until the next handshake. Without a monitor we
     * assume a connection and rely on the send timeout. */
    void *mon = NULL;
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://fs-agent-monitor-%d", (int)getpid());
    if (zmq_socket_monitor(fs_link_client_socket(a.link), mon_ep,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) == 0) {
        mon = zmq_socket(a.zctx, ZMQ_PAIR);
        if (mon && zmq_connect(mon, mon_ep) != 0) {
            zmq_close(mon);
            mon = NULL;
        }
    }
    a.connected = mon == NULL;
    fs_watchdog_init(&a.wd, fs_now_usec());
    char status[256];
    snprintf(status, sizeof status, "connecting to %s as %s", a.cfg.coordinator, a.cfg.name);
    fs_notify_ready(status);
    fs_log_kv(FS_LOG_INFO, "started", "AGENT", a.cfg.name, "COORDINATOR", a.cfg.coordinator,
              NULL);
    while (!a.stopping) {
        uint64_t now = fs_now_usec();
        if (a.connected && !a.welcomed && now >= a.next_hello) {
            send_hello(&a);
            a.next_hello = now + HELLO_EVERY_USEC;
        }
        if (a.connected && a.welcomed && now >= a.next_heartbeat) {
            fs_wire_msg hb;
            memset(&hb, 0, sizeof hb);
            hb.type = FS_MSG_HEARTBEAT;
            hb.u.heartbeat.progress = 0;
            send_msg(&a, &hb);
            a.next_heartbeat = now + HEARTBEAT_EVERY_USEC;
        }
        uint64_t deadlines[3] = {a.welcomed ? a.next_heartbeat : a.next_hello,
                                 fs_watchdog_deadline(&a.wd), 0};
        long timeout = fs_loop_timeout_ms(now, deadlines, 2);
        zmq_pollitem_t items[3] = {{fs_link_client_socket(a.link), 0, ZMQ_POLLIN, 0},
                                   {NULL, fs_signal_fd(), ZMQ_POLLIN, 0},
                                   {mon, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, mon ? 3 : 2, timeout);
        if (n < 0 && errno != EINTR) {
            fs_log_kv(FS_LOG_ERR, "poll failed", "REASON", zmq_strerror(errno), NULL);
            break;
        }
        now = fs_now_usec();
        if (fs_watchdog_due(&a.wd, now))
            fs_watchdog_ping(&a.wd, now);
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) {
            int sig;
            while ((sig = fs_signal_next()) > 0) {
                if (sig == SIGHUP) {
                    fs_notify_reloading();
                    rc = fs_agent_config_reload(a.config_path, &a.cfg, NULL, NULL, &d);
                    if (rc)
                        fs_log_kv(FS_LOG_ERR, "reload rejected", "REASON", d.msg, NULL);
                    fs_notify_ready(rc ? "reload rejected, see the log" : "reloaded");
                } else {
                    fs_notify_stopping("stopping");
                    a.stopping = 1;
                }
            }
        }
        if (n > 0 && mon && (items[2].revents & ZMQ_POLLIN))
            on_monitor_events(&a, mon);
        if (n > 0 && (items[0].revents & ZMQ_POLLIN)) {
            for (int k = 0; k < 64; k++) {
                fs_wire_msg *m = NULL;
                rc = fs_link_client_recv(a.link, &m, 0, &d);
                if (rc == FS_ETIMEDOUT)
                    break;
                if (rc)
                    continue;   /* dropped by the link (logged there) */
                on_message(&a, m);
                fs_wire_msg_free(m);
            }
        }
    }
    if (a.connected && a.welcomed) {
        fs_wire_msg bye;
        memset(&bye, 0, sizeof bye);
        bye.type = FS_MSG_BYE;
        snprintf(bye.u.bye.reason, sizeof bye.u.bye.reason, "agent stopping");
        send_msg(&a, &bye);
    }
    job_clear(&a);
    if (mon) {
        zmq_socket_monitor(fs_link_client_socket(a.link), NULL, 0);
        zmq_close(mon);
    }
    fs_link_client_close(a.link);
    zmq_ctx_term(a.zctx);
    fs_agent_config_free(&a.cfg);
    fs_log_kv(FS_LOG_INFO, "stopped", NULL);
    return 0;
}
