/*
 * practise.c — block dropping with recoverability (PRACTISE, ALGORITHMS.md a.2–a.10): candidate
 * blocks, adaptor placement, adaptor training by feature mimicking with the rest frozen, the score
 * R / latency saved, and the greedy choice for a latency target. The final student is rebuilt from
 * the teacher's weights without the adaptors (they only measure recoverability).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_compress.h"

void fs_practise_defaults(fs_practise_config *c)
{
    memset(c, 0, sizeof *c);
    c->iterations = 300;
    c->batch = 64;
    c->lr = 0.02f;
    c->momentum = 0.9f;
    c->weight_decay = 1e-4f;
    c->seed = 1;
    c->latency_batch = 64;
    c->latency_reps = 20;
}

static int measure_latency(const fs_practise_config *c, double *sec, fs_model *m, fs_diag *d)
{
    if (c->latency)
        return c->latency(c->latency_ud, sec, m, c->latency_batch, c->latency_reps, d);
    return fs_latency(sec, m, c->latency_batch, c->latency_reps, d);
}

static void block_name(char *buf, size_t n, int stage, int index)
{
    snprintf(buf, n, "layer%d.%d", stage + 1, index);
}

int fs_arch_drop_blocks(fs_arch *out, const fs_arch *teacher, const char *const *names, int n,
                        fs_diag *d)
{
    if (teacher->type != FS_ARCH_RESNET)
        return fs_diag_set(d, FS_EINVAL, "block dropping needs a ResNet");
    int found[64] = {0};
    if (n > 64)
        return fs_diag_set(d, FS_EINVAL, "too many blocks to drop");
    *out = *teacher;
    for (int s = 0; s < teacher->n_stages; s++) {
        fs_stage_arch *st = &out->stages[s];
        st->n_blocks = 0;
        for (int i = 0; i < teacher->stages[s].n_blocks; i++) {
            const fs_block_arch *b = &teacher->stages[s].blocks[i];
            char nm[32];
            block_name(nm, sizeof nm, s, i);
            int drop = 0;
            for (int k = 0; k < n; k++)
                if (!strcmp(names[k], nm)) {
                    drop = 1;
                    found[k] = 1;
                }
            if (drop) {
                if (b->downsample)
                    return fs_diag_set(d, FS_EINVAL, "block %s has no identity shortcut (it "
                                       "changes shape) and cannot be dropped", nm);
                continue;
            }
            st->blocks[st->n_blocks] = *b;
            snprintf(st->blocks[st->n_blocks].origin, sizeof b->origin, "%s", nm);
            st->n_blocks++;
        }
    }
    for (int k = 0; k < n; k++)
        if (!found[k])
            return fs_diag_set(d, FS_EINVAL, "no block named '%s' in the teacher", names[k]);
    return fs_arch_validate(out, d);
}

int fs_student_from_teacher(fs_model **out, const fs_arch *arch, const fs_model *teacher,
                            const fs_adaptor_spec *adaptors, int n_adaptors, fs_diag *d)
{
    fs_model *m = NULL;
    int rc = fs_model_build(&m, arch, adaptors, n_adaptors, d);
    if (rc)
        return rc;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (strstr(p->name, ".adaptor_"))
            continue;
        char src[128];
        snprintf(src, sizeof src, "%s", p->name);
        int s, b, used = 0;
        if (sscanf(p->name, "layer%d.%d.%n", &s, &b, &used) == 2 && used > 0 && s >= 1 &&
            s <= arch->n_stages && b >= 0 && b < arch->stages[s - 1].n_blocks) {
            const char *origin = arch->stages[s - 1].blocks[b].origin;
            if (origin[0])
                snprintf(src, sizeof src, "%s.%s", origin, p->name + used);
        }
        const fs_param *t = fs_model_param_c(teacher, src);
        if (!t || t->numel != p->numel) {
            fs_model_free(m);
            return fs_diag_set(d, FS_EINVAL, "student tensor '%s': teacher has no matching '%s'",
                               p->name, src);
        }
        memcpy(p->data, t->data, p->numel * sizeof(float));
    }
    *out = m;
    return 0;
}

/* Adaptor positions around the hole left by dropping teacher block (stage s, index b), in the
 * student's numbering (ALGORITHMS.md a.3). */
static int place_adaptors(const fs_arch *student, int s, int b, fs_adaptor_spec *ad, int max)
{
    int n = 0;
    const char *last = student->block == FS_BLOCK_BASIC ? "conv2" : "conv3";
    const fs_stage_arch *st = &student->stages[s];
#define ADD(pos_, ...)                                                                             \
    do {                                                                                           \
        if (n < max) {                                                                             \
            snprintf(ad[n].conv, sizeof ad[n].conv, __VA_ARGS__);                                  \
            ad[n].pos = (pos_);                                                                    \
            n++;                                                                                   \
        }                                                                                          \
    } while (0)
    if (st->n_blocks > 0 && st->blocks[0].downsample)
        ADD(FS_ADAPTOR_AFTER, "layer%d.0.downsample.0", s + 1);
    for (int i = 0; i < b && i < st->n_blocks; i++)
        ADD(FS_ADAPTOR_AFTER, "layer%d.%d.%s", s + 1, i, last);
    if (b == 0 && s == 0)
        ADD(FS_ADAPTOR_AFTER, "conv1");     /* the stream enters from the stem */
    for (int i = b; i < st->n_blocks; i++)
        ADD(FS_ADAPTOR_PRE, "layer%d.%d.conv1", s + 1, i);
    if (s + 1 < student->n_stages && student->stages[s + 1].n_blocks > 0) {
        ADD(FS_ADAPTOR_PRE, "layer%d.0.conv1", s + 2);
        if (student->stages[s + 1].blocks[0].downsample)
            ADD(FS_ADAPTOR_PRE, "layer%d.0.downsample.0", s + 2);
    }
#undef ADD
    return n;
}

int fs_practise_score(fs_source *src, fs_model *teacher, const fs_practise_config *c,
                      fs_block_score *scores, int *n_scores, fs_progress_fn progress, void *ud,
                      fs_diag *d)
{
    *n_scores = 0;
    double lat_t;
    int rc = measure_latency(c, &lat_t, teacher, d);
    if (rc)
        return rc;
    for (int k = 0; k < teacher->n_blocks; k++) {
        const fs_block_info *bi = &teacher->blocks[k];
        if (!bi->identity)
            continue;
        const char *names[1] = {bi->name};
        fs_arch sa;
        if ((rc = fs_arch_drop_blocks(&sa, &teacher->arch, names, 1, d)) != 0)
            return rc;
        fs_block_score *sc = &scores[(*n_scores)++];
        memset(sc, 0, sizeof *sc);
        snprintf(sc->name, sizeof sc->name, "%s", bi->name);

        /* latency saved, measured on the plain student */
        fs_model *plain = NULL;
        if ((rc = fs_student_from_teacher(&plain, &sa, teacher, NULL, 0, d)) != 0)
            return rc;
        double lat_s, lat_t2;
        rc = measure_latency(c, &lat_s, plain, d);
        fs_model_free(plain);
        if (rc == 0)
            rc = measure_latency(c, &lat_t2, teacher, d);
        if (rc)
            return rc;
        if (lat_t2 < lat_t)
            lat_t = lat_t2;
        sc->latency_saved_pct = lat_s;   /* the student's latency until the loop ends */

        /* recoverability: adaptors trained by mimicking, everything else frozen */
        fs_adaptor_spec ad[FS_MAX_BLOCKS + 8];
        int nad = place_adaptors(&sa, bi->stage, bi->index, ad, FS_MAX_BLOCKS + 8);
        fs_model *st = NULL;
        if ((rc = fs_student_from_teacher(&st, &sa, teacher, ad, nad, d)) != 0)
            return rc;
        fs_model_set_trainable(st, 0);
        for (int i = 0; i < st->n_params; i++)
            if (strstr(st->params[i].name, ".adaptor_"))
                st->params[i].trainable = 1;
        if ((rc = fs_source_set_student(src, st, d)) != 0 ||
            (rc = fs_objective_mean(src, st, FS_OBJ_MIMIC, 0, &sc->loss_before, d)) != 0) {
            fs_model_free(st);
            return rc;
        }
        fs_recover_config rcfg;
        fs_recover_defaults(&rcfg);
        rcfg.objective = FS_OBJ_MIMIC;
        rcfg.mode = FS_MODE_EVAL;
        rcfg.iterations = c->iterations;
        rcfg.batch = c->batch;
        rcfg.lr = c->lr;
        rcfg.momentum = c->momentum;
        rcfg.weight_decay = c->weight_decay;
        rcfg.seed = c->seed;
        rcfg.pad = c->pad;
        rcfg.hflip = c->hflip;
        rcfg.hooks = c->hooks;
        char phase[64];
        snprintf(phase, sizeof phase, "score %s", bi->name);
        rc = fs_recover(src, st, &rcfg, phase, progress, ud, NULL, d);
        if (rc == 0)
            rc = fs_objective_mean(src, st, FS_OBJ_MIMIC, 0, &sc->recoverability, d);
        fs_model_free(st);
        if (rc == FS_EDIVERGED) {
            /* the adaptors could not be trained at this learning rate: the block is treated as
               unrecoverable (it is chosen last), and scoring goes on */
            sc->recoverability = FS_SCORE_DIVERGED;
            sc->score = FS_SCORE_DIVERGED;
            sc->diverged = 1;
            continue;
        }
        if (rc)
            return rc;
    }
    if (*n_scores == 0)
        return fs_diag_set(d, FS_EINVAL, "the teacher has no block with an identity shortcut");
    /* the teacher was measured again after every candidate, and its fastest measurement is the
     * reference: its first measurement, alone, came out 5-20% slower than later ones on a shared
     * machine, which inflated every block's saving */
    for (int i = 0; i < *n_scores; i++) {
        fs_block_score *sc = &scores[i];
        sc->latency_saved_pct = (lat_t - sc->latency_saved_pct) / lat_t * 100.0;
        if (sc->diverged)
            continue;
        double saved = sc->latency_saved_pct > 1e-3 ? sc->latency_saved_pct : 1e-3;
        sc->score = sc->recoverability / saved;
    }
    return 0;
}

int fs_practise_choose(const fs_block_score *scores, int n, double target_fraction,
                       int *chosen, int *n_chosen, fs_diag *d)
{
    if (!(target_fraction > 0 && target_fraction <= 1))
        return fs_diag_set(d, FS_EINVAL, "latency target %g must be in (0, 1]", target_fraction);
    int order[256];
    if (n > 256)
        n = 256;
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) {   /* insertion sort by ascending score */
        int v = order[i], j = i - 1;
        while (j >= 0 && scores[order[j]].score > scores[v].score) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    double need = (1.0 - target_fraction) * 100.0, saved = 0;
    *n_chosen = 0;
    for (int i = 0; i < n && saved < need; i++) {
        chosen[(*n_chosen)++] = order[i];
        saved += scores[order[i]].latency_saved_pct;
    }
    if (saved < need)
        return fs_diag_set(d, FS_EINVAL, "latency target %.2f cannot be met by dropping blocks: "
                           "dropping every candidate saves only %.1f%%", target_fraction, saved);
    return 0;
}
