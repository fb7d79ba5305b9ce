/*
 * fuzz_allowlist.c — libFuzzer target for the allow-list parser. Oracle besides the sanitizers:
 * an accepted list has unique names and keys, and printing it back parses to the same entries.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fs_allow_entry *e = NULL, *e2 = NULL;
    size_t n = 0, n2 = 0;
    fs_diag d;
    if (fs_allowlist_parse((const char *)data, size, "fuzz", &e, &n, &d) != 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(e[i].name, e[j].name) || !memcmp(e[i].key, e[j].key, FS_KEY_BYTES))
                abort();
    size_t cap = n * 110 + 1;
    char *text = malloc(cap);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        char z[41];
        fs_key_to_z85(e[i].key, z);
        len += (size_t)snprintf(text + len, cap - len, "%s %s\n", e[i].name, z);
    }
    if (fs_allowlist_parse(text, len, "again", &e2, &n2, &d) != 0 || n2 != n)
        abort();
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, e2[i].name) || memcmp(e[i].key, e2[i].key, FS_KEY_BYTES))
            abort();
    free(text);
    free(e);
    free(e2);
    return 0;
}
