/*
 * io.c — a model to and from safetensors: the architecture as JSON under
 * __metadata__["fedslim.arch"], tensors under their torchvision names. Loading checks every tensor
 * against the architecture and names the file and tensor in each error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_model.h"
#include "fs_safetensors.h"

#define ARCH_KEY "fedslim.arch"

static int ignored_tensor(const char *name)
{
    const char *suffix = ".num_batches_tracked";
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && !strcmp(name + n - k, suffix);
}

static int fill_from(fs_model *m, const fs_safetensors *st, const char *path, fs_diag *d)
{
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        const fs_st_tensor *t = fs_safetensors_find(st, p->name);
        if (!t)
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is missing (the architecture needs "
                               "it)", path, p->name);
        int same = t->ndim == p->ndim;
        for (int k = 0; same && k < p->ndim; k++)
            same = t->shape[k] == p->shape[k];
        if (!same) {
            char want[96] = "", got[96] = "";
            for (int k = 0; k < p->ndim; k++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", k ? "," : "",
                         (long long)p->shape[k]);
            for (int k = 0; k < t->ndim; k++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", k ? "," : "",
                         (long long)t->shape[k]);
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' has shape [%s], the architecture "
                               "needs [%s]", path, p->name, got, want);
        }
        int rc = fs_safetensors_read_f32(st, t, p->data, p->numel, d);
        if (rc)
            return rc;
    }
    size_t n = fs_safetensors_count(st);
    for (size_t i = 0; i < n; i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(st, i);
        if (!ignored_tensor(t->name) && !fs_model_param(m, t->name))
            return fs_diag_set(d, FS_EFORMAT, "%s: tensor '%s' is not part of the architecture",
                               path, t->name);
    }
    return 0;
}

int fs_model_from_state_dict(fs_model **out, const fs_arch *a, const char *path, fs_diag *d)
{
    *out = NULL;
    fs_safetensors *st = NULL;
    fs_model *m = NULL;
    int rc = fs_safetensors_open(&st, path, d);
    if (rc)
        return rc;
    if ((rc = fs_model_build(&m, a, NULL, 0, d)) != 0) {
        fs_diag_prefix(d, "%s", path);
        goto done;
    }
    if ((rc = fill_from(m, st, path, d)) != 0)
        goto done;
    *out = m;
    m = NULL;
done:
    fs_model_free(m);
    fs_safetensors_free(st);
    return rc;
}

int fs_model_load(fs_model **out, const char *path, fs_diag *d)
{
    *out = NULL;
    fs_safetensors *st = NULL;
    fs_model *m = NULL;
    int rc = fs_safetensors_open(&st, path, d);
    if (rc)
        return rc;
    const char *json = fs_safetensors_meta(st, ARCH_KEY);
    fs_arch a;
    if (!json) {
        rc = fs_diag_set(d, FS_EFORMAT, "%s: no fedslim architecture (__metadata__ has no '%s'); "
                         "a PyTorch state_dict must first be converted with 'fedslim import'",
                         path, ARCH_KEY);
        goto done;
    }
    if ((rc = fs_arch_from_json(&a, json, strlen(json), d)) != 0) {
        fs_diag_prefix(d, "%s: %s", path, ARCH_KEY);
        goto done;
    }
    if ((rc = fs_model_build(&m, &a, NULL, 0, d)) != 0) {
        fs_diag_prefix(d, "%s", path);
        goto done;
    }
    if ((rc = fill_from(m, st, path, d)) != 0)
        goto done;
    *out = m;
    m = NULL;
done:
    fs_model_free(m);
    fs_safetensors_free(st);
    return rc;
}

int fs_model_save(const fs_model *m, const char *path, fs_diag *d)
{
    fs_safetensors_writer *w = NULL;
    char *json = NULL;
    int rc = fs_safetensors_writer_new(&w, d);
    if (rc)
        return rc;
    if ((rc = fs_arch_to_json(&m->arch, &json, d)) != 0)
        goto done;
    if ((rc = fs_safetensors_writer_meta(w, ARCH_KEY, json, d)) != 0)
        goto done;
    if ((rc = fs_safetensors_writer_meta(w, "format", "pt", d)) != 0)
        goto done;
    for (int i = 0; i < m->n_params; i++) {
        const fs_param *p = &m->params[i];
        rc = fs_safetensors_writer_add(w, p->name, FS_ST_F32, p->ndim, p->shape, p->data, d);
        if (rc)
            goto done;
    }
    rc = fs_safetensors_writer_write(w, path, d);
done:
    free(json);
    fs_safetensors_writer_free(w);
    return rc;
}
