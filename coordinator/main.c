/*
 * main.c — fedslim-coordinator: start-up, the zmq_poll loop, and messages from agents.
 *
 * One thread. The loop (coord_pump) serves the ROUTER, the control socket, signals and the
 * watchdog; a running job's federated requests wait for replies by calling coord_pump
 * themselves, so the daemon keeps answering fedslimctl, heartbeats and signals while a job runs.
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

#include "coord.h"
#include "fs_log.h"

agent_rec *coord_agent(coord *c, const char *name)
{
    for (int i = 0; i < c->n_agents; i++)
        if (!strcmp(c->agents[i].name, name))
            return &c->agents[i];
    return NULL;
}

static agent_rec *agent_add(coord *c, const char *name)
{
    agent_rec *a = coord_agent(c, name);
    if (a || c->n_agents == MAX_AGENTS)
        return a;
    a = &c->agents[c->n_agents++];
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    return a;
}

int coord_send(coord *c, const char *agent, fs_wire_msg *m)
{
    agent_rec *a = coord_agent(c, agent);
    if (!a || !a->connected)
        return FS_ENOTFOUND;
    fs_diag d = {0};
    int rc = fs_link_server_send(c->link, &a->peer, m, &d);
    if (rc)
        fs_log_kv(FS_LOG_WARNING, "send failed", "AGENT", agent, "TYPE", fs_msg_type_name(m->type),
                  "REASON", fs_diag_text(&d, rc), NULL);
    return rc;
}

void coord_status(coord *c, int force)
{
    double now = fs_now_sec();
    if (!force && now - c->last_status < 1.0)
        return;
    c->last_status = now;
    int live = 0;
    for (int i = 0; i < c->n_agents; i++)
        live += c->agents[i].connected;
    job *j = c->running;
    if (j) {
        int active = 0;
        for (int i = 0; i < j->n_agents; i++)
            active += j->agents[i].state == JA_ACTIVE;
        fs_notify_status("job %s %s round %u (%ld/%ld): %d/%d agents", j->id, j->phase, j->round,
                         j->it, j->total, active, j->n_agents);
    } else {
        fs_notify_status("idle, %d agent%s connected", live, live == 1 ? "" : "s");
    }
}

/* Records every message an agent sends (type, kind, payload bytes) when FS_RECORD_MESSAGES
 * names a file: the end-to-end tests check that agents only ever send sums and counts. */
static void record(coord *c, const char *agent, const fs_wire_msg *m)
{
    if (!c->record)
        return;
    size_t bytes = 0, n = m->n_tensors;
    for (size_t i = 0; i < m->n_tensors; i++)
        bytes += m->tensors[i].nbytes;   /* COMPUTE_HEAD: the bytes it announces */
    if (m->type == FS_MSG_COMPUTE_PART) {
        n = m->u.compute_part.n_slices;
        for (size_t i = 0; i < n; i++)
            bytes += m->u.compute_part.slices[i].len;
    }
    const char *kind = m->type == FS_MSG_COMPUTE_REQ ? m->u.compute_req.kind : "-";
    fprintf(c->record, "%s %s %s %zu %zu\n", agent, fs_msg_type_name(m->type), kind, n, bytes);
    fflush(c->record);
}

static void on_hello(coord *c, const fs_link_peer *peer, const fs_wire_msg *m)
{
    agent_rec *a = agent_add(c, peer->name);
    if (!a)
        return;
    int was = a->connected;
    a->connected = 1;
    a->peer = *peer;
    a->last_seen = fs_now_sec();
    a->n_samples = m->u.hello.n_samples;
    a->n_labeled = m->u.hello.n_labeled;
    a->n_classes = m->u.hello.n_classes < 1024 ? m->u.hello.n_classes : 1024;
    for (size_t k = 0; k < a->n_classes; k++)
        a->classes[k] = m->u.hello.classes[k];
    if (!was)
        fs_log_kv(FS_LOG_INFO, "agent connected", "AGENT", a->name, "SITE", m->u.hello.site, NULL);
    /* hello again while it serves a job: after a mere reconnect the agent still holds the job
       ("holds.JOB" in its capabilities) and gets the current round again; an agent that
       restarted has lost its state and leaves the job */
    int holds = 0;
    if (c->running && a->job[0] && !strcmp(a->job, c->running->id)) {
        char want[FS_WIRE_NAME_MAX + 8];
        snprintf(want, sizeof want, "holds.%.50s", c->running->id);
        for (size_t k = 0; k < m->u.hello.n_caps; k++)
            holds |= !strcmp(m->u.hello.caps[k], want);
        if (!holds)
            job_agent_left(c, c->running, a->name, "the agent restarted");
    }
    fs_wire_msg w;
    memset(&w, 0, sizeof w);
    w.type = FS_MSG_WELCOME;
    w.u.welcome.proto = FS_WIRE_PROTO;
    snprintf(w.u.welcome.agent, sizeof w.u.welcome.agent, "%s", a->name);
    w.u.welcome.heartbeat_ms = (uint32_t)(c->cfg.heartbeat_interval / 1000);
    coord_send(c, a->name, &w);
    if (holds) {
        fs_log_kv(FS_LOG_INFO, "agent reconnected and still holds the job", "AGENT", a->name,
                  "JOB", c->running->id, NULL);
        job_resend_round(c, a->name);
    }
    coord_status(c, 1);
}

static void on_message(coord *c, const fs_link_peer *peer, fs_wire_msg *m)
{
    record(c, peer->name, m);
    agent_rec *a = coord_agent(c, peer->name);
    if (m->type == FS_MSG_HELLO) {
        on_hello(c, peer, m);
        return;
    }
    if (!a || !a->connected) {
        /* after a coordinator restart: ask the agent to introduce itself again */
        fs_wire_msg e;
        memset(&e, 0, sizeof e);
        e.type = FS_MSG_ERROR;
        snprintf(e.u.error.code, sizeof e.u.error.code, "hello");
        snprintf(e.u.error.text, sizeof e.u.error.text, "unknown agent: send HELLO first");
        fs_diag d = {0};
        (void)fs_link_server_send(c->link, peer, &e, &d);
        return;
    }
    a->peer = *peer;
    a->last_seen = fs_now_sec();
    switch (m->type) {
    case FS_MSG_HEARTBEAT:
        break;
    case FS_MSG_BYE:
        a->connected = 0;
        fs_log_kv(FS_LOG_INFO, "agent said bye", "AGENT", a->name, "REASON", m->u.bye.reason,
                  NULL);
        if (c->running && a->job[0])
            job_agent_left(c, c->running, a->name, "the agent stopped");
        break;
    default:
        job_on_agent_message(c, a->name, m);
        break;
    }
}

int coord_reload(coord *c, fs_diag *d)
{
    fs_notify_reloading();
    int rc = fs_link_server_reload(c->link, d);
    if (rc)
        fs_log_kv(FS_LOG_ERR, "allow-list reload rejected", "REASON", d->msg, NULL);
    else
        fs_log_kv(FS_LOG_INFO, "allow-list reloaded", NULL);
    if (rc == 0) {
        rc = fs_coord_config_reload(c->config_path, &c->cfg, NULL, NULL, d);
        if (rc)
            fs_log_kv(FS_LOG_ERR, "configuration reload rejected", "REASON", d->msg, NULL);
    }
    fs_notify_ready(rc ? "reload rejected, see the log" : "reloaded");
    /* agents cut off by the reload must say hello again */
    for (int i = 0; i < c->n_agents; i++)
        if (!fs_link_server_session(c->link, c->agents[i].name))
            c->agents[i].connected = 0;
    return rc;
}

static void handle_signals(coord *c)
{
    int sig;
    while ((sig = fs_signal_next()) > 0) {
        if (sig == SIGHUP) {
            fs_diag d = {0};
            (void)coord_reload(c, &d);
        } else {
            fs_notify_stopping("stopping: the job's checkpoint is on disk");
            fs_log_kv(FS_LOG_INFO, "stopping", "SIGNAL", sig == SIGTERM ? "TERM" : "INT", NULL);
            c->stopping = 1;
        }
    }
}

int coord_pump(coord *c, int timeout_ms)
{
    uint64_t now = fs_now_usec();
    uint64_t deadlines[2] = {fs_watchdog_deadline(&c->wd), fs_control_deadline(c->ctl)};
    long t = fs_loop_timeout_ms(now, deadlines, 2);
    if (t < 0 || (timeout_ms >= 0 && t > timeout_ms))
        t = timeout_ms;
    zmq_pollitem_t items[3 + FS_CONTROL_MAX_FDS];
    items[0] = (zmq_pollitem_t){fs_link_server_socket(c->link), 0, ZMQ_POLLIN, 0};
    items[1] = (zmq_pollitem_t){fs_link_server_monitor_socket(c->link), 0, ZMQ_POLLIN, 0};
    items[2] = (zmq_pollitem_t){NULL, fs_signal_fd(), ZMQ_POLLIN, 0};
    int n = 3 + fs_control_fill_zmq(c->ctl, items + 3, FS_CONTROL_MAX_FDS);
    int rc = zmq_poll(items, n, t);
    if (rc < 0 && errno != EINTR)
        return FS_ESYS;
    now = fs_now_usec();
    if (fs_watchdog_due(&c->wd, now))
        fs_watchdog_ping(&c->wd, now);
    if (rc > 0 && (items[2].revents & ZMQ_POLLIN))
        handle_signals(c);
    if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
        fs_link_server_service_monitor(c->link);
    char lost[65];
    while (fs_link_server_take_lost(c->link, lost, sizeof lost)) {
        agent_rec *a = coord_agent(c, lost);
        if (a && a->connected) {
            a->connected = 0;    /* a reconnection says hello again; a job waits out its step */
            fs_log_kv(FS_LOG_INFO, "agent disconnected", "AGENT", lost, NULL);
        }
    }
    if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
        for (int k = 0; k < 256; k++) {
            fs_link_peer peer;
            fs_wire_msg *m = NULL;
            fs_diag d = {0};
            int r = fs_link_server_recv(c->link, &peer, &m, 0, &d);
            if (r == FS_ETIMEDOUT)
                break;
            if (r)
                continue;   /* dropped and logged by the link */
            on_message(c, &peer, m);
            fs_wire_msg_free(m);
        }
    }
    fs_control_service(c->ctl, coord_control, c);
    return 0;
}

/* Frees everything main() allocated (the sanitizers' leak check runs at exit). */
static int finish(coord *c, int status)
{
    jobs_free(c);
    fs_coord_config_free(&c->cfg);
    free(c);
    return status;
}

static int usage(FILE *f, int status)
{
    fprintf(f, "usage: fedslim-coordinator --config FILE [--check]\n"
               "  --config FILE   configuration (default /etc/fedslim/coordinator.conf)\n"
               "  --check         validate the configuration and keys, then exit\n");
    return status;
}

int main(int argc, char **argv)
{
    fs_blas_select_core(argv);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"check", no_argument, 0, 'k'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    coord *c = calloc(1, sizeof *c);
    if (!c)
        return 1;
    c->config_path = "/etc/fedslim/coordinator.conf";
    int opt, check = 0;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (opt == 'c')
            c->config_path = optarg;
        else if (opt == 'k')
            check = 1;
        else if (opt == 'h')
            return free(c), usage(stdout, 0);
        else
            return free(c), usage(stderr, 2);
    }
    if (optind != argc)
        return free(c), usage(stderr, 2);
    fs_diag d = {0};
    if (fs_coord_config_load(c->config_path, &c->cfg, &d) != 0) {
        fprintf(stderr, "fedslim-coordinator: %s\n", d.msg);
        fs_notify_failed(EINVAL, d.msg);
        free(c);
        return 1;
    }
    fs_log_setup("fedslim-coordinator", fs_cfg_log_level(c->cfg.log_level));
    fs_key sec, pub;
    int rc = c->cfg.secret_key ? fs_keys_load_secret(c->cfg.secret_key, sec, pub, &d)
                               : fs_diag_set(&d, FS_EINVAL, "%s: [coordinator] secret_key is not set",
                                             c->config_path);
    if (rc) {
        fs_log_kv(FS_LOG_ERR, "cannot start", "REASON", d.msg, NULL);
        fs_notify_failed(EINVAL, d.msg);
        return finish(c, 1);
    }
    if (check) {
        sodium_memzero(sec, sizeof sec);
        printf("fedslim-coordinator: %s is valid\n", c->config_path);
        return finish(c, 0);
    }
    fs_threads_configure((int)c->cfg.threads);
    mkdir(c->cfg.state_dir, 0750);
    char jobs_dir[4200];
    snprintf(jobs_dir, sizeof jobs_dir, "%s/jobs", c->cfg.state_dir);
    mkdir(jobs_dir, 0750);
    if ((rc = fs_signals_install(&d)) != 0) {
        fs_log_kv(FS_LOG_ERR, "cannot install signal handlers", "REASON", d.msg, NULL);
        return finish(c, 1);
    }
    const char *rec = getenv("FS_RECORD_MESSAGES");
    if (rec && *rec)
        c->record = fopen(rec, "a");
    c->zctx = zmq_ctx_new();
    fs_link_options lo = fs_link_options_default();
    lo.chunk_bytes = c->cfg.limits.chunk_size;
    if (c->cfg.limits.chunk_size > lo.limits.max_chunk_bytes)
        lo.limits.max_chunk_bytes = c->cfg.limits.chunk_size;
    lo.limits.max_message_bytes = c->cfg.limits.max_message;
    lo.limits.max_frames = (size_t)c->cfg.limits.max_frames + 1;
    lo.max_garbage = (unsigned)c->cfg.limits.max_protocol_errors;
    /* what libzmq may queue per agent: with streamed replies the coordinator holds about
       rcvhwm parts per agent in flight besides the one model-sized sum (docs/federation.md) */
    lo.rcvhwm = FS_FED_COORD_RCVHWM;
    rc = fs_link_server_open(&c->link, c->zctx, c->cfg.listen, sec, c->cfg.allow_list, &lo, &d);
    sodium_memzero(sec, sizeof sec);
    if (rc == 0)
        rc = fs_control_open(&c->ctl, c->cfg.control_socket, c->cfg.control_group, &d);
    if (rc) {
        fs_log_kv(FS_LOG_ERR, "cannot start", "REASON", d.msg, NULL);
        fs_notify_failed(EINVAL, d.msg);
        fs_link_server_close(c->link);
        zmq_ctx_term(c->zctx);
        return finish(c, 1);
    }
    fs_watchdog_init(&c->wd, fs_now_usec());
    jobs_load(c);
    fs_log_kv(FS_LOG_INFO, "started", "LISTEN", fs_link_server_endpoint(c->link), "CONTROL",
              c->cfg.control_socket, NULL);
    /* tests and scripts read the resolved endpoint (tcp://127.0.0.1:* binds) from here */
    char ep[4200];
    snprintf(ep, sizeof ep, "%s/endpoint", c->cfg.state_dir);
    const char *e = fs_link_server_endpoint(c->link);
    (void)fs_write_file_atomic(ep, e, strlen(e), &d);
    char status[256];
    snprintf(status, sizeof status, "idle, listening on %s", e);
    fs_notify_ready(status);
    while (!c->stopping) {
        if (!c->running)
            job_run_next(c);
        if (c->stopping)
            break;
        if (coord_pump(c, 1000) != 0)
            break;
        coord_status(c, 0);
    }
    for (int i = 0; i < c->n_agents; i++) {
        if (!c->agents[i].connected)
            continue;
        fs_wire_msg bye;
        memset(&bye, 0, sizeof bye);
        bye.type = FS_MSG_BYE;
        snprintf(bye.u.bye.reason, sizeof bye.u.bye.reason, "coordinator stopping");
        coord_send(c, c->agents[i].name, &bye);
    }
    fs_control_close(c->ctl);
    fs_link_server_close(c->link);
    zmq_ctx_term(c->zctx);
    if (c->record)
        fclose(c->record);
    fs_log_kv(FS_LOG_INFO, "stopped", NULL);
    return finish(c, 0);
}
