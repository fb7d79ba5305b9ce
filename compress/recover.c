/*
 * recover.c — the engine's generic pieces: recovery by SGD on summed gradients from an fs_source
 * (FedSGD) or by averaged local updates (FedAvg), objective evaluation, and exact BN
 * re-estimation from summed moments.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_compress.h"
#include "fs_rng.h"

void fs_recover_defaults(fs_recover_config *c)
{
    memset(c, 0, sizeof *c);
    c->objective = FS_OBJ_MIMIC;
    c->temperature = 4.0f;
    c->mode = FS_MODE_EVAL;
    c->iterations = 2000;
    c->batch = 64;
    c->lr = 0.02f;
    c->momentum = 0.9f;
    c->weight_decay = 1e-4f;
    c->milestones[0] = 0.4f;
    c->milestones[1] = 0.8f;
    c->seed = 1;
    c->pad = 2;
    c->hflip = 1;
    c->local_steps = 0;     /* FedSGD */
    c->server_lr = 1.0f;
}

/* Scales every trainable gradient by 1/count: the sums become means. */
static void grads_to_mean(fs_model *m, int64_t count)
{
    float s = count > 0 ? 1.0f / (float)count : 0.0f;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        for (size_t k = 0; k < p->numel; k++)
            p->grad[k] *= s;
    }
}

/* Before the first step: the source learns the student, and a checkpoint (if any) says where
 * to continue (*start steps or rounds already done). */
static int begin(fs_source *src, fs_model *student, const fs_recover_config *c, fs_optimizer *opt,
                 long *start, fs_diag *d)
{
    int rc = fs_source_set_student(src, student, d);
    if (rc == 0 && c->hooks && c->hooks->resume)
        rc = c->hooks->resume(c->hooks->ud, student, opt, c->iterations, start, d);
    return rc;
}

/* After step `it` (FedSGD) or round `it` (FedAvg): the caller's after-step hook, the checkpoint,
 * and a progress line every 10 steps. */
static int step_done(const fs_recover_config *c, fs_model *student, fs_optimizer *opt, long it,
                     long start, float lr, double loss, double t0, const char *phase,
                     fs_progress_fn progress, void *ud, fs_diag *d)
{
    if (c->after_step)
        c->after_step(c->after_step_ud, student, it, lr);
    int rc = 0;
    if (c->hooks && c->hooks->checkpoint &&
        (rc = c->hooks->checkpoint(c->hooks->ud, student, opt, it + 1, c->iterations, loss, d)))
        return rc;
    if (progress && (it % 10 == 9 || it == c->iterations - 1 || it == start)) {
        double el = fs_now_sec() - t0;
        progress(ud, phase, it + 1, c->iterations, loss,
                 el / (double)(it + 1 - start) * (double)(c->iterations - it - 1));
    }
    return 0;
}

/* FedAvg: rounds of E local steps at the sites; the student moves by the weighted mean delta.
 * The optimizer exists only for the checkpoint hooks (its state stays zero, its step count is the
 * number of rounds done), so snapshots keep their format. */
static int recover_fedavg(fs_source *src, fs_model *student, const fs_recover_config *c,
                          const char *phase, fs_progress_fn progress, void *ud, double *final_loss,
                          fs_diag *d)
{
    if (c->before_step)
        return fs_diag_set(d, FS_EINVAL, "%s: FedAvg (local steps) cannot run a before-step hook "
                           "(it edits a gradient FedAvg never forms); use FedSGD", phase);
    fs_optimizer *opt = NULL;
    fs_optim_config oc = {.kind = FS_OPT_SGD, .lr = c->lr};
    int rc = fs_optimizer_create(&opt, student, &oc, d);
    if (rc)
        return rc;
    size_t nstate = 0;
    float *state = fs_optimizer_state(opt, &nstate);
    memset(state, 0, nstate * sizeof(float));
    float server_lr = c->server_lr > 0 ? c->server_lr : 1.0f;
    long start = 0;
    if ((rc = begin(src, student, c, opt, &start, d)) != 0)
        goto done;
    double t0 = fs_now_sec(), loss = 0;
    for (long it = start; it < c->iterations; it++) {
        float lr = fs_lr_step(c->lr, it, c->iterations, c->milestones, 2, 0.1f);
        fs_update_req req = {.objective = c->objective, .temperature = c->temperature,
                             .mode = c->mode,
                             .sample = {.batch = c->batch, .seed = c->seed, .step = it,
                                        .pad = c->pad, .hflip = c->hflip},
                             .steps = c->local_steps, .lr = lr, .momentum = c->momentum,
                             .weight_decay = c->weight_decay};
        fs_update_sum us;
        if ((rc = fs_source_local_update(src, student, &req, &us, d)) != 0)
            goto done;
        if (us.n <= 0 || us.loss_count <= 0) {
            rc = fs_diag_set(d, FS_EINVAL, "%s: round %ld had no samples", phase, it);
            goto done;
        }
        loss = us.loss_sum / (double)us.loss_count;
        if (!isfinite(loss)) {
            rc = fs_diag_set(d, FS_EDIVERGED, "%s: loss diverged (%g) at round %ld; lower the "
                             "learning rate", phase, loss, it);
            goto done;
        }
        /* w += server_lr * (Σ n_k Δw_k) / Σ n_k */
        float s = server_lr / (float)us.n;
        for (int i = 0; i < student->n_params; i++) {
            fs_param *p = &student->params[i];
            if (!p->grad || !p->trainable)
                continue;
            for (size_t k = 0; k < p->numel; k++)
                p->data[k] += s * p->grad[k];
        }
        fs_optimizer_set_steps(opt, it + 1);
        if ((rc = step_done(c, student, opt, it, start, lr, loss, t0, phase, progress, ud, d)))
            goto done;
    }
    if (final_loss)
        *final_loss = loss;
done:
    fs_optimizer_free(opt);
    return rc;
}

int fs_recover(fs_source *src, fs_model *student, const fs_recover_config *c, const char *phase,
               fs_progress_fn progress, void *ud, double *final_loss, fs_diag *d)
{
    if (c->iterations < 0)
        return fs_diag_set(d, FS_EINVAL, "iterations must be >= 0");
    if (c->local_steps < 0)
        return fs_diag_set(d, FS_EINVAL, "local steps must be >= 0 (0 = FedSGD)");
    if (c->local_steps > 0)
        return recover_fedavg(src, student, c, phase, progress, ud, final_loss, d);
    fs_optimizer *opt = NULL;
    fs_optim_config oc = {.kind = FS_OPT_SGD, .lr = c->lr, .momentum = c->momentum,
                          .weight_decay = c->weight_decay};
    int rc = fs_optimizer_create(&opt, student, &oc, d);
    if (rc)
        return rc;
    long start = 0;
    if ((rc = begin(src, student, c, opt, &start, d)) != 0)
        goto done;
    double t0 = fs_now_sec(), loss = 0;
    for (long it = start; it < c->iterations; it++) {
        fs_loss_req req = {.objective = c->objective, .temperature = c->temperature,
                           .mode = c->mode, .want_grad = 1,
                           .sample = {.batch = c->batch, .seed = c->seed, .step = it,
                                      .pad = c->pad, .hflip = c->hflip}};
        fs_loss_sum ls;
        fs_model_zero_grad(student);
        if ((rc = fs_source_loss(src, student, &req, &ls, d)) != 0)
            goto done;
        if (ls.count <= 0) {
            rc = fs_diag_set(d, FS_EINVAL, "%s: step %ld had no samples", phase, it);
            goto done;
        }
        grads_to_mean(student, ls.count);
        loss = ls.loss_sum / (double)ls.count;
        if (!isfinite(loss)) {
            rc = fs_diag_set(d, FS_EDIVERGED, "%s: loss diverged (%g) at step %ld; lower the "
                             "learning rate", phase, loss, it);
            goto done;
        }
        float lr = fs_lr_step(c->lr, it, c->iterations, c->milestones, 2, 0.1f);
        if (c->before_step)
            c->before_step(c->before_step_ud, student, it, lr);
        fs_optimizer_step(opt, student, lr);
        if ((rc = step_done(c, student, opt, it, start, lr, loss, t0, phase, progress, ud, d)))
            goto done;
    }
    if (final_loss)
        *final_loss = loss;
done:
    fs_optimizer_free(opt);
    return rc;
}

int fs_objective_mean(fs_source *src, fs_model *student, fs_objective obj, float temperature,
                      double *mean, fs_diag *d)
{
    fs_loss_req req = {.objective = obj, .temperature = temperature, .mode = FS_MODE_EVAL,
                       .want_grad = 0, .sample = {.batch = 0}};
    fs_loss_sum ls;
    int rc = fs_source_loss(src, student, &req, &ls, d);
    if (rc)
        return rc;
    *mean = ls.count ? ls.loss_sum / (double)ls.count : 0.0;
    return 0;
}

int fs_bn_reestimate(fs_source *src, fs_model *student, int rounds, fs_diag *d)
{
    int n = 0;
    size_t channels = 0;
    for (int i = 0; i < student->n_nodes; i++)
        if (student->nodes[i].op == FS_NODE_BN) {
            n++;
            channels += (size_t)student->nodes[i].C;
        }
    if (n == 0)
        return 0;
    int *nodes = malloc((size_t)n * sizeof(int));
    int64_t *count = malloc((size_t)n * sizeof(int64_t));
    double *sum = malloc(channels * sizeof(double)), *sumsq = malloc(channels * sizeof(double));
    int rc = 0;
    if (!nodes || !count || !sum || !sumsq) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory");
        goto done;
    }
    n = 0;
    for (int i = 0; i < student->n_nodes; i++)
        if (student->nodes[i].op == FS_NODE_BN)
            nodes[n++] = i;
    if ((rc = fs_source_set_student(src, student, d)) != 0)
        goto done;
    for (int r = 0; r < rounds; r++) {
        if ((rc = fs_source_moments(src, student, nodes, n, sum, sumsq, count, d)) != 0)
            goto done;
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            const fs_node *nd = &student->nodes[nodes[i]];
            float *rm = student->params[nd->p[2]].data, *rv = student->params[nd->p[3]].data;
            double cnt = (double)count[i];
            for (int c = 0; c < nd->C; c++) {
                if (cnt < 2)
                    continue;
                double mu = sum[off + c] / cnt;
                double var = sumsq[off + c] / cnt - mu * mu;
                if (var < 0)
                    var = 0;
                rm[c] = (float)mu;
                rv[c] = (float)(var * cnt / (cnt - 1));   /* unbiased, as PyTorch stores it */
            }
            off += (size_t)nd->C;
        }
    }
done:
    free(nodes);
    free(count);
    free(sum);
    free(sumsq);
    return rc;
}
