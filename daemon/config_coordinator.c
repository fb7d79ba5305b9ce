/*
 * config_coordinator.c — the coordinator's configuration schema (fs_coord_config). Every key is
 * documented here, in conf/coordinator.conf and in docs/configuration.md (a test checks that
 * the three agree on the key names).
 */
#include <stddef.h>

#include "config_internal.h"
#include "fs_config.h"

#define C(field) offsetof(fs_coord_config, field)

static const fs_cfg_key coord_keys[] = {
    {.section = "coordinator",
     .key = "listen",
     .type = FS_CFG_ENDPOINT,
     .flags = FS_CFG_REQUIRED | FS_CFG_RESTART,
     .offset = C(listen),
     .doc = "ZeroMQ endpoint the agents connect to (tcp://IP:PORT; CURVE is always on)"},
    {.section = "coordinator",
     .key = "secret_key",
     .type = FS_CFG_PATH,
     .def = "${CREDENTIALS_DIRECTORY}/coordinator.key",
     .flags = FS_CFG_REQUIRED | FS_CFG_RESTART,
     .offset = C(secret_key),
     .doc = "file with the coordinator's CURVE secret key (mode 0600); default "
            "$CREDENTIALS_DIRECTORY/coordinator.key under systemd (LoadCredential=)"},
    {.section = "coordinator",
     .key = "public_key",
     .type = FS_CFG_Z85KEY,
     .flags = FS_CFG_RESTART,
     .offset = C(public_key),
     .doc = "the coordinator's own public key (Z85); if set, checked against secret_key at start"},
    {.section = "coordinator",
     .key = "allow_list",
     .type = FS_CFG_PATH,
     .def = "/etc/fedslim/agents.allow",
     .offset = C(allow_list),
     .doc = "file of admitted agent public keys, one 'NAME Z85KEY' per line; re-read on reload"},
    {.section = "coordinator",
     .key = "state_dir",
     .type = FS_CFG_PATH,
     .def = "/var/lib/fedslim",
     .flags = FS_CFG_RESTART,
     .offset = C(state_dir),
     .doc = "checkpoints and job results are written here and nowhere else"},
    {.section = "coordinator",
     .key = "control_socket",
     .type = FS_CFG_PATH,
     .def = "/run/fedslim/control.sock",
     .flags = FS_CFG_RESTART,
     .offset = C(control_socket),
     .doc = "Unix socket for fedslimctl (mode 0660)"},
    {.section = "coordinator",
     .key = "control_group",
     .type = FS_CFG_NAME,
     .def = "fedslim",
     .flags = FS_CFG_RESTART,
     .offset = C(control_group),
     .doc = "group whose members may use the control socket"},
    {.section = "coordinator",
     .key = "threads",
     .type = FS_CFG_INT,
     .def = "1",
     .flags = FS_CFG_RESTART,
     .offset = C(threads),
     .min = 1,
     .max = 256,
     .doc = "compute threads for aggregation and latency measurement (1..256)"},
    {.section = "coordinator",
     .key = "log_level",
     .type = FS_CFG_ENUM,
     .def = "info",
     .offset = C(log_level),
     .choices = fs_cfg_log_levels,
     .doc = "error, warning, notice, info or debug"},
    FS_LIMITS_KEYS(fs_coord_config),
    {.section = "jobs",
     .key = "default_quorum",
     .type = FS_CFG_INT,
     .def = "0",
     .offset = C(default_quorum),
     .min = 0,
     .max = 100000,
     .doc = "agents a round needs when the job does not say; 0 = every agent the job names"},
    {.section = "jobs",
     .key = "step_timeout",
     .type = FS_CFG_DURATION,
     .def = "10min",
     .offset = C(step_timeout),
     .min = FS_USEC_S,
     .max = 7 * FS_USEC_DAY,
     .doc = "how long a round waits for agents before it goes on with the quorum (1s..7d)"},
    {.section = "jobs",
     .key = "heartbeat_interval",
     .type = FS_CFG_DURATION,
     .def = "5s",
     .offset = C(heartbeat_interval),
     .min = 100 * FS_USEC_MS,
     .max = 10 * FS_USEC_MIN,
     .doc = "heartbeat period; an agent silent for 3 periods counts as gone (100ms..10min)"},
    {.section = "jobs",
     .key = "checkpoint",
     .type = FS_CFG_BOOL,
     .def = "yes",
     .offset = C(checkpoint),
     .doc = "write a checkpoint after every round so a restarted coordinator resumes the job"},
};

static int coord_validate(const void *obj, fs_diag *d) {
    const fs_coord_config *c = obj;
    int rc = fs_limits_validate(&c->limits, d);
    if (rc != 0)
        return rc;
    if (c->heartbeat_interval >= c->step_timeout)
        return fs_diag_set(d, FS_EFORMAT,
                           "[jobs] heartbeat_interval: must be shorter than step_timeout");
    return 0;
}

const fs_cfg_schema fs_coord_config_schema = {
    .name = "coordinator",
    .size = sizeof(fs_coord_config),
    .keys = coord_keys,
    .n_keys = sizeof coord_keys / sizeof coord_keys[0],
    .validate = coord_validate,
};

int fs_coord_config_load(const char *path, fs_coord_config *out, fs_diag *d) {
    return fs_cfg_load_file(&fs_coord_config_schema, path, out, d);
}

void fs_coord_config_free(fs_coord_config *c) { fs_cfg_free(&fs_coord_config_schema, c); }

int fs_coord_config_reload(const char *path, fs_coord_config *cur, fs_cfg_change_cb cb, void *ud,
                           fs_diag *d) {
    return fs_cfg_reload(&fs_coord_config_schema, path, cur, cb, ud, d);
}
