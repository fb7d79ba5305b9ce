/* fuzz_safetensors.c — libFuzzer target for the safetensors reader (header length, JSON header,
 * entries, offsets) and, when the input parses, for everything a loader does next: tensor lookup,
 * float conversion, raw reads, metadata, and the fedslim.arch JSON if present. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fs_arch.h"
#include "fs_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fs_safetensors *st = NULL;
    fs_diag d;
    if (fs_safetensors_parse(&st, data, size, "fuzz", &d) != 0) {
        FS_ASSERT(st == NULL && d.msg[0] != '\0');
        return 0;
    }
    size_t total = 0;
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(st, i);
        /* the validated invariants a loader relies on */
        FS_ASSERT(t->offset == total);
        FS_ASSERT(t->nbytes == t->numel * fs_st_dtype_size(t->dtype));
        FS_ASSERT(fs_safetensors_find(st, t->name) == t);
        total += t->nbytes;
        if (t->numel <= 4096) {
            float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
            uint8_t *raw = malloc(t->nbytes ? t->nbytes : 1);
            if (f && raw) {
                (void)fs_safetensors_read_f32(st, t, f, t->numel, &d);
                FS_ASSERT(fs_safetensors_read_raw(st, t, raw, t->nbytes, &d) == 0);
                FS_ASSERT(t->nbytes == 0 || memcmp(raw, fs_safetensors_data(st, t), t->nbytes) == 0);
            }
            free(f);
            free(raw);
        }
    }
    for (size_t i = 0; i < fs_safetensors_meta_count(st); i++) {
        const char *k;
        const char *v;
        fs_safetensors_meta_at(st, i, &k, &v);
        FS_ASSERT(fs_safetensors_meta(st, k) == v);
    }
    const char *json = fs_safetensors_meta(st, "fedslim.arch");
    if (json) {
        fs_arch *a = malloc(sizeof *a);
        if (a) {
            (void)fs_arch_from_json(a, json, strlen(json), &d);
            free(a);
        }
    }
    fs_arch *inf = malloc(sizeof *inf);
    if (inf) {
        (void)fs_arch_infer(inf, st, 0, 8, 8, NULL, NULL, 0, &d);
        free(inf);
    }
    fs_safetensors_free(st);
    return 0;
}
