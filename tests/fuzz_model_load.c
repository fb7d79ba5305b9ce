/* fuzz_model_load.c — libFuzzer target for fs_model_load past the container: the tensors checked
 * against the architecture, int8 layers (I8 weights, scales, zero points) and N:M layers (kept
 * values, packed positions) decoded into dense weights. Inputs whose architecture would be large
 * (any width, class count or image side above 64) are skipped: their cost is allocation, not
 * parsing. A loaded model must save and load back to the same parameters. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_model.h"
#include "fs_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int small_arch(const fs_arch *a) {
    int ok = a->in_h <= 64 && a->in_w <= 64 && a->num_classes <= 64 && a->stem_width <= 64;
    for (int s = 0; s < a->n_stages; s++) {
        ok &= a->stages[s].width <= 64 && a->stages[s].n_blocks <= 4;
        for (int b = 0; b < a->stages[s].n_blocks; b++)
            ok &= a->stages[s].blocks[b].mid[0] <= 64 && a->stages[s].blocks[b].mid[1] <= 64;
    }
    for (int i = 0; i < a->n_hidden; i++)
        ok &= a->hidden[i] <= 64 || (i == 0 && a->hidden[i] <= 256);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[64], back[64];
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/fuzz_model_load.%d", (int)getpid());
        snprintf(back, sizeof back, "/tmp/fuzz_model_load.%d.back", (int)getpid());
    }
    fs_diag d;
    fs_safetensors *st = NULL;
    if (fs_safetensors_parse(&st, data, size, "fuzz", &d) != 0)
        return 0;
    const char *json = fs_safetensors_meta(st, "fedslim.arch");
    fs_arch a;
    int small = json && fs_arch_from_json(&a, json, strlen(json), &d) == 0 && small_arch(&a);
    fs_safetensors_free(st);
    if (!small)
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    size_t wrote = fwrite(data, 1, size, f);
    if (fclose(f) != 0 || wrote != size)
        return 0;
    fs_model *m = NULL;
    if (fs_model_load(&m, path, &d) != 0) {
        FS_ASSERT(m == NULL && d.msg[0] != '\0');
        unlink(path);
        return 0;
    }
    /* what loaded saves (N:M groups may be padded) and reloads to the same dense weights */
    fs_model *m2 = NULL;
    if (fs_model_save(m, back, &d) == 0) {
        FS_ASSERT(fs_model_load(&m2, back, &d) == 0);
        FS_ASSERT(m2->n_params == m->n_params);
        for (int i = 0; i < m->n_params; i++) {
            const fs_param *p = &m->params[i], *q = &m2->params[i];
            FS_ASSERT(p->numel == q->numel);
            for (size_t k = 0; k < p->numel; k++)
                FS_ASSERT(p->data[k] == q->data[k] ||
                          (p->data[k] != p->data[k] && q->data[k] != q->data[k]));
        }
        fs_model_free(m2);
        unlink(back);
    }
    fs_model_free(m);
    unlink(path);
    return 0;
}
