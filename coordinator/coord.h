/*
 * coord.h — fedslim-coordinator's internal state, shared by its source files (main.c: loop and
 * agent messages; job.c: jobs, the federated transport, checkpoints; ctl.c: the control commands).
 * Thread: everything here belongs to the loop thread.
 */
#ifndef FS_COORD_H
#define FS_COORD_H

#include <jansson.h>

#include "fs_config.h"
#include "fs_control.h"
#include "fs_daemon.h"
#include "fs_fed.h"
#include "fs_link.h"
#include "fs_pipeline.h"

#define MAX_AGENTS 256
#define MAX_JOBS 256
#define MAX_JOB_AGENTS 64

typedef struct {
    char name[65];
    int connected;
    fs_link_peer peer;
    uint64_t n_samples, n_labeled;
    uint64_t classes[1024];
    size_t n_classes;
    double last_seen;               /* fs_now_sec(), 0 = never */
    char job[65];
} agent_rec;

enum { JA_OFFERED = 0, JA_ACTIVE = 1, JA_LEFT = 2, JA_DECLINED = 3 };

typedef struct {
    char name[65];
    int state;
    char left_phase[64];
    uint32_t left_round;
    char reason[256];
    int64_t samples;
    int64_t rounds;                 /* compute rounds answered */
    int replied;                    /* in the current exchange */
    fs_fed_inflight inflight;       /* its reply of the current exchange (streamed: in parts) */
} job_agent;

enum { JOB_QUEUED = 0, JOB_RUNNING = 1, JOB_DONE = 2, JOB_FAILED = 3, JOB_CANCELED = 4 };

/* The job file's settings (schema in job.c). */
typedef struct {
    char *name, *teacher, *agents, *data, *methods, *target, *family, *recover, *eval, *drop;
    int bn;                         /* 0 frozen, 1 train */
    int64_t quorum, shots, seed, iterations, score_iterations, batch, augment, max_batch;
    bool per_class;
    double lr;
    uint64_t step_timeout, admit_timeout;
    uint64_t stream_part;           /* bytes per COMPUTE_PART of gradient replies; 0 = whole */
    int64_t local_steps;            /* recovery: 0 FedSGD, E > 0 FedAvg with E local steps */
    double momentum, server_lr;     /* recovery: SGD momentum (FedAvg: local); FedAvg step size */
} job_cfg;

typedef struct job {
    char id[65];
    int state;
    char *ini;                      /* the job file's text */
    job_cfg cfg;
    fs_pipeline_config pc;
    char dir[4096];
    double submitted, started, finished;    /* unix seconds, 0 = not yet */
    char phase[64];
    uint32_t round;                 /* compute rounds so far */
    long it, total;
    double loss, eta;
    int n_agents;
    job_agent agents[MAX_JOB_AGENTS];
    char error[512];
    int cancel;
    /* teacher, as sent by digest */
    uint8_t *blob;
    size_t blob_len;
    uint8_t digest[FS_WIRE_DIGEST_BYTES];
    /* journal / checkpoints */
    FILE *journal;
    long journal_pos;               /* records replayed so far */
    long journal_n;                 /* records in the file at start */
    int recover_ordinal;
} job;

typedef struct coord {
    fs_coord_config cfg;
    const char *config_path;
    void *zctx;
    fs_link_server *link;
    fs_control *ctl;
    fs_watchdog wd;
    int stopping;
    int n_agents;
    agent_rec agents[MAX_AGENTS];
    int n_jobs;
    job *jobs[MAX_JOBS];
    job *running;
    /* the exchange in progress (one at a time) */
    struct {
        int active;
        job *j;
        uint32_t round;
        fs_fed_reply_fn fn;
        void *ud;
        fs_wire_msg *req;           /* the request of this round (resent after a reconnect) */
        int failed;
        fs_diag err;
    } ex;
    double last_status;
    FILE *record;                   /* FS_RECORD_MESSAGES: every message agents send */
} coord;

/* main.c */
agent_rec *coord_agent(coord *c, const char *name);
int coord_pump(coord *c, int timeout_ms);
int coord_send(coord *c, const char *agent, fs_wire_msg *m);
void coord_status(coord *c, int force);
/* SIGHUP's work: allow-list and configuration; the old ones stay on error. 0 or the error. */
int coord_reload(coord *c, fs_diag *d);

/* job.c */
int job_submit(coord *c, const char *ini, size_t len, const char *source, char *id, fs_diag *d);
void job_run_next(coord *c);
void jobs_load(coord *c);
void jobs_free(coord *c);
job *job_find(coord *c, const char *id);
const char *job_state_name(int s);
void job_on_agent_message(coord *c, const char *agent, const fs_wire_msg *m);
void job_agent_left(coord *c, job *j, const char *agent, const char *why);
void job_resend_round(coord *c, const char *agent);

/* ctl.c */
json_t *coord_control(void *ud, const json_t *req);

#endif
