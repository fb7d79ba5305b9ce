/* fuzz_config.c — libFuzzer target for the INI configuration loader: random text through both
 * daemon schemas (fs_cfg_load_string, no temporary files). Any crash, leak, sanitizer report or a
 * success that leaves an invalid struct is a bug. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_config.h"

/* A loaded configuration written out and loaded again must be equal to itself. */
static void roundtrip(const fs_cfg_schema *s, const void *obj) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return;
    if (fs_cfg_write(s, obj, f) != 0)
        abort();
    fclose(f);
    void *again = calloc(1, s->size);
    fs_diag d = {0};
    if (!again || fs_cfg_load_string(s, "rt", text, len, again, &d) != 0 ||
        fs_cfg_diff(s, obj, again, NULL, NULL) != 0)
        abort();
    fs_cfg_free(s, again);
    free(again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fs_diag d = {0};
    fs_coord_config c;
    if (fs_cfg_load_string(&fs_coord_config_schema, "fuzz", (const char *)data, size, &c, &d) ==
        0) {
        /* invariants of a loaded coordinator config */
        if (!c.listen || !c.secret_key || c.threads < 1 || c.heartbeat_interval >= c.step_timeout ||
            c.limits.max_message < c.limits.chunk_size)
            abort();
        if (fs_cfg_diff(&fs_coord_config_schema, &c, &c, NULL, NULL) != 0)
            abort();
        roundtrip(&fs_coord_config_schema, &c);
        fs_coord_config_free(&c);
    } else if (d.msg[0] == '\0') {
        abort(); /* every error explains itself */
    }
    memset(&d, 0, sizeof d);
    fs_agent_config a;
    if (fs_cfg_load_string(&fs_agent_config_schema, "fuzz", (const char *)data, size, &a, &d) ==
        0) {
        if (!a.name || !a.coordinator || a.data.n < 1 ||
            !a.coordinator_public_key == !a.coordinator_public_key_file ||
            (a.coordinator_public_key && strlen(a.coordinator_public_key) != 40))
            abort();
        for (size_t i = 0; i < a.data.n; i++) {
            if (a.data.v[i].path[0] != '/' || a.data.v[i].kind < 0 || a.data.v[i].kind > 2)
                abort();
        }
        roundtrip(&fs_agent_config_schema, &a);
        fs_agent_config_free(&a);
    } else if (d.msg[0] == '\0') {
        abort();
    }
    return 0;
}
