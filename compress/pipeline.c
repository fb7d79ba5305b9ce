/*
 * pipeline.c — one compression run over an fs_source: teacher measurements, block scores, and
 * for each target a plan, a physically smaller student, recovery and measurements.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_pipeline.h"

void fs_pipeline_defaults(fs_pipeline_config *c)
{
    memset(c, 0, sizeof *c);
    c->methods = FS_METHOD_DROP_BLOCKS;
    c->recover = FS_RECOVER_MIMIC;
    c->target_kind = FS_TARGET_LATENCY;
    c->n_targets = 1;
    c->targets[0] = 0.75f;
    fs_practise_defaults(&c->practise);
    fs_recover_defaults(&c->recovery);
    fs_prune_defaults(&c->prune);
    c->sparsity.kind = FS_SPARSITY_PROX_L1;
    c->sparsity.lambda = 1e-4f;
    c->sparsity.a = 1.0f;
    fs_lowrank_defaults(&c->lowrank);
}

int fs_pipeline_parse_methods(int *methods, const char *s, fs_diag *d)
{
    static const struct {
        const char *name;
        int bit;
    } names[] = {{"drop-blocks", FS_METHOD_DROP_BLOCKS}, {"prune-channels", FS_METHOD_PRUNE_CHANNELS},
                 {"lowrank", FS_METHOD_LOWRANK},         {"nm", FS_METHOD_NM},
                 {"int8", FS_METHOD_INT8}};
    *methods = 0;
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == len && !strncmp(p, names[i].name, len)) {
                *methods |= names[i].bit;
                found = 1;
            }
        if (!found)
            return fs_diag_set(d, FS_EINVAL, "methods: '%.*s' is not one of drop-blocks, "
                               "prune-channels, lowrank, nm, int8", (int)len, p);
        p += len;
        if (*p == ',')
            p++;
    }
    if (!*methods)
        return fs_diag_set(d, FS_EINVAL, "methods: none given");
    return 0;
}

static const char *RECOVER_NAMES[] = {"none", "bn", "mimic", "kd", "ce"};

const char *fs_recover_kind_name(fs_recover_kind k)
{
    return (unsigned)k < 5 ? RECOVER_NAMES[k] : "?";
}

float fs_recover_default_lr(fs_recover_kind k)
{
    return k == FS_RECOVER_CE ? 1e-4f : 0.02f;
}

int fs_pipeline_parse_recover(fs_recover_kind *k, const char *s, fs_diag *d)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, RECOVER_NAMES[i])) {
            *k = (fs_recover_kind)i;
            return 0;
        }
    return fs_diag_set(d, FS_EINVAL, "recover: '%s' is not one of none, bn, mimic, kd, ce", s);
}

const char *fs_target_kind_name(fs_target_kind k)
{
    return k == FS_TARGET_LATENCY ? "latency" : k == FS_TARGET_FLOPS ? "flops" : "params";
}

static int parse_fraction(float *out, const char *s, const char *what, fs_diag *d)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || (*end && *end != ',') || !(v > 0 && v <= 1))
        return fs_diag_set(d, FS_EINVAL, "%s: '%s' is not a fraction in (0, 1]", what, s);
    *out = (float)v;
    return (int)(end - s);
}

int fs_pipeline_parse_target(fs_pipeline_config *c, const char *s, fs_diag *d)
{
    const char *eq = strchr(s, '=');
    if (!eq)
        return fs_diag_set(d, FS_EINVAL, "target '%s': expected latency=F, flops=F or params=F", s);
    size_t k = (size_t)(eq - s);
    if (k == 7 && !strncmp(s, "latency", 7))
        c->target_kind = FS_TARGET_LATENCY;
    else if (k == 5 && !strncmp(s, "flops", 5))
        c->target_kind = FS_TARGET_FLOPS;
    else if (k == 6 && !strncmp(s, "params", 6))
        c->target_kind = FS_TARGET_PARAMS;
    else
        return fs_diag_set(d, FS_EINVAL, "target '%s': kind must be latency, flops or params", s);
    int n = parse_fraction(&c->targets[0], eq + 1, "target", d);
    if (n < 0)
        return n;
    if (eq[1 + n])
        return fs_diag_set(d, FS_EINVAL, "target '%s': one value (use --family for several)", s);
    c->n_targets = 1;
    return 0;
}

int fs_pipeline_parse_family(fs_pipeline_config *c, const char *s, fs_diag *d)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        if (n == FS_MAX_TARGETS)
            return fs_diag_set(d, FS_EINVAL, "family: at most %d targets", FS_MAX_TARGETS);
        int used = parse_fraction(&c->targets[n], p, "family", d);
        if (used < 0)
            return used;
        n++;
        p += used;
        if (*p == ',')
            p++;
    }
    if (n == 0)
        return fs_diag_set(d, FS_EINVAL, "family: no targets");
    c->n_targets = n;
    return 0;
}

int fs_pipeline_parse_drop(fs_pipeline_config *c, const char *s, fs_diag *d)
{
    c->n_drop = 0;
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof c->drop[0])
            return fs_diag_set(d, FS_EINVAL, "drop: '%s' is not a list of block names", s);
        if (c->n_drop == FS_MAX_STAGES * FS_MAX_BLOCKS)
            return fs_diag_set(d, FS_EINVAL, "drop: too many blocks");
        snprintf(c->drop[c->n_drop++], sizeof c->drop[0], "%.*s", (int)len, p);
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

static int measure(fs_model *m, const fs_practise_config *pc, double *b1, double *b64,
                   fs_diag *d)
{
    fs_latency_fn f = pc->latency;
    int rc = f ? f(pc->latency_ud, b1, m, 1, 3 * pc->latency_reps, d)
               : fs_latency(b1, m, 1, 3 * pc->latency_reps, d);
    if (rc == 0)
        rc = f ? f(pc->latency_ud, b64, m, pc->latency_batch, pc->latency_reps, d)
               : fs_latency(b64, m, pc->latency_batch, pc->latency_reps, d);
    return rc;
}

/* BN re-estimation passes: as configured, or one per BN layer (exact) */
static int bn_passes(const fs_pipeline_config *c, const fs_model *m)
{
    int rounds = c->bn_rounds;
    if (rounds <= 0)
        for (int i = 0; i < m->n_nodes; i++)
            rounds += m->nodes[i].op == FS_NODE_BN;
    return rounds;
}

/* The teacher measured again after a student: the reference is its fastest measurement (its
 * first one, at the start of the process, came out 5-20% slower on a shared machine) */
static int remeasure_teacher(const fs_pipeline_config *c, fs_model *teacher,
                             fs_pipeline_output *out, fs_diag *d)
{
    double b1, b64;
    int rc = measure(teacher, &c->practise, &b1, &b64, d);
    if (rc)
        return rc;
    if (b1 < out->latency_b1)
        out->latency_b1 = b1;
    if (b64 < out->latency_b64)
        out->latency_b64 = b64;
    return 0;
}

static int recover_student(const fs_pipeline_config *c, fs_model *student, fs_source *src,
                           fs_progress_fn progress, void *ud, fs_pipeline_result *r, fs_diag *d)
{
    int rc = fs_source_set_student(src, student, d);
    if (rc)
        return rc;
    fs_objective obj = c->recover == FS_RECOVER_KD   ? FS_OBJ_KD
                       : c->recover == FS_RECOVER_CE ? FS_OBJ_CE
                                                     : FS_OBJ_MIMIC;
    float T = c->recovery.temperature > 0 ? c->recovery.temperature : 4.0f;
    if (c->recover != FS_RECOVER_CE &&
        (rc = fs_objective_mean(src, student, obj, T, &r->objective_before, d)) != 0)
        return rc;
    if (c->recover == FS_RECOVER_NONE) {
        r->objective_after = r->objective_before;
        return 0;
    }
    int rounds = bn_passes(c, student);
    if (progress)
        progress(ud, "bn re-estimation", 0, rounds, 0, 0);
    if ((rc = fs_bn_reestimate(src, student, rounds, d)) != 0)
        return rc;
    if (c->recover != FS_RECOVER_BN) {
        fs_recover_config rc_cfg = c->recovery;
        rc_cfg.hooks = c->practise.hooks;
        rc_cfg.objective = obj;
        rc_cfg.temperature = T;
        fs_model_set_trainable(student, 1);
        if ((rc = fs_recover(src, student, &rc_cfg, "recover", progress, ud, NULL, d)) != 0)
            return rc;
        if (rc_cfg.mode != FS_MODE_EVAL) {
            /* trained with batch statistics: give it population statistics for inference */
            if ((rc = fs_bn_reestimate(src, student, rounds, d)) != 0)
                return rc;
        }
    }
    if (c->recover != FS_RECOVER_CE)
        rc = fs_objective_mean(src, student, obj, T, &r->objective_after, d);
    return rc;
}

/* The drop-blocks student for a latency fraction of the teacher's: the blocks of --drop, or those
 * fs_practise_choose picks from the teacher's scores; r->dropped records them. */
static int drop_student(const fs_pipeline_config *c, const fs_model *teacher,
                        const fs_pipeline_output *out, double share, fs_pipeline_result *r,
                        fs_model **student, fs_diag *d)
{
    const char *names[FS_MAX_STAGES * FS_MAX_BLOCKS];
    int chosen[FS_MAX_STAGES * FS_MAX_BLOCKS], nc = 0, rc;
    if (c->n_drop) {
        for (int i = 0; i < c->n_drop; i++)
            names[i] = c->drop[i];
        nc = c->n_drop;
    } else {
        if ((rc = fs_practise_choose(out->scores, out->n_scores, share, chosen, &nc, d)) != 0)
            return rc;
        for (int i = 0; i < nc; i++)
            names[i] = out->scores[chosen[i]].name;
    }
    for (int i = 0; i < nc; i++)
        snprintf(r->dropped[i], sizeof r->dropped[i], "%s", names[i]);
    r->n_dropped = nc;
    fs_arch sa;
    if ((rc = fs_arch_drop_blocks(&sa, &teacher->arch, names, nc, d)) != 0)
        return rc;
    return fs_student_from_teacher(student, &sa, teacher, NULL, 0, d);
}

/* Recovers r->model, then measures what the report shows of it (and the teacher again, next to
 * it, for the reference). */
static int finish_result(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                         fs_progress_fn progress, void *ud, fs_pipeline_output *out,
                         fs_pipeline_result *r, fs_diag *d)
{
    int rc = recover_student(c, r->model, src, progress, ud, r, d);
    if (rc)
        return rc;
    r->params = fs_model_num_params(r->model);
    r->flops = fs_model_flops(r->model);
    if ((rc = measure(r->model, &c->practise, &r->latency_b1, &r->latency_b64, d)) != 0 ||
        (rc = remeasure_teacher(c, teacher, out, d)) != 0)
        return rc;
    return fs_source_evaluate(src, r->model, &r->on_source, d);
}

/* The teacher's latency, size and agreement: the reference every result is compared with. */
static int measure_teacher(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                           fs_pipeline_output *out, fs_diag *d)
{
    int rc = measure(teacher, &c->practise, &out->latency_b1, &out->latency_b64, d);
    if (rc)
        return rc;
    out->params = fs_model_num_params(teacher);
    out->flops = fs_model_flops(teacher);
    if ((rc = fs_source_set_student(src, teacher, d)) != 0 ||
        (rc = fs_source_evaluate(src, teacher, &out->on_source, d)) != 0)
        return rc;
    return 0;
}

/* The prune-channels and lowrank settings of a run: latency measured as drop-blocks measures it,
 * and what the recovery objective needs kept intact. */
static void structural_configs(const fs_pipeline_config *c, fs_prune_config *pc,
                               fs_lowrank_config *lc)
{
    *pc = c->prune;
    *lc = c->lowrank;
    pc->latency = lc->latency = c->practise.latency;
    pc->latency_ud = lc->latency_ud = c->practise.latency_ud;
    pc->latency_batch = lc->latency_batch = c->practise.latency_batch;
    pc->latency_reps = lc->latency_reps = c->practise.latency_reps;
    if (c->recover != FS_RECOVER_KD && c->recover != FS_RECOVER_CE) {
        /* the mimic objective compares pre-GAP features with the teacher's (recovered with it,
         * or reported for none/bn): they keep their shape, and the fc, which it cannot train,
         * stays exact */
        pc->keep_output = 1;
        lc->linear = 0;
    }
}

/* prune-channels or lowrank: for each target, a physically smaller student planned from the
 * weights alone (after optional sparsity training for pruning), then the same recovery and
 * measurements as drop-blocks. */
static int run_prune_or_lowrank(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                                fs_progress_fn progress, void *ud, fs_pipeline_output *out,
                                fs_diag *d)
{
    int prune = c->methods == FS_METHOD_PRUNE_CHANNELS;
    const char *mname = prune ? "prune-channels" : "lowrank";
    if (teacher->arch.type != FS_ARCH_RESNET && prune)
        return fs_diag_set(d, FS_EINVAL, "prune-channels needs a ResNet teacher");
    fs_cost_kind kind = c->target_kind == FS_TARGET_FLOPS    ? FS_COST_FLOPS
                        : c->target_kind == FS_TARGET_PARAMS ? FS_COST_PARAMS
                                                             : FS_COST_LATENCY;
    fs_prune_config pc;
    fs_lowrank_config lc;
    structural_configs(c, &pc, &lc);
    int rc = measure_teacher(c, teacher, src, out, d);
    if (rc)
        return rc;
    fs_model *base = teacher, *sparse = NULL;
    if (prune && c->sparsity_iterations > 0) {
        /* network slimming: the objective plus a penalty on BN scales, on a copy of the teacher */
        if ((rc = fs_model_clone(&sparse, teacher, d)) != 0)
            return rc;
        fs_recover_config rcfg = c->recovery;
        rcfg.hooks = NULL;
        rcfg.iterations = c->sparsity_iterations;
        rcfg.objective = c->recover == FS_RECOVER_KD   ? FS_OBJ_KD
                         : c->recover == FS_RECOVER_CE ? FS_OBJ_CE
                                                       : FS_OBJ_MIMIC;
        if (rcfg.temperature <= 0)
            rcfg.temperature = 4.0f;
        fs_model_set_trainable(sparse, 1);
        if ((rc = fs_prune_sparsify(src, sparse, &c->sparsity, &rcfg, progress, ud, d)) != 0)
            goto done;
        base = sparse;
    }
    for (int t = 0; t < c->n_targets; t++) {
        fs_pipeline_result *r = &out->results[out->n_results];
        memset(r, 0, sizeof *r);
        r->target = c->targets[t];
        if (progress)
            progress(ud, mname, t + 1, c->n_targets, 0, 0);
        rc = prune ? fs_prune_channels(&r->model, base, &pc, kind, r->target, &r->changes,
                                       &r->n_changes, d)
                   : fs_lowrank(&r->model, base, &lc, kind, r->target, &r->changes,
                                &r->n_changes, d);
        if (rc)
            goto done;
        out->n_results++;
        if ((rc = finish_result(c, teacher, src, progress, ud, out, r, d)) != 0)
            goto done;
    }
done:
    fs_model_free(sparse);
    return rc;
}

static int append_changes(fs_pipeline_result *r, fs_layer_change *ch, int n, fs_diag *d)
{
    if (n <= 0) {
        free(ch);
        return 0;
    }
    fs_layer_change *all = realloc(r->changes, (size_t)(r->n_changes + n) * sizeof *all);
    if (!all) {
        free(ch);
        return fs_diag_set(d, FS_ENOMEM, "out of memory");
    }
    memcpy(all + r->n_changes, ch, (size_t)n * sizeof *ch);
    free(ch);
    r->changes = all;
    r->n_changes += n;
    return 0;
}

/* Where a student stands against the teacher in the target's unit. */
static int reached_fraction(const fs_pipeline_config *c, const fs_pipeline_output *out,
                            fs_model *m, double *frac, fs_diag *d)
{
    if (c->target_kind == FS_TARGET_FLOPS) {
        *frac = (double)fs_model_flops(m) / (double)out->flops;
        return 0;
    }
    if (c->target_kind == FS_TARGET_PARAMS) {
        *frac = (double)fs_model_num_params(m) / (double)out->params;
        return 0;
    }
    const fs_practise_config *pc = &c->practise;
    double sec = 0;
    int rc = pc->latency ? pc->latency(pc->latency_ud, &sec, m, pc->latency_batch,
                                       pc->latency_reps, d)
                         : fs_latency(&sec, m, pc->latency_batch, pc->latency_reps, d);
    *frac = sec / out->latency_b64;
    return rc;
}

/* One structural stage of a combined run: `base` (the teacher or the previous stage's student)
 * made smaller by `method` to `share` of its own cost; *next is owned. */
static int combined_stage(const fs_pipeline_config *c, int method, const fs_model *teacher,
                          const fs_model *base, double share, const fs_pipeline_output *out,
                          fs_pipeline_result *r, fs_model **next, fs_diag *d)
{
    fs_prune_config pc;
    fs_lowrank_config lc;
    structural_configs(c, &pc, &lc);
    fs_cost_kind kind = c->target_kind == FS_TARGET_FLOPS    ? FS_COST_FLOPS
                        : c->target_kind == FS_TARGET_PARAMS ? FS_COST_PARAMS
                                                             : FS_COST_LATENCY;
    fs_layer_change *ch = NULL;
    int nch = 0, rc;
    if (method == FS_METHOD_DROP_BLOCKS)    /* always the first stage: base is the teacher */
        return drop_student(c, teacher, out, share, r, next, d);
    rc = method == FS_METHOD_PRUNE_CHANNELS
             ? fs_prune_channels(next, base, &pc, kind, share, &ch, &nch, d)
             : fs_lowrank(next, base, &lc, kind, share, &ch, &nch, d);
    return rc ? rc : append_changes(r, ch, nch, d);
}

/* Several structural methods in one run, applied coarse to fine (drop-blocks, prune-channels,
 * lowrank), each on the previous stage's student. The target is shared: each stage aims at
 * (target / fraction reached so far)^(1 / stages left) of its own input's cost, measured in the
 * target's unit, so a stage that over- or undershoots leaves more or less to the next. Between
 * stages BN statistics are re-estimated (exact; skipped for --recover none, which uses no data);
 * the final student is recovered once against the teacher, as a single method's is. */
static int run_combined(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                        fs_progress_fn progress, void *ud, fs_pipeline_output *out, fs_diag *d)
{
    static const int ORDER[] = {FS_METHOD_DROP_BLOCKS, FS_METHOD_PRUNE_CHANNELS,
                                FS_METHOD_LOWRANK};
    static const char *const NAMES[] = {"drop-blocks", "prune-channels", "lowrank"};
    if (teacher->arch.type != FS_ARCH_RESNET)
        return fs_diag_set(d, FS_EINVAL, "combined structural methods need a ResNet teacher");
    int drop = (c->methods & FS_METHOD_DROP_BLOCKS) != 0;
    if (drop && c->target_kind != FS_TARGET_LATENCY)
        return fs_diag_set(d, FS_EINVAL, "drop-blocks plans for a latency target "
                           "(--target latency=F)");
    if (c->n_drop && c->n_targets != 1)
        return fs_diag_set(d, FS_EINVAL, "drop: an explicit block list takes one target");
    int n_stages = 0;
    for (int k = 0; k < 3; k++)
        n_stages += (c->methods & ORDER[k]) != 0;
    int rc = measure_teacher(c, teacher, src, out, d);
    if (rc)
        return rc;
    if (drop && c->n_drop == 0 &&
        (rc = fs_practise_score(src, teacher, &c->practise, out->scores, &out->n_scores, progress,
                                ud, d)) != 0)
        return rc;
    for (int t = 0; t < c->n_targets; t++) {
        fs_pipeline_result *r = &out->results[out->n_results];
        memset(r, 0, sizeof *r);
        r->target = c->targets[t];
        out->n_results++;           /* owned by out from here: freed with it on any error */
        fs_model *cur = NULL;       /* NULL: still the teacher */
        double reached = 1.0;
        int left = n_stages;
        for (int k = 0; k < 3; k++) {
            if (!(c->methods & ORDER[k]))
                continue;
            double share = pow((double)r->target / reached, 1.0 / left--);
            if (share >= 1.0 && !(ORDER[k] == FS_METHOD_DROP_BLOCKS && c->n_drop))
                continue;           /* the earlier stages already reached the target */
            if (progress)
                progress(ud, NAMES[k], t + 1, c->n_targets, 0, 0);
            fs_model *next = NULL;
            rc = combined_stage(c, ORDER[k], teacher, cur ? cur : teacher, share, out, r, &next,
                                d);
            if (rc)
                goto fail;
            fs_model_free(cur);
            cur = r->model = next;
            if (c->recover != FS_RECOVER_NONE &&
                ((rc = fs_source_set_student(src, cur, d)) != 0 ||
                 (rc = fs_bn_reestimate(src, cur, bn_passes(c, cur), d)) != 0))
                goto fail;
            if ((rc = reached_fraction(c, out, cur, &reached, d)) != 0)
                goto fail;
        }
        if (!cur && (rc = fs_model_clone(&cur, teacher, d)) != 0)
            goto fail;
        r->model = cur;
        if ((rc = finish_result(c, teacher, src, progress, ud, out, r, d)) != 0)
            return rc;
        continue;
    fail:
        if (!r->model)
            fs_model_free(cur);
        return rc;
    }
    return 0;
}

int fs_pipeline_run(const fs_pipeline_config *c, fs_model *teacher, fs_source *src,
                    fs_progress_fn progress, void *ud, fs_pipeline_output *out, fs_diag *d)
{
    memset(out, 0, sizeof *out);
    int post = c->methods & (FS_METHOD_NM | FS_METHOD_INT8);
    if (post) {
        /* the structural method (if any) first, then N:M and int8 on its students */
        fs_pipeline_config pre = *c;
        pre.methods &= ~post;
        int rc = pre.methods ? fs_pipeline_run(&pre, teacher, src, progress, ud, out, d) : 0;
        return rc ? rc : fs_pipeline_posttrain(c, teacher, src, progress, ud, out, d);
    }
    int structural = c->methods & (FS_METHOD_DROP_BLOCKS | FS_METHOD_PRUNE_CHANNELS |
                                   FS_METHOD_LOWRANK);
    if (structural & (structural - 1))
        return run_combined(c, teacher, src, progress, ud, out, d);
    if (c->methods == FS_METHOD_PRUNE_CHANNELS || c->methods == FS_METHOD_LOWRANK)
        return run_prune_or_lowrank(c, teacher, src, progress, ud, out, d);
    if (c->methods != FS_METHOD_DROP_BLOCKS)
        return fs_diag_set(d, FS_EUNSUPPORTED, "this build plans drop-blocks alone; other methods "
                           "and combinations are not available yet");
    if (c->target_kind != FS_TARGET_LATENCY)
        return fs_diag_set(d, FS_EINVAL, "drop-blocks plans for a latency target "
                           "(--target latency=F)");
    if (teacher->arch.type != FS_ARCH_RESNET)
        return fs_diag_set(d, FS_EINVAL, "drop-blocks needs a ResNet teacher");
    int rc = measure(teacher, &c->practise, &out->latency_b1, &out->latency_b64, d);
    if (rc)
        return rc;
    out->params = fs_model_num_params(teacher);
    out->flops = fs_model_flops(teacher);
    if ((rc = fs_source_set_student(src, teacher, d)) != 0 ||
        (rc = fs_source_evaluate(src, teacher, &out->on_source, d)) != 0)
        return rc;
    if (c->n_drop == 0 &&
        (rc = fs_practise_score(src, teacher, &c->practise, out->scores, &out->n_scores, progress,
                                ud, d)) != 0)
        return rc;
    int n_targets = c->n_drop ? 1 : c->n_targets;
    for (int t = 0; t < n_targets; t++) {
        fs_pipeline_result *r = &out->results[out->n_results];
        memset(r, 0, sizeof *r);
        r->target = c->targets[t];
        if ((rc = drop_student(c, teacher, out, r->target, r, &r->model, d)) != 0)
            return rc;
        out->n_results++;
        if ((rc = finish_result(c, teacher, src, progress, ud, out, r, d)) != 0)
            return rc;
    }
    return 0;
}

void fs_pipeline_output_free(fs_pipeline_output *out)
{
    for (int i = 0; i < out->n_results; i++) {
        fs_model_free(out->results[i].model);
        out->results[i].model = NULL;
        free(out->results[i].changes);
        out->results[i].changes = NULL;
        out->results[i].n_changes = 0;
    }
    out->n_results = 0;
}
