/*
 * config_agent.c — the agent's configuration schema (fs_agent_config). The [data] section lists
 * the only dataset paths the agent may open. Documented also in conf/agent.conf and
 * docs/configuration.md (a test checks that the key names agree).
 */
#include <stddef.h>
#include <string.h>

#include "config_internal.h"
#include "fs_config.h"

#define A(field) offsetof(fs_agent_config, field)

const char *const fs_agent_dataset_kinds[] = {"idx", "folder", "unlabeled", NULL};

static const fs_cfg_key agent_keys[] = {
    {.section = "agent",
     .key = "name",
     .type = FS_CFG_NAME,
     .flags = FS_CFG_REQUIRED,
     .offset = A(name),
     .doc = "this site's name, as the coordinator's allow-list and jobs use it"},
    {.section = "agent",
     .key = "coordinator",
     .type = FS_CFG_ENDPOINT,
     .flags = FS_CFG_REQUIRED,
     .offset = A(coordinator),
     .doc = "the coordinator's endpoint (tcp://HOST:PORT)"},
    {.section = "agent",
     .key = "coordinator_public_key",
     .type = FS_CFG_Z85KEY,
     .offset = A(coordinator_public_key),
     .doc = "the coordinator's CURVE public key (Z85, 40 characters): the agent talks to no other; "
            "this or coordinator_public_key_file is required"},
    {.section = "agent",
     .key = "coordinator_public_key_file",
     .type = FS_CFG_PATH,
     .offset = A(coordinator_public_key_file),
     .doc = "instead of coordinator_public_key: the coordinator's .pub file from fedslim keygen"},
    {.section = "agent",
     .key = "secret_key",
     .type = FS_CFG_PATH,
     .def = "${CREDENTIALS_DIRECTORY}/agent.key",
     .flags = FS_CFG_REQUIRED | FS_CFG_RESTART,
     .offset = A(secret_key),
     .doc = "file with this agent's CURVE secret key (mode 0600); default "
            "$CREDENTIALS_DIRECTORY/agent.key under systemd (LoadCredential=)"},
    {.section = "agent",
     .key = "public_key",
     .type = FS_CFG_Z85KEY,
     .flags = FS_CFG_RESTART,
     .offset = A(public_key),
     .doc = "this agent's own public key (Z85); if set, checked against secret_key at start"},
    {.section = "agent",
     .key = "state_dir",
     .type = FS_CFG_PATH,
     .def = "/var/lib/fedslim",
     .flags = FS_CFG_RESTART,
     .offset = A(state_dir),
     .doc = "cached teacher models and scratch files are written here and nowhere else"},
    {.section = "agent",
     .key = "threads",
     .type = FS_CFG_INT,
     .def = "1",
     .flags = FS_CFG_RESTART,
     .offset = A(threads),
     .min = 1,
     .max = 256,
     .doc = "compute threads for forward/backward passes (1..256)"},
    {.section = "agent",
     .key = "log_level",
     .type = FS_CFG_ENUM,
     .def = "info",
     .offset = A(log_level),
     .choices = fs_cfg_log_levels,
     .doc = "error, warning, notice, info or debug"},
    {.section = "data",
     .key = "*",
     .type = FS_CFG_ENTRIES,
     .offset = A(data),
     .min = 1,
     .max = FS_CFG_MAX_ENTRIES,
     .choices = fs_agent_dataset_kinds,
     .doc = "NAME = KIND:PATH, KIND idx (PATH = DIR/PREFIX of an IDX pair), folder (ImageFolder "
            "tree) or unlabeled (image directory); the only paths the agent opens"},
    FS_LIMITS_KEYS(fs_agent_config),
};

static int agent_validate(const void *obj, fs_diag *d) {
    const fs_agent_config *a = obj;
    if (!a->coordinator_public_key && !a->coordinator_public_key_file)
        return fs_diag_set(d, FS_EFORMAT,
                           "[agent] coordinator_public_key: missing required key "
                           "(or coordinator_public_key_file = the coordinator's .pub file)");
    if (a->coordinator_public_key && a->coordinator_public_key_file)
        return fs_diag_set(d, FS_EFORMAT,
                           "[agent] coordinator_public_key_file: give either "
                           "coordinator_public_key or coordinator_public_key_file, not both");
    return fs_limits_validate(&a->limits, d);
}

const fs_cfg_schema fs_agent_config_schema = {
    .name = "agent",
    .size = sizeof(fs_agent_config),
    .keys = agent_keys,
    .n_keys = sizeof agent_keys / sizeof agent_keys[0],
    .validate = agent_validate,
};

int fs_agent_config_load(const char *path, fs_agent_config *out, fs_diag *d) {
    return fs_cfg_load_file(&fs_agent_config_schema, path, out, d);
}

void fs_agent_config_free(fs_agent_config *c) { fs_cfg_free(&fs_agent_config_schema, c); }

const fs_cfg_entry *fs_agent_config_dataset(const fs_agent_config *c, const char *name) {
    for (size_t i = 0; i < c->data.n; i++) {
        if (strcmp(c->data.v[i].name, name) == 0)
            return &c->data.v[i];
    }
    return NULL;
}

int fs_agent_config_reload(const char *path, fs_agent_config *cur, fs_cfg_change_cb cb, void *ud,
                           fs_diag *d) {
    return fs_cfg_reload(&fs_agent_config_schema, path, cur, cb, ud, d);
}
