/* fuzz_arch_json.c — libFuzzer target for the architecture JSON reader. Whatever it accepts must
 * pass validation and survive a round trip exactly (to_json, from_json, identical struct and
 * text). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fs_arch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fs_arch *a = calloc(1, sizeof *a);
    fs_arch *b = calloc(1, sizeof *b);
    fs_diag d;
    if (!a || !b) {
        goto out;
    }
    if (fs_arch_from_json(a, (const char *)data, size, &d) != 0) {
        goto out;
    }
    FS_ASSERT(fs_arch_validate(a, &d) == 0);
    char *j1 = NULL;
    char *j2 = NULL;
    FS_ASSERT(fs_arch_to_json(a, &j1, &d) == 0);
    FS_ASSERT(fs_arch_from_json(b, j1, strlen(j1), &d) == 0);
    FS_ASSERT(memcmp(a, b, sizeof *a) == 0);
    FS_ASSERT(fs_arch_to_json(b, &j2, &d) == 0);
    FS_ASSERT(strcmp(j1, j2) == 0);
    free(j1);
    free(j2);
out:
    free(a);
    free(b);
    return 0;
}
