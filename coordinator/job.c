/*
 * job.c — compression jobs at the coordinator: the job file, the queue, persistence under
 * STATE_DIR/jobs/ID/, admission of agents (teacher sent by digest), the federated transport that
 * the engine's requests travel through, checkpoints after every round, resumption, and export.
 *
 * Checkpoints (why they look like this): the pipeline is deterministic given the answers it gets,
 * so a resumed job re-runs it from the start and is served from the checkpoint until it reaches the
 * point where it stopped. Answers that are small (losses without gradients, BN moments, histograms,
 * evaluations, latency measurements) are appended to journal.bin, fsync'ed, after every round;
 * gradient rounds are not replayed but skipped: recovery-K.bin holds, after every step of the K-th
 * recovery, its trainable weights and optimizer state (written to a temporary file, fsync'ed and
 * renamed), and a resumed recovery continues from there.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "coord.h"
#include "fs_local.h"
#include "fs_log.h"
#include "fs_optim.h"
#include "fs_report.h"

#define JOURNAL_MAGIC 0x524A5346u   /* "FSJR" */
#define SNAP_MAGIC 0x4B435346u      /* "FSCK" */
#define CKPT_VERSION 1

static const char *const BN_CHOICES[] = {"frozen", "train", NULL};

/* Ceiling on the bytes a streamed reply may announce; the federated source checks every announced
 * tensor against the student, this only keeps the counters meaningful. */
#define FED_MAX_REPLY ((uint64_t)1 << 36)

#define J(f) offsetof(job_cfg, f)
static const fs_cfg_key JOB_KEYS[] = {
    {"job", "name", FS_CFG_NAME, "job", 0, J(name), 0, 0, 0, 0, NULL, "a short name for the job"},
    {"job", "teacher", FS_CFG_PATH, NULL, FS_CFG_REQUIRED, J(teacher), 0, 0, 0, 0, NULL,
     "the teacher model file on the coordinator"},
    {"job", "agents", FS_CFG_STRING, NULL, FS_CFG_REQUIRED, J(agents), 0, 0, 0, 0, NULL,
     "comma-separated agent names (as in the allow-list)"},
    {"job", "quorum", FS_CFG_INT, "0", 0, J(quorum), 0, MAX_JOB_AGENTS, 0, 0, NULL,
     "agents that must keep answering; 0 = all"},
    {"job", "data", FS_CFG_NAME, "train", 0, J(data), 0, 0, 0, 0, NULL,
     "the [data] entry of each agent to use"},
    {"job", "shots", FS_CFG_INT, "0", 0, J(shots), 0, 1 << 24, 0, 0, NULL,
     "few-shot images per agent (0 = all of the dataset)"},
    {"job", "per_class", FS_CFG_BOOL, "no", 0, J(per_class), 0, 0, 0, 0, NULL,
     "shots per class instead of in total"},
    {"job", "seed", FS_CFG_INT, "1", 0, J(seed), 0, INT32_MAX, 0, 0, NULL, "sampling seed"},
    {"job", "methods", FS_CFG_STRING, "drop-blocks", 0, J(methods), 0, 0, 0, 0, NULL,
     "compression methods"},
    {"job", "target", FS_CFG_STRING, "latency=0.75", 0, J(target), 0, 0, 0, 0, NULL,
     "latency=F, flops=F or params=F"},
    {"job", "family", FS_CFG_STRING, NULL, 0, J(family), 0, 0, 0, 0, NULL,
     "several targets, e.g. 0.9,0.8,0.7"},
    {"job", "drop", FS_CFG_STRING, NULL, 0, J(drop), 0, 0, 0, 0, NULL,
     "drop exactly these blocks (no scoring), e.g. layer1.1,layer2.2"},
    {"job", "recover", FS_CFG_STRING, "mimic", 0, J(recover), 0, 0, 0, 0, NULL,
     "none, bn, mimic, kd or ce"},
    {"job", "iterations", FS_CFG_INT, "2000", 0, J(iterations), 0, 10000000, 0, 0, NULL,
     "recovery rounds"},
    {"job", "score_iterations", FS_CFG_INT, "300", 0, J(score_iterations), 0, 10000000, 0, 0, NULL,
     "adaptor-training rounds per candidate block"},
    {"job", "batch", FS_CFG_INT, "64", 0, J(batch), 0, 4096, 0, 0, NULL,
     "global minibatch per round (0 = every sample)"},
    {"job", "max_batch", FS_CFG_INT, "64", 0, J(max_batch), 1, 4096, 0, 0, NULL,
     "images per forward pass at an agent"},
    {"job", "lr", FS_CFG_DOUBLE, "0", 0, J(lr), 0, 0, 0, 10, NULL,
     "learning rate (0 = the default: 0.02, 1e-4 for ce)"},
    {"job", "bn", FS_CFG_ENUM, "frozen", 0, J(bn), 0, 0, 0, 0, BN_CHOICES,
     "batch norm during recovery"},
    {"job", "augment", FS_CFG_INT, "2", 0, J(augment), 0, 64, 0, 0, NULL,
     "random-crop padding (+ flip); 0 = off"},
    {"job", "eval", FS_CFG_STRING, NULL, 0, J(eval), 0, 0, 0, 0, NULL,
     "public test data evaluated at the coordinator (idx:DIR/PREFIX ...)"},
    {"job", "step_timeout", FS_CFG_DURATION, "2min", 0, J(step_timeout), 1000, 86400000000LL, 0, 0,
     NULL, "how long a round waits for agents"},
    {"job", "admit_timeout", FS_CFG_DURATION, "2min", 0, J(admit_timeout), 1000, 86400000000LL, 0,
     0, NULL, "how long the job waits for its agents to connect and accept"},
    {"job", "stream_part", FS_CFG_SIZE, "256KiB", 0, J(stream_part), 0, 64 << 20, 0, 0, NULL,
     "gradient replies larger than this come in parts of this size, added as they arrive "
     "(0 = whole replies)"},
    {"job", "local_steps", FS_CFG_INT, "0", 0, J(local_steps), 0, 1000000, 0, 0, NULL,
     "recovery: 0 = FedSGD (one gradient round per step); E > 0 = FedAvg, each round E local "
     "SGD steps at every agent"},
    {"job", "momentum", FS_CFG_DOUBLE, "0.9", 0, J(momentum), 0, 0, 0, 1, NULL,
     "recovery SGD momentum (FedAvg: of the agents' local steps, reset every round)"},
    {"job", "server_lr", FS_CFG_DOUBLE, "1", 0, J(server_lr), 0, 0, 1e-6, 100, NULL,
     "FedAvg: the student moves by server_lr x the averaged delta"},
};
#undef J

static const fs_cfg_schema JOB_SCHEMA = {"job", sizeof(job_cfg), JOB_KEYS,
                                         sizeof JOB_KEYS / sizeof JOB_KEYS[0], NULL};

const char *job_state_name(int s)
{
    static const char *names[] = {"queued", "running", "done", "failed", "canceled"};
    return s >= 0 && s <= 4 ? names[s] : "?";
}

job *job_find(coord *c, const char *id)
{
    for (int i = 0; i < c->n_jobs; i++)
        if (!strcmp(c->jobs[i]->id, id))
            return c->jobs[i];
    return NULL;
}

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void job_free(job *j);

void jobs_free(coord *c)
{
    for (int i = 0; i < c->n_jobs; i++)
        job_free(c->jobs[i]);
    c->n_jobs = 0;
}

static void job_free(job *j)
{
    if (!j)
        return;
    fs_cfg_free(&JOB_SCHEMA, &j->cfg);
    free(j->ini);
    fs_free(j->blob);
    if (j->journal)
        fclose(j->journal);
    free(j);
}

/* Parses the job text into a new job (not yet queued). */
static int job_parse(coord *c, const char *ini, size_t len, const char *source, job **out,
                     fs_diag *d)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    int rc = fs_cfg_load_string(&JOB_SCHEMA, source, ini, len, &j->cfg, d);
    if (rc) {
        free(j);
        return rc;
    }
    j->ini = strndup(ini, len);
    fs_pipeline_config *pc = &j->pc;
    fs_pipeline_defaults(pc);
    if ((rc = fs_pipeline_parse_methods(&pc->methods, j->cfg.methods, d)) ||
        (rc = fs_pipeline_parse_recover(&pc->recover, j->cfg.recover, d)) ||
        (rc = fs_pipeline_parse_target(pc, j->cfg.target, d)) ||
        (j->cfg.family && (rc = fs_pipeline_parse_family(pc, j->cfg.family, d))) ||
        (j->cfg.drop && (rc = fs_pipeline_parse_drop(pc, j->cfg.drop, d)))) {
        fs_diag_prefix(d, "%s: [job]", source);
        job_free(j);
        return rc;
    }
    pc->recovery.iterations = j->cfg.iterations;
    pc->recovery.batch = (int)j->cfg.batch;
    pc->recovery.lr = j->cfg.lr > 0 ? (float)j->cfg.lr : fs_recover_default_lr(pc->recover);
    pc->recovery.seed = (uint64_t)j->cfg.seed;
    pc->recovery.pad = (int)j->cfg.augment;
    pc->recovery.hflip = j->cfg.augment > 0;
    pc->recovery.mode = j->cfg.bn == 1 ? FS_MODE_TRAIN_NOSTATS : FS_MODE_EVAL;
    pc->recovery.local_steps = (int)j->cfg.local_steps;
    pc->recovery.momentum = (float)j->cfg.momentum;
    pc->recovery.server_lr = (float)j->cfg.server_lr;
    pc->practise.iterations = j->cfg.score_iterations;
    pc->practise.batch = (int)j->cfg.batch;
    pc->practise.seed = (uint64_t)j->cfg.seed;
    /* the agents */
    char *list = strdup(j->cfg.agents), *save = NULL;
    for (char *t = strtok_r(list, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
        if (j->n_agents == MAX_JOB_AGENTS) {
            rc = fs_diag_set(d, FS_EINVAL, "%s: [job] agents: more than %d", source,
                             MAX_JOB_AGENTS);
            break;
        }
        if (!fs_link_server_session(c->link, t)) {
            rc = fs_diag_set(d, FS_EINVAL, "%s: [job] agents: '%s' is not in the allow-list %s",
                             source, t, c->cfg.allow_list);
            break;
        }
        for (int k = 0; k < j->n_agents; k++)
            if (!strcmp(j->agents[k].name, t))
                rc = fs_diag_set(d, FS_EINVAL, "%s: [job] agents: '%s' named twice", source, t);
        snprintf(j->agents[j->n_agents++].name, sizeof j->agents[0].name, "%s", t);
    }
    free(list);
    if (!rc && j->n_agents == 0)
        rc = fs_diag_set(d, FS_EINVAL, "%s: [job] agents: no agent named", source);
    if (!rc && j->cfg.quorum > j->n_agents)
        rc = fs_diag_set(d, FS_EINVAL, "%s: [job] quorum %lld is more than the %d agents", source,
                         (long long)j->cfg.quorum, j->n_agents);
    if (!rc && access(j->cfg.teacher, R_OK) != 0)
        rc = fs_diag_errno(d, FS_EINVAL, "%s: [job] teacher %s", source, j->cfg.teacher);
    if (rc) {
        job_free(j);
        return rc;
    }
    *out = j;
    return 0;
}

static void job_save_state(coord *c, job *j)
{
    (void)c;
    json_t *s = json_pack("{s:s,s:i,s:f,s:f,s:f,s:s,s:s}", "id", j->id, "state", j->state,
                          "submitted", j->submitted, "started", j->started, "finished",
                          j->finished, "phase", j->phase, "error", j->error);
    char *text = json_dumps(s, 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/state.json", j->dir);
    fs_diag d = {0};
    if (text && fs_write_file_atomic(path, text, strlen(text), &d) != 0)
        fs_log_kv(FS_LOG_ERR, "cannot save the job state", "JOB", j->id, "REASON", d.msg, NULL);
    free(text);
    json_decref(s);
}

static int job_add(coord *c, job *j, fs_diag *d)
{
    if (c->n_jobs == MAX_JOBS)
        return fs_diag_set(d, FS_EINVAL, "too many jobs (%d); remove old ones from %s/jobs",
                           MAX_JOBS, c->cfg.state_dir);
    c->jobs[c->n_jobs++] = j;
    return 0;
}

int job_submit(coord *c, const char *ini, size_t len, const char *source, char *id, fs_diag *d)
{
    job *j = NULL;
    int rc = job_parse(c, ini, len, source, &j, d);
    if (rc)
        return rc;
    /* id: the name, made unique with a counter */
    snprintf(j->id, sizeof j->id, "%s", j->cfg.name);
    for (int k = 2; job_find(c, j->id); k++)
        snprintf(j->id, sizeof j->id, "%.50s-%d", j->cfg.name, k);
    snprintf(j->dir, sizeof j->dir, "%s/jobs/%s", c->cfg.state_dir, j->id);
    if (mkdir(j->dir, 0750) != 0 && errno != EEXIST) {
        rc = fs_diag_errno(d, FS_EIO, "%s", j->dir);
        job_free(j);
        return rc;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/job.ini", j->dir);
    if ((rc = fs_write_file_atomic(path, ini, len, d)) != 0 || (rc = job_add(c, j, d)) != 0) {
        job_free(j);
        return rc;
    }
    j->submitted = unix_now();
    snprintf(j->phase, sizeof j->phase, "queued");
    job_save_state(c, j);
    snprintf(id, 65, "%s", j->id);
    fs_log_kv(FS_LOG_INFO, "job submitted", "JOB", j->id, NULL);
    return 0;
}

void jobs_load(coord *c)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/jobs", c->cfg.state_dir);
    DIR *dh = opendir(dir);
    if (!dh)
        return;
    struct dirent *e;
    char *names[MAX_JOBS];
    int n = 0;
    while ((e = readdir(dh)) && n < MAX_JOBS)
        if (e->d_name[0] != '.')
            names[n++] = strdup(e->d_name);
    closedir(dh);
    for (int i = 0; i < n; i++) {
        char path[4400];
        uint8_t *ini = NULL, *st = NULL;
        size_t il = 0, sl = 0;
        fs_diag d = {0};
        job *j = NULL;
        snprintf(path, sizeof path, "%s/%s/job.ini", dir, names[i]);
        if (fs_read_file(path, FS_CFG_MAX_FILE, &ini, &il, &d) == 0 &&
            job_parse(c, (const char *)ini, il, path, &j, &d) == 0) {
            snprintf(j->id, sizeof j->id, "%s", names[i]);
            snprintf(j->dir, sizeof j->dir, "%.3000s/%.64s", dir, names[i]);
            snprintf(path, sizeof path, "%s/%s/state.json", dir, names[i]);
            if (fs_read_file(path, 1 << 20, &st, &sl, &d) == 0) {
                json_error_t err;
                json_t *s = json_loadb((const char *)st, sl, 0, &err);
                json_int_t state = 0;
                const char *phase = "", *error = "";
                double sub = 0, sta = 0, fin = 0;
                if (s && json_unpack(s, "{s:I,s:F,s:F,s:F,s:s,s:s}", "state", &state, "submitted",
                                     &sub, "started", &sta, "finished", &fin, "phase", &phase,
                                     "error", &error) == 0) {
                    j->state = (int)state;
                    j->submitted = sub;
                    j->started = sta;
                    j->finished = fin;
                    snprintf(j->phase, sizeof j->phase, "%s", phase);
                    snprintf(j->error, sizeof j->error, "%s", error);
                }
                json_decref(s);
            }
            if (j->state == JOB_RUNNING)
                j->state = JOB_QUEUED;      /* resumed from its checkpoint when its turn comes */
            if (job_add(c, j, &d) != 0)
                job_free(j);
            else
                fs_log_kv(FS_LOG_INFO, "job loaded", "JOB", j->id, "STATE",
                          job_state_name(j->state), NULL);
        } else {
            fs_log_kv(FS_LOG_WARNING, "ignoring a job directory", "PATH", path, "REASON", d.msg,
                      NULL);
        }
        free(ini);
        free(st);
        free(names[i]);
    }
}

/* ---- agents in a job ------------------------------------------------------------------------ */

static job_agent *job_agent_find(job *j, const char *name)
{
    for (int i = 0; i < j->n_agents; i++)
        if (!strcmp(j->agents[i].name, name))
            return &j->agents[i];
    return NULL;
}

static int job_active(const job *j)
{
    int n = 0;
    for (int i = 0; i < j->n_agents; i++)
        n += j->agents[i].state == JA_ACTIVE;
    return n;
}

static int job_quorum(const job *j)
{
    return j->cfg.quorum > 0 ? (int)j->cfg.quorum : j->n_agents;
}

void job_agent_left(coord *c, job *j, const char *agent, const char *why)
{
    job_agent *ja = job_agent_find(j, agent);
    if (!ja || ja->state == JA_LEFT || ja->state == JA_DECLINED)
        return;
    ja->state = JA_LEFT;
    snprintf(ja->left_phase, sizeof ja->left_phase, "%s", j->phase);
    ja->left_round = j->round;
    snprintf(ja->reason, sizeof ja->reason, "%s", why);
    agent_rec *a = coord_agent(c, agent);
    if (a)
        a->job[0] = '\0';
    char r[32];
    snprintf(r, sizeof r, "%u", j->round);
    fs_log_kv(FS_LOG_WARNING, "agent left the job", "JOB", j->id, "AGENT", agent, "ROUND", r,
              "PHASE", j->phase, "REASON", why, NULL);
}

void job_on_agent_message(coord *c, const char *agent, const fs_wire_msg *m)
{
    job *j = c->running;
    if (!j || strcmp(m->job, j->id))
        return;
    job_agent *ja = job_agent_find(j, agent);
    if (!ja)
        return;
    switch (m->type) {
    case FS_MSG_MODEL_REQ: {
        fs_wire_msg chunk;
        fs_diag d = {0};
        if (fs_model_make_chunk(m, j->blob, j->blob_len, j->digest, 1u << 20, &chunk, &d) == 0) {
            snprintf(chunk.job, sizeof chunk.job, "%s", j->id);
            coord_send(c, agent, &chunk);
        }
        break;
    }
    case FS_MSG_JOB_ACCEPT:
        if (ja->state == JA_OFFERED) {
            ja->state = JA_ACTIVE;
            long long n = 0;
            if (sscanf(m->u.job_reply.reason, "%lld samples", &n) == 1 && n > 0)
                ja->samples = n;
            fs_log_kv(FS_LOG_INFO, "agent joined the job", "JOB", j->id, "AGENT", agent, "INFO",
                      m->u.job_reply.reason, NULL);
        }
        break;
    case FS_MSG_JOB_DECLINE:
        if (ja->state == JA_OFFERED || ja->state == JA_ACTIVE) {
            ja->state = JA_DECLINED;
            snprintf(ja->reason, sizeof ja->reason, "declined: %.200s", m->u.job_reply.reason);
            fs_log_kv(FS_LOG_WARNING, "agent declined the job", "JOB", j->id, "AGENT", agent,
                      "REASON", m->u.job_reply.reason, NULL);
        }
        break;
    case FS_MSG_COMPUTE_REPLY:
    case FS_MSG_COMPUTE_HEAD:
    case FS_MSG_COMPUTE_PART:
        if (c->ex.active && c->ex.j == j && m->round == c->ex.round && ja->state == JA_ACTIVE &&
            !ja->replied) {
            /* whole replies and streamed parts take the same path into the sums (fs_fed_feed):
               each part is checked against its head, added, and freed by the caller */
            fs_diag e = {0};
            int rc = fs_fed_feed(&ja->inflight, agent, m, c->ex.fn, c->ex.ud, FED_MAX_REPLY, &e);
            if (rc == FS_FED_MORE)
                break;
            ja->replied = 1;
            if (rc == 0) {
                ja->rounds++;
                break;
            }
            char why[300];
            snprintf(why, sizeof why, "bad reply: %.280s", e.msg);
            fs_log_kv(FS_LOG_ERR, "reply rejected", "JOB", j->id, "AGENT", agent, "TYPE",
                      fs_msg_type_name(m->type), "REASON", e.msg, NULL);
            job_agent_left(c, j, agent, why);
            if (!ja->inflight.touched) {
                c->ex.failed = FS_EPROTO;   /* the sum is now incomplete: the round fails */
                c->ex.err = e;
            }   /* else: exchange() repeats the round without this agent (FS_EAGAIN) */
        }
        break;
    case FS_MSG_ERROR:
        if (ja->state == JA_ACTIVE && !strcmp(m->u.error.code, "diverged") && c->ex.active &&
            m->round == c->ex.round) {
            /* a property of the weights, not of the agent: the round fails, the agent stays */
            ja->replied = 1;
            c->ex.failed = FS_EDIVERGED;
            fs_diag_set(&c->ex.err, FS_EDIVERGED, "agent %s: %s", agent, m->u.error.text);
        } else if (ja->state == JA_ACTIVE && m->round && c->ex.active && m->round != c->ex.round) {
            fs_log_kv(FS_LOG_NOTICE, "late error about an earlier round ignored", "JOB", j->id,
                      "AGENT", agent, "REASON", m->u.error.text, NULL);
        } else if (ja->state == JA_ACTIVE) {
            char why[300];
            snprintf(why, sizeof why, "error %.60s: %.220s", m->u.error.code, m->u.error.text);
            job_agent_left(c, j, agent, why);
        }
        break;
    default:
        break;
    }
}

/* ---- the federated transport ------------------------------------------------------------------ */

void job_resend_round(coord *c, const char *agent)
{
    job *j = c->running;
    job_agent *ja = j ? job_agent_find(j, agent) : NULL;
    if (!ja || ja->state != JA_ACTIVE || !c->ex.active || ja->replied || !c->ex.req)
        return;
    /* the request may have been lost with the old connection; a duplicate answer is ignored */
    coord_send(c, agent, c->ex.req);
}

typedef struct {
    coord *c;
    job *j;
} tr_ctx;

/* Sends req to every active agent of the job from one shared copy of its tensor bytes
 * (fs_fed_broadcast); agents it cannot reach leave the job. */
static void broadcast(coord *c, job *j, const fs_wire_msg *req)
{
    fs_link_peer *peers = calloc((size_t)j->n_agents + 1, sizeof *peers);
    int *idx = calloc((size_t)j->n_agents + 1, sizeof *idx), *rcs = calloc((size_t)j->n_agents + 1,
                                                                          sizeof *rcs);
    size_t n = 0;
    fs_diag d = {0};
    int rc = peers && idx && rcs ? 0 : FS_ENOMEM;
    for (int i = 0; rc == 0 && i < j->n_agents; i++) {
        agent_rec *a = coord_agent(c, j->agents[i].name);
        if (j->agents[i].state != JA_ACTIVE)
            continue;
        if (!a || !a->connected)
            job_agent_left(c, j, j->agents[i].name, "unreachable");
        else {
            peers[n] = a->peer;
            idx[n++] = i;
        }
    }
    if (rc == 0)
        rc = fs_fed_broadcast(c->link, peers, n, req, rcs, &d);
    if (rc) {
        /* no memory for the shared copy: the copying send still works */
        for (int i = 0; i < j->n_agents; i++)
            if (j->agents[i].state == JA_ACTIVE &&
                coord_send(c, j->agents[i].name, (fs_wire_msg *)req) != 0)
                job_agent_left(c, j, j->agents[i].name, "unreachable");
    } else {
        for (size_t k = 0; k < n; k++) {
            if (!rcs[k])
                continue;
            fs_log_kv(FS_LOG_WARNING, "send failed", "AGENT", j->agents[idx[k]].name, "TYPE",
                      fs_msg_type_name(req->type), "REASON", fs_strerror(rcs[k]), NULL);
            job_agent_left(c, j, j->agents[idx[k]].name, "unreachable");
        }
    }
    free(peers);
    free(idx);
    free(rcs);
}

static int exchange(void *ud, fs_wire_msg *req, fs_fed_reply_fn fn, void *cb_ud, fs_diag *d)
{
    tr_ctx *t = ud;
    coord *c = t->c;
    job *j = t->j;
    if (c->stopping)
        return fs_diag_set(d, FS_ECANCELED, "the coordinator is stopping");
    if (j->cancel)
        return fs_diag_set(d, FS_ECANCELED, "canceled");
    if (job_active(j) < job_quorum(j))
        return fs_diag_set(d, FS_ETIMEDOUT, "only %d agent%s left, below the quorum of %d",
                           job_active(j), job_active(j) == 1 ? "" : "s", job_quorum(j));
    j->round++;
    fs_link_server_expect_all(c->link, j->id, j->round, 0);
    snprintf(req->job, sizeof req->job, "%s", j->id);
    req->round = j->round;
    req->step = 0;
    c->ex.active = 1;
    c->ex.j = j;
    c->ex.round = j->round;
    c->ex.fn = fn;
    c->ex.ud = cb_ud;
    c->ex.req = req;
    c->ex.failed = 0;
    memset(&c->ex.err, 0, sizeof c->ex.err);
    for (int i = 0; i < j->n_agents; i++) {
        j->agents[i].replied = 0;
        fs_fed_inflight_reset(&j->agents[i].inflight);
    }
    broadcast(c, j, req);
    /* replies are added into the sums as they arrive (fn), so an agent that times out simply
       contributes nothing to this round and is dropped from the job */
    uint64_t deadline = fs_now_usec() + j->cfg.step_timeout;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < j->n_agents; i++)
            pending += j->agents[i].state == JA_ACTIVE && !j->agents[i].replied;
        /* a failed round still waits for the other agents' answers, so that none of them
           arrives late into the next round */
        if (!pending || c->stopping || j->cancel)
            break;
        uint64_t now = fs_now_usec();
        if (now >= deadline) {
            for (int i = 0; i < j->n_agents; i++)
                if (j->agents[i].state == JA_ACTIVE && !j->agents[i].replied)
                    job_agent_left(c, j, j->agents[i].name, "timed out");
            break;
        }
        coord_pump(c, (int)((deadline - now) / 1000 + 1));
    }
    c->ex.active = 0;
    /* an agent that left after part of its streamed reply was added spoiled the sums (they cannot
       be taken out again): the source repeats the round without it */
    char spoiled[FS_WIRE_NAME_MAX + 1] = "";
    for (int i = 0; i < j->n_agents; i++) {
        job_agent *ja = &j->agents[i];
        if (ja->inflight.touched && ja->inflight.state != 2 && !spoiled[0])
            snprintf(spoiled, sizeof spoiled, "%s", ja->name);
        fs_fed_inflight_reset(&ja->inflight);
    }
    if (c->stopping)
        return fs_diag_set(d, FS_ECANCELED, "the coordinator is stopping");
    if (j->cancel)
        return fs_diag_set(d, FS_ECANCELED, "canceled");
    if (c->ex.failed)
        return fs_diag_set(d, c->ex.failed == FS_EDIVERGED ? FS_EDIVERGED : FS_EPROTO,
                           "round %u: %s", j->round, c->ex.err.msg);
    if (job_active(j) < job_quorum(j))
        return fs_diag_set(d, FS_ETIMEDOUT, "round %u: only %d agent%s answered, below the quorum "
                           "of %d", j->round, job_active(j), job_active(j) == 1 ? "" : "s",
                           job_quorum(j));
    if (spoiled[0]) {
        char r[32];
        snprintf(r, sizeof r, "%u", j->round);
        fs_log_kv(FS_LOG_WARNING, "round repeated: an agent left in the middle of its reply", "JOB",
                  j->id, "ROUND", r, "AGENT", spoiled, NULL);
        return fs_diag_set(d, FS_EAGAIN, "round %u: agent %s left in the middle of its reply",
                           j->round, spoiled);
    }
    return 0;
}

static int64_t total_samples(void *ud)
{
    tr_ctx *t = ud;
    int64_t n = 0;
    for (int i = 0; i < t->j->n_agents; i++)
        if (t->j->agents[i].state == JA_ACTIVE)
            n += t->j->agents[i].samples;
    return n > 0 ? n : 1;
}

/* ---- checkpoints: the journal of small answers and recovery snapshots ------------------------ */

enum { JR_LOSS = 1, JR_MOMENTS = 2, JR_HIST = 3, JR_EVAL = 4, JR_LATENCY = 5 };

typedef struct {
    uint32_t magic, kind, version, pad;
    uint64_t fingerprint, len;
} jr_header;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t model_fp(uint64_t h, const fs_model *m)
{
    h = fnv(h, &m->n_params, sizeof m->n_params);
    return fnv(h, m->param_block, m->param_floats * sizeof(float));
}

static int journal_open(job *j, fs_diag *d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/journal.bin", j->dir);
    j->journal = fopen(path, "a+b");
    if (!j->journal)
        return fs_diag_errno(d, FS_EIO, "%s", path);
    /* count the complete records; a torn last record (a crash mid-write) is cut off */
    rewind(j->journal);
    long good = 0, n = 0;
    jr_header h;
    while (fread(&h, sizeof h, 1, j->journal) == 1 && h.magic == JOURNAL_MAGIC &&
           h.version == CKPT_VERSION && h.len < (1u << 30) &&
           fseek(j->journal, (long)h.len, SEEK_CUR) == 0 && ftell(j->journal) >= 0) {
        long end = ftell(j->journal);
        fseek(j->journal, 0, SEEK_END);
        if (ftell(j->journal) < end)
            break;
        fseek(j->journal, end, SEEK_SET);
        good = end;
        n++;
    }
    if (ftruncate(fileno(j->journal), good) != 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot cut a torn record", path);
    j->journal_n = n;
    j->journal_pos = 0;
    rewind(j->journal);
    return 0;
}

/* 1: replayed into payload; 0: not in the journal (compute it live); <0: the journal disagrees */
static int journal_replay(job *j, uint32_t kind, uint64_t fp, void *payload, size_t len,
                          fs_diag *d)
{
    if (j->journal_pos >= j->journal_n)
        return 0;
    jr_header h;
    if (fread(&h, sizeof h, 1, j->journal) != 1 || h.kind != kind || h.fingerprint != fp ||
        h.len != len || fread(payload, 1, len, j->journal) != len)
        return fs_diag_set(d, FS_EFORMAT, "%s/journal.bin: record %ld does not match the job's "
                           "request (the job file, teacher or build changed?)", j->dir,
                           j->journal_pos);
    j->journal_pos++;
    return 1;
}

static int journal_append(job *j, uint32_t kind, uint64_t fp, const void *payload, size_t len,
                          fs_diag *d)
{
    jr_header h = {JOURNAL_MAGIC, kind, CKPT_VERSION, 0, fp, len};
    if (fseek(j->journal, 0, SEEK_END) != 0 || fwrite(&h, sizeof h, 1, j->journal) != 1 ||
        fwrite(payload, 1, len, j->journal) != len || fflush(j->journal) != 0 ||
        fsync(fileno(j->journal)) != 0)
        return fs_diag_errno(d, FS_EIO, "%s/journal.bin: cannot append", j->dir);
    j->journal_pos = ++j->journal_n;
    return 0;
}

typedef struct {
    fs_source *inner;
    job *j;
} jsrc;

static int js_set_student(void *self, const fs_model *s, fs_diag *d)
{
    jsrc *x = self;
    return fs_source_set_student(x->inner, s, d);
}

static int js_loss(void *self, fs_model *s, const fs_loss_req *q, fs_loss_sum *out, fs_diag *d)
{
    jsrc *x = self;
    if (q->want_grad)
        return fs_source_loss(x->inner, s, q, out, d);
    uint64_t fp = model_fp(fnv(0xcbf29ce484222325ull, q, sizeof *q), s);
    struct {
        double loss;
        int64_t count;
    } p;
    int rc = journal_replay(x->j, JR_LOSS, fp, &p, sizeof p, d);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        if ((rc = fs_source_loss(x->inner, s, q, out, d)) != 0)
            return rc;
        p.loss = out->loss_sum;
        p.count = out->count;
        return journal_append(x->j, JR_LOSS, fp, &p, sizeof p, d);
    }
    out->loss_sum = p.loss;
    out->count = p.count;
    return 0;
}

static size_t input_channels(const fs_model *s, const int *nodes, int n)
{
    size_t ch = 0;
    for (int i = 0; i < n; i++) {
        const fs_node *nd = &s->nodes[nodes[i]];
        ch += (size_t)(nd->in0 >= 0 ? s->nodes[nd->in0].C : s->arch.in_c);
    }
    return ch;
}

static int js_moments(void *self, fs_model *s, const int *nodes, int n, double *sum,
                      double *sumsq, int64_t *count, fs_diag *d)
{
    jsrc *x = self;
    size_t ch = input_channels(s, nodes, n);
    size_t len = ch * 2 * sizeof(double) + (size_t)n * sizeof(int64_t);
    uint64_t fp = model_fp(fnv(0xcbf29ce484222325ull, nodes, (size_t)n * sizeof(int)), s);
    uint8_t *p = malloc(len);
    if (!p)
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    int rc = journal_replay(x->j, JR_MOMENTS, fp, p, len, d);
    if (rc == 0) {
        rc = fs_source_moments(x->inner, s, nodes, n, sum, sumsq, count, d);
        if (rc == 0) {
            memcpy(p, sum, ch * sizeof(double));
            memcpy(p + ch * sizeof(double), sumsq, ch * sizeof(double));
            memcpy(p + 2 * ch * sizeof(double), count, (size_t)n * sizeof(int64_t));
            rc = journal_append(x->j, JR_MOMENTS, fp, p, len, d);
        }
    } else if (rc == 1) {
        memcpy(sum, p, ch * sizeof(double));
        memcpy(sumsq, p + ch * sizeof(double), ch * sizeof(double));
        memcpy(count, p + 2 * ch * sizeof(double), (size_t)n * sizeof(int64_t));
        rc = 0;
    }
    free(p);
    return rc;
}

static int js_histogram(void *self, fs_model *s, const int *nodes, int n, const float *lo,
                        const float *hi, int bins, int64_t *counts, fs_diag *d)
{
    jsrc *x = self;
    size_t len = (size_t)n * (size_t)bins * sizeof(int64_t);
    uint64_t fp = fnv(0xcbf29ce484222325ull, nodes, (size_t)n * sizeof(int));
    fp = fnv(fp, lo, (size_t)n * sizeof(float));
    fp = model_fp(fnv(fp, hi, (size_t)n * sizeof(float)), s);
    int rc = journal_replay(x->j, JR_HIST, fp, counts, len, d);
    if (rc == 0) {
        rc = fs_source_histogram(x->inner, s, nodes, n, lo, hi, bins, counts, d);
        if (rc == 0)
            rc = journal_append(x->j, JR_HIST, fp, counts, len, d);
    }
    return rc < 0 ? rc : 0;
}

static int js_evaluate(void *self, fs_model *s, fs_eval_sum *out, fs_diag *d)
{
    jsrc *x = self;
    uint64_t fp = model_fp(0xcbf29ce484222325ull, s);
    int rc = journal_replay(x->j, JR_EVAL, fp, out, sizeof *out, d);
    if (rc == 0) {
        rc = fs_source_evaluate(x->inner, s, out, d);
        if (rc == 0)
            rc = journal_append(x->j, JR_EVAL, fp, out, sizeof *out, d);
    }
    return rc < 0 ? rc : 0;
}

/* FedAvg rounds are not journaled: like gradient rounds, a resumed recovery skips them through
 * its snapshot (recovery-K.bin). */
static int js_local_update(void *self, fs_model *s, const fs_update_req *q, fs_update_sum *out,
                           fs_diag *d)
{
    jsrc *x = self;
    return fs_source_local_update(x->inner, s, q, out, d);
}

static int64_t js_count(void *self)
{
    jsrc *x = self;
    return fs_source_count(x->inner);
}

static void js_free(void *self)
{
    free(self);
}

static const fs_source_ops JOURNAL_OPS = {js_set_student, js_loss,  js_moments, js_histogram,
                                          js_evaluate,    js_count, js_free,    js_local_update};

static int journaled_latency(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d)
{
    job *j = ud;
    int64_t key[3] = {batch, reps, fs_model_flops(m)};
    uint64_t fp = fnv(0xcbf29ce484222325ull, key, sizeof key);
    int rc = journal_replay(j, JR_LATENCY, fp, sec, sizeof *sec, d);
    if (rc == 0) {
        if ((rc = fs_latency(sec, m, batch, reps, d)) == 0)
            rc = journal_append(j, JR_LATENCY, fp, sec, sizeof *sec, d);
    }
    return rc < 0 ? rc : 0;
}

/* recovery-K.bin: header, trainable weights (parameter order), optimizer state */
typedef struct {
    uint32_t magic, version;
    int64_t ordinal, done, total, n_weights, n_state, steps;
} snap_header;

static size_t trainable_floats(const fs_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad && m->params[i].trainable)
            n += m->params[i].numel;
    return n;
}

static int hook_resume(void *ud, fs_model *s, fs_optimizer *opt, long total, long *start,
                       fs_diag *d)
{
    job *j = ud;
    int k = j->recover_ordinal++;
    char path[4200];
    snprintf(path, sizeof path, "%s/recovery-%d.bin", j->dir, k);
    *start = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    fs_diag ignore = {0};
    if (fs_read_file(path, (size_t)1 << 33, &buf, &len, &ignore) != 0)
        return 0;   /* no snapshot: this recovery starts fresh */
    snap_header h;
    size_t nstate = 0;
    float *state = fs_optimizer_state(opt, &nstate);
    size_t nw = trainable_floats(s);
    int rc = 0;
    if (len < sizeof h || (memcpy(&h, buf, sizeof h), h.magic != SNAP_MAGIC) ||
        h.version != CKPT_VERSION || h.ordinal != k || h.total != total ||
        h.n_weights != (int64_t)nw || h.n_state != (int64_t)nstate ||
        len != sizeof h + (nw + nstate) * sizeof(float)) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: snapshot does not match this job's recovery %d",
                         path, k);
    } else {
        const float *w = (const float *)(buf + sizeof h);
        for (int i = 0; i < s->n_params; i++) {
            fs_param *p = &s->params[i];
            if (!p->grad || !p->trainable)
                continue;
            memcpy(p->data, w, p->numel * sizeof(float));
            w += p->numel;
        }
        memcpy(state, w, nstate * sizeof(float));
        fs_optimizer_set_steps(opt, (long)h.steps);
        *start = (long)h.done;
        char r[64];
        snprintf(r, sizeof r, "%d at step %lld/%lld", k, (long long)h.done, (long long)total);
        fs_log_kv(FS_LOG_INFO, "recovery resumed from its checkpoint", "JOB", j->id, "RECOVERY", r,
                  NULL);
    }
    free(buf);
    return rc;
}

static int hook_checkpoint(void *ud, fs_model *s, fs_optimizer *opt, long done, long total,
                           double loss, fs_diag *d)
{
    (void)loss;
    job *j = ud;
    int k = j->recover_ordinal - 1;
    size_t nstate = 0;
    float *state = fs_optimizer_state(opt, &nstate);
    size_t nw = trainable_floats(s);
    size_t len = sizeof(snap_header) + (nw + nstate) * sizeof(float);
    uint8_t *buf = malloc(len);
    if (!buf)
        return fs_diag_set(d, FS_ENOMEM, "out of memory for a checkpoint");
    snap_header h = {SNAP_MAGIC, CKPT_VERSION, k, done, total, (int64_t)nw, (int64_t)nstate,
                     fs_optimizer_steps(opt)};
    memcpy(buf, &h, sizeof h);
    float *w = (float *)(buf + sizeof h);
    for (int i = 0; i < s->n_params; i++) {
        fs_param *p = &s->params[i];
        if (!p->grad || !p->trainable)
            continue;
        memcpy(w, p->data, p->numel * sizeof(float));
        w += p->numel;
    }
    memcpy(w, state, nstate * sizeof(float));
    char path[4200];
    snprintf(path, sizeof path, "%s/recovery-%d.bin", j->dir, k);
    int rc = fs_write_file_atomic(path, buf, len, d);
    free(buf);
    return rc;
}

/* ---- running a job ---------------------------------------------------------------------------- */

typedef struct {
    coord *c;
    job *j;
} prog_ctx;

static void progress(void *ud, const char *phase, long it, long total, double loss, double eta)
{
    prog_ctx *p = ud;
    job *j = p->j;
    snprintf(j->phase, sizeof j->phase, "%s", phase);
    j->it = it;
    j->total = total;
    j->loss = loss;
    j->eta = eta;
    coord_status(p->c, 0);
}

static void send_offer(coord *c, job *j, const char *agent)
{
    fs_kv kv[8];
    memset(kv, 0, sizeof kv);
    size_t n = 0;
    snprintf(kv[n].key, sizeof kv[n].key, "data");
    kv[n].kind = FS_KV_STR;
    kv[n++].s = j->cfg.data;
    const char *ik[4] = {"shots", "per_class", "seed", "max_batch"};
    int64_t iv[4] = {j->cfg.shots, j->cfg.per_class, j->cfg.seed, j->cfg.max_batch};
    for (int k = 0; k < 4; k++) {
        snprintf(kv[n].key, sizeof kv[n].key, "%s", ik[k]);
        kv[n].kind = FS_KV_INT;
        kv[n++].i = iv[k];
    }
    fs_wire_msg m;
    memset(&m, 0, sizeof m);
    m.type = FS_MSG_JOB_OFFER;
    snprintf(m.job, sizeof m.job, "%s", j->id);
    m.u.job_offer.config.items = kv;
    m.u.job_offer.config.n = n;
    memcpy(m.u.job_offer.model_digest, j->digest, sizeof j->digest);
    m.u.job_offer.model_bytes = j->blob_len;
    coord_send(c, agent, &m);
}

static int admit(coord *c, job *j, fs_diag *d)
{
    snprintf(j->phase, sizeof j->phase, "admit");
    fs_link_server_expect_all(c->link, j->id, 0, 0);
    int offered[MAX_JOB_AGENTS] = {0};
    for (int i = 0; i < j->n_agents; i++) {
        j->agents[i].state = JA_OFFERED;
        j->agents[i].reason[0] = '\0';
    }
    uint64_t deadline = fs_now_usec() + j->cfg.admit_timeout;
    for (;;) {
        int waiting = 0;
        for (int i = 0; i < j->n_agents; i++) {
            job_agent *ja = &j->agents[i];
            agent_rec *a = coord_agent(c, ja->name);
            if (ja->state != JA_OFFERED)
                continue;
            waiting++;
            if (a && a->connected && !offered[i]) {
                snprintf(a->job, sizeof a->job, "%s", j->id);
                send_offer(c, j, ja->name);
                offered[i] = 1;
            } else if (!a || !a->connected) {
                offered[i] = 0;     /* (re)offer when it connects */
            }
        }
        if (!waiting || c->stopping || j->cancel)
            break;
        uint64_t now = fs_now_usec();
        if (now >= deadline) {
            for (int i = 0; i < j->n_agents; i++)
                if (j->agents[i].state == JA_OFFERED)
                    job_agent_left(c, j, j->agents[i].name,
                                   offered[i] ? "did not accept in time" : "not connected");
            break;
        }
        coord_pump(c, (int)((deadline - now) / 1000 + 1));
        coord_status(c, 0);
    }
    if (c->stopping)
        return fs_diag_set(d, FS_ECANCELED, "the coordinator is stopping");
    if (j->cancel)
        return fs_diag_set(d, FS_ECANCELED, "canceled");
    if (job_active(j) < job_quorum(j)) {
        char who[512] = "";
        for (int i = 0; i < j->n_agents; i++)
            if (j->agents[i].state != JA_ACTIVE)
                snprintf(who + strlen(who), sizeof who - strlen(who), "%s%s (%s)",
                         who[0] ? ", " : "", j->agents[i].name, j->agents[i].reason);
        return fs_diag_set(d, FS_ETIMEDOUT, "only %d of %d agents joined (quorum %d): %s",
                           job_active(j), j->n_agents, job_quorum(j), who);
    }
    return 0;
}

static int eval_local(fs_report_eval *e, fs_model *teacher, fs_model *m, const fs_dataset *ds,
                      fs_diag *d)
{
    memset(e, 0, sizeof *e);
    if (!ds)
        return 0;
    fs_local *L = NULL;
    int rc = fs_local_create(&L, teacher, ds, 256, 0, d);
    if (rc)
        return rc;
    fs_eval_sum s;
    rc = fs_local_evaluate(L, m, &s, d);
    fs_local_free(L);
    if (rc == 0) {
        e->have = 1;
        e->n = s.n;
        e->correct = s.correct;
        e->agree = s.agree;
        e->loss_sum = s.loss_sum;
    }
    return rc;
}

static int export_results(coord *c, job *j, fs_model *teacher, fs_pipeline_output *out,
                          fs_diag *d)
{
    (void)c;
    fs_dataset *test = NULL;
    int rc = 0;
    if (j->cfg.eval) {
        fs_data_opts o = {.channels = teacher->arch.in_c, .height = teacher->arch.in_h,
                          .width = teacher->arch.in_w, .resize = 1};
        if ((rc = fs_dataset_open(&test, j->cfg.eval, &o, d)) != 0)
            return rc;
    }
    snprintf(j->phase, sizeof j->phase, "export");
    fs_report_eval teval;
    fs_report_model models[FS_MAX_TARGETS];
    char paths[FS_MAX_TARGETS][4200];
    memset(models, 0, sizeof models);
    if ((rc = eval_local(&teval, teacher, teacher, test, d)) != 0)
        goto done;
    for (int i = 0; i < out->n_results; i++) {
        if (out->n_results > 1)
            snprintf(paths[i], sizeof paths[i], "%s/student-%.2f.safetensors", j->dir,
                     (double)out->results[i].target);
        else
            snprintf(paths[i], sizeof paths[i], "%s/student.safetensors", j->dir);
        if ((rc = fs_model_save(out->results[i].model, paths[i], d)) != 0)
            goto done;
        struct stat st;
        models[i].path = strrchr(paths[i], '/') + 1;
        models[i].bytes = stat(paths[i], &st) == 0 ? (int64_t)st.st_size : -1;
        if ((rc = eval_local(&models[i].eval, teacher, out->results[i].model, test, d)) != 0)
            goto done;
    }
    json_t *rep = fs_report_json(&j->pc, out, j->cfg.teacher, &teval, models);
    json_object_set_new(rep, "job", json_string(j->id));
    json_object_set_new(rep, "rounds", json_integer(j->round));
    json_t *agents = json_array();
    for (int i = 0; i < j->n_agents; i++) {
        job_agent *ja = &j->agents[i];
        json_t *a = json_pack("{s:s,s:s,s:I,s:I}", "name", ja->name, "state",
                              ja->state == JA_ACTIVE ? "finished"
                              : ja->state == JA_LEFT ? "left"
                                                     : "declined",
                              "samples", (json_int_t)ja->samples, "rounds",
                              (json_int_t)ja->rounds);
        if (ja->state != JA_ACTIVE) {
            json_object_set_new(a, "left_phase", json_string(ja->left_phase));
            json_object_set_new(a, "left_round", json_integer(ja->left_round));
            json_object_set_new(a, "reason", json_string(ja->reason));
        }
        json_array_append_new(agents, a);
    }
    json_object_set_new(rep, "agents", agents);
    if (out->n_results > 0) {
        const fs_pipeline_result *r0 = &out->results[0];
        if (teval.have)
            json_object_set_new(rep, "teacher_accuracy",
                                json_real((double)teval.correct / (double)teval.n));
        if (models[0].eval.have)
            json_object_set_new(rep, "student_accuracy",
                                json_real((double)models[0].eval.correct /
                                          (double)models[0].eval.n));
        json_object_set_new(rep, "latency_ratio",
                            json_real(out->latency_b64 > 0 ? r0->latency_b64 / out->latency_b64
                                                           : 0));
    }
    char *text = json_dumps(rep, JSON_INDENT(2));
    json_decref(rep);
    char path[4200];
    snprintf(path, sizeof path, "%s/report.json", j->dir);
    rc = text ? fs_write_file_atomic(path, text, strlen(text), d)
              : fs_diag_set(d, FS_ENOMEM, "out of memory");
    free(text);
    if (rc == 0) {
        char *svg = fs_report_svg(out, &teval, models);
        snprintf(path, sizeof path, "%s/plot.svg", j->dir);
        rc = svg ? fs_write_file_atomic(path, svg, strlen(svg), d)
                 : fs_diag_set(d, FS_ENOMEM, "out of memory");
        free(svg);
    }
done:
    fs_dataset_free(test);
    return rc;
}

static void remove_checkpoints(job *j)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/journal.bin", j->dir);
    unlink(path);
    for (int k = 0; k < 4096; k++) {
        snprintf(path, sizeof path, "%s/recovery-%d.bin", j->dir, k);
        if (unlink(path) != 0 && errno == ENOENT && k > j->recover_ordinal)
            break;
    }
}

static int job_run(coord *c, job *j, fs_diag *d)
{
    fs_model *teacher = NULL;
    fs_source *fed = NULL, *src = NULL;
    fs_pipeline_output *out = calloc(1, sizeof *out);
    int rc = out ? 0 : fs_diag_set(d, FS_ENOMEM, "out of memory");
    size_t len = 0;
    if (rc == 0)
        rc = fs_read_file(j->cfg.teacher, (size_t)4 << 30, &j->blob, &len, d);
    if (rc == 0) {
        j->blob_len = len;
        fs_wire_digest(j->blob, len, j->digest);
        rc = fs_model_load(&teacher, j->cfg.teacher, d);
    }
    if (rc == 0)
        rc = journal_open(j, d);
    if (rc == 0 && j->journal_n > 0)
        fs_log_kv(FS_LOG_INFO, "resuming from the checkpoint", "JOB", j->id, NULL);
    if (rc == 0)
        rc = admit(c, j, d);
    tr_ctx tctx = {c, j};
    fs_fed_transport t = {exchange, total_samples, &tctx, (size_t)j->cfg.stream_part};
    if (rc == 0)
        rc = fs_fed_source(&fed, &t, d);
    if (rc == 0) {
        jsrc *x = calloc(1, sizeof *x);
        src = calloc(1, sizeof *src);
        if (!x || !src) {
            free(x);
            rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        } else {
            x->inner = fed;
            x->j = j;
            src->ops = &JOURNAL_OPS;
            src->self = x;
        }
    }
    fs_recover_hooks hooks = {hook_resume, hook_checkpoint, j};
    if (rc == 0) {
        j->pc.practise.hooks = &hooks;
        j->pc.practise.latency = journaled_latency;
        j->pc.practise.latency_ud = j;
        j->recover_ordinal = 0;
        prog_ctx pctx = {c, j};
        rc = fs_pipeline_run(&j->pc, teacher, src, progress, &pctx, out, d);
    }
    if (rc == 0)
        rc = export_results(c, j, teacher, out, d);
    if (out)
        fs_pipeline_output_free(out);
    free(out);
    fs_source_free(src);
    fs_source_free(fed);
    fs_model_free(teacher);
    fs_free(j->blob);
    j->blob = NULL;
    if (j->journal) {
        fclose(j->journal);
        j->journal = NULL;
    }
    return rc;
}

void job_run_next(coord *c)
{
    job *j = NULL;
    for (int i = 0; i < c->n_jobs && !j; i++)
        if (c->jobs[i]->state == JOB_QUEUED)
            j = c->jobs[i];
    if (!j)
        return;
    c->running = j;
    j->state = JOB_RUNNING;
    if (!j->started)
        j->started = unix_now();
    j->round = 0;
    j->error[0] = '\0';
    job_save_state(c, j);
    fs_log_kv(FS_LOG_INFO, "job started", "JOB", j->id, NULL);
    coord_status(c, 1);
    fs_diag d = {0};
    int rc = job_run(c, j, &d);
    if (c->stopping && !j->cancel) {
        /* stays "running" on disk: a restarted coordinator resumes it from its checkpoint */
        fs_log_kv(FS_LOG_INFO, "job interrupted; it resumes when the coordinator restarts", "JOB",
                  j->id, NULL);
        c->running = NULL;
        return;
    }
    j->finished = unix_now();
    if (rc == 0) {
        j->state = JOB_DONE;
        snprintf(j->phase, sizeof j->phase, "done");
        remove_checkpoints(j);
        fs_log_kv(FS_LOG_INFO, "job done", "JOB", j->id, "DIR", j->dir, NULL);
    } else {
        j->state = j->cancel ? JOB_CANCELED : JOB_FAILED;
        snprintf(j->error, sizeof j->error, "%s", fs_diag_text(&d, rc));
        fs_log_kv(FS_LOG_ERR, j->cancel ? "job canceled" : "job failed", "JOB", j->id, "REASON",
                  j->error, NULL);
    }
    job_save_state(c, j);
    for (int i = 0; i < j->n_agents; i++) {
        agent_rec *a = coord_agent(c, j->agents[i].name);
        if (!a || !a->connected)
            continue;
        a->job[0] = '\0';
        fs_wire_msg bye;
        memset(&bye, 0, sizeof bye);
        bye.type = FS_MSG_BYE;
        snprintf(bye.job, sizeof bye.job, "%s", j->id);
        snprintf(bye.u.bye.reason, sizeof bye.u.bye.reason, "job %s", job_state_name(j->state));
        coord_send(c, a->name, &bye);
    }
    c->running = NULL;
    coord_status(c, 1);
}
