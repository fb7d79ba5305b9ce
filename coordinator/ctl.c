/*
 * ctl.c — the coordinator's answers to fedslimctl (control protocol v1, docs/control.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <dirent.h>
#include <signal.h>

#include "coord.h"

static json_t *agents_json(coord *c)
{
    json_t *arr = json_array();
    double now = fs_now_sec();
    for (int i = 0; i < c->n_agents; i++) {
        agent_rec *a = &c->agents[i];
        json_t *cls = json_array();
        for (size_t k = 0; k < a->n_classes; k++)
            json_array_append_new(cls, json_integer((json_int_t)a->classes[k]));
        json_array_append_new(
            arr, json_pack("{s:s,s:b,s:o,s:I,s:I,s:o,s:o,s:o}", "name", a->name, "connected",
                           a->connected, "address",
                           a->connected && a->peer.address[0] ? json_string(a->peer.address)
                                                               : json_null(),
                           "n_samples", (json_int_t)a->n_samples,
                           "n_labeled", (json_int_t)a->n_labeled, "classes", cls, "last_seen_s",
                           a->last_seen > 0 ? json_real(now - a->last_seen) : json_null(), "job",
                           a->job[0] ? json_string(a->job) : json_null()));
    }
    return arr;
}

static json_t *files_json(const job *j)
{
    json_t *arr = json_array();
    if (j->state != JOB_DONE)
        return arr;
    DIR *dh = opendir(j->dir);
    if (!dh)
        return arr;
    struct dirent *e;
    while ((e = readdir(dh))) {
        const char *n = e->d_name;
        size_t l = strlen(n);
        if ((l > 12 && !strcmp(n + l - 12, ".safetensors")) || !strcmp(n, "report.json") ||
            !strcmp(n, "plot.svg"))
            json_array_append_new(arr, json_string(n));
    }
    closedir(dh);
    return arr;
}

static json_t *job_json(const job *j, int full)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:f,s:o,s:o}", "id", j->id, "name",
                          j->cfg.name, "state", job_state_name(j->state), "phase", j->phase,
                          "round", (int)j->it, "rounds", (int)j->total, "submitted",
                          j->submitted, "started",
                          j->started > 0 ? json_real(j->started) : json_null(), "finished",
                          j->finished > 0 ? json_real(j->finished) : json_null());
    json_object_set_new(o, "exchanges", json_integer(j->round));
    if (!full)
        return o;
    json_object_set_new(o, "loss", j->state == JOB_RUNNING && j->it > 0 ? json_real(j->loss)
                                                                          : json_null());
    json_object_set_new(o, "eta_s", j->state == JOB_RUNNING && j->it > 0 ? json_real(j->eta)
                                                                           : json_null());
    json_t *agents = json_array();
    int active = 0;
    for (int i = 0; i < j->n_agents; i++) {
        const job_agent *ja = &j->agents[i];
        active += ja->state == JA_ACTIVE;
        const char *st = ja->state == JA_ACTIVE ? "active"
                         : ja->state == JA_OFFERED ? "waiting"
                         : ja->state == JA_LEFT ? "left"
                                                : "declined";
        json_t *a = json_pack("{s:s,s:s,s:I}", "name", ja->name, "state", st, "samples",
                              (json_int_t)ja->samples);
        json_object_set_new(a, "left_phase", ja->state >= JA_LEFT ? json_string(ja->left_phase)
                                                                  : json_null());
        json_object_set_new(a, "left_round", ja->state >= JA_LEFT ? json_integer(ja->left_round)
                                                                  : json_null());
        if (ja->reason[0])
            json_object_set_new(a, "reason", json_string(ja->reason));
        json_array_append_new(agents, a);
    }
    json_object_set_new(o, "agents", agents);
    json_object_set_new(o, "agents_reporting", json_integer(active));
    json_object_set_new(o, "agents_total", json_integer(j->n_agents));
    json_object_set_new(o, "error", j->error[0] ? json_string(j->error) : json_null());
    json_object_set_new(o, "files", files_json(j));
    return o;
}

static json_t *fetch(coord *c, job *j)
{
    (void)c;
    if (j->state != JOB_DONE)
        return fs_control_error("job %s is %s: nothing to fetch yet", j->id,
                                job_state_name(j->state));
    json_t *names = files_json(j), *files = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v)
    {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", j->dir, json_string_value(v));
        uint8_t *buf = NULL;
        size_t len = 0;
        fs_diag d = {0};
        if (fs_read_file(path, (size_t)1 << 30, &buf, &len, &d) != 0) {
            json_decref(names);
            json_decref(files);
            return fs_control_error("%s", d.msg);
        }
        size_t b64len = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = malloc(b64len);
        if (!b64) {
            free(buf);
            json_decref(names);
            json_decref(files);
            return fs_control_error("out of memory");
        }
        sodium_bin2base64(b64, b64len, buf, len, sodium_base64_VARIANT_ORIGINAL);
        json_array_append_new(files, json_pack("{s:s,s:s}", "name", json_string_value(v),
                                               "base64", b64));
        free(b64);
        free(buf);
    }
    json_decref(names);
    json_t *r = fs_control_ok();
    json_object_set_new(r, "files", files);
    return r;
}

json_t *coord_control(void *ud, const json_t *req)
{
    coord *c = ud;
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *id = json_string_value(json_object_get(req, "job"));
    if (!strcmp(cmd, "agents")) {
        json_t *r = fs_control_ok();
        json_object_set_new(r, "agents", agents_json(c));
        return r;
    }
    if (!strcmp(cmd, "jobs")) {
        json_t *arr = json_array();
        for (int i = 0; i < c->n_jobs; i++)
            json_array_append_new(arr, job_json(c->jobs[i], 0));
        json_t *r = fs_control_ok();
        json_object_set_new(r, "jobs", arr);
        return r;
    }
    if (!strcmp(cmd, "submit")) {
        const char *ini = json_string_value(json_object_get(req, "job_ini"));
        const char *source = json_string_value(json_object_get(req, "source"));
        if (!ini)
            return fs_control_error("submit: no job_ini");
        char jid[65];
        fs_diag d = {0};
        if (job_submit(c, ini, strlen(ini), source ? source : "job.ini", jid, &d) != 0)
            return fs_control_error("%s", d.msg);
        json_t *r = fs_control_ok();
        json_object_set_new(r, "job", json_string(jid));
        return r;
    }
    if (!strcmp(cmd, "reload")) {
        fs_diag d = {0};
        if (coord_reload(c, &d) != 0)
            return fs_control_error("reload rejected: %s", d.msg);
        json_t *r = fs_control_ok();
        json_object_set_new(r, "message", json_string("allow-list and configuration reloaded"));
        return r;
    }
    if (!strcmp(cmd, "status") || !strcmp(cmd, "cancel") || !strcmp(cmd, "fetch")) {
        if (!id)
            return fs_control_error("%s: which job? (\"job\" missing)", cmd);
        job *j = job_find(c, id);
        if (!j)
            return fs_control_error("no job '%s' (fedslimctl jobs lists them)", id);
        if (!strcmp(cmd, "status")) {
            json_t *r = fs_control_ok();
            json_object_set_new(r, "job", job_json(j, 1));
            return r;
        }
        if (!strcmp(cmd, "cancel")) {
            if (j->state == JOB_QUEUED) {
                j->state = JOB_CANCELED;
                snprintf(j->error, sizeof j->error, "canceled before it started");
            } else if (j->state == JOB_RUNNING) {
                j->cancel = 1;
            } else {
                return fs_control_error("job %s is already %s", id, job_state_name(j->state));
            }
            return fs_control_ok();
        }
        return fetch(c, j);
    }
    return fs_control_error("unknown command '%s'", cmd);
}
