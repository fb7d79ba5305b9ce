/*
 * learn.c — supervised training (SGD + cosine schedule + cross-entropy) and evaluation loops.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_learn.h"
#include "fs_optim.h"

int fs_learn_check_data(const fs_model *m, const fs_dataset *ds, fs_diag *d)
{
    const fs_arch *a = &m->arch;
    if (ds->c != a->in_c || ds->h != a->in_h || ds->w != a->in_w)
        return fs_diag_set(d, FS_EINVAL, "%s: images are %dx%dx%d but the model takes %dx%dx%d",
                           ds->source, ds->c, ds->h, ds->w, a->in_c, a->in_h, a->in_w);
    if (ds->labels && ds->num_classes > a->num_classes)
        return fs_diag_set(d, FS_EINVAL, "%s: %d classes but the model has %d outputs",
                           ds->source, ds->num_classes, a->num_classes);
    return 0;
}

int fs_evaluate(fs_eval_result *res, fs_model *m, const fs_dataset *ds, const int32_t *idx, int n,
                int batch, fs_diag *d)
{
    memset(res, 0, sizeof *res);
    int rc = fs_learn_check_data(m, ds, d);
    if (rc)
        return rc;
    if (!idx)
        n = ds->n;
    if (batch <= 0)
        batch = 256;
    if (batch > n)
        batch = n > 0 ? n : 1;
    res->num_classes = m->arch.num_classes < FS_MAX_CLASSES ? m->arch.num_classes : FS_MAX_CLASSES;
    fs_run *r = NULL;
    size_t per = (size_t)ds->c * ds->h * ds->w;
    int K = m->arch.num_classes;
    float *x = fs_alloc((size_t)batch * per * sizeof(float));
    int32_t *lab = malloc((size_t)batch * sizeof(int32_t));
    int32_t *bidx = malloc((size_t)batch * sizeof(int32_t));
    int32_t *pred = malloc((size_t)batch * sizeof(int32_t));
    if (!x || !lab || !bidx || !pred) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory for evaluation");
        goto done;
    }
    if ((rc = fs_run_create(&r, m, batch, d)) != 0)
        goto done;
    for (int s = 0; s < n; s += batch) {
        int b = n - s < batch ? n - s : batch;
        for (int k = 0; k < b; k++)
            bidx[k] = idx ? idx[s + k] : s + k;
        rc = fs_batch_fill(x, lab, ds, bidx, b, m->arch.mean, m->arch.std, NULL, NULL, d);
        if (rc)
            goto done;
        fs_run_forward(r, m, x, b, FS_MODE_EVAL);
        const float *logits = fs_run_out(r, m->logits_node);
        fs_argmax_rows(pred, logits, b, K);
        res->n += b;
        if (ds->labels) {
            int64_t corr = 0;
            res->loss_sum += fs_softmax_xent(NULL, &corr, logits, lab, b, K, 0.0f);
            res->correct += corr;
            for (int k = 0; k < b; k++) {
                if (lab[k] < res->num_classes) {
                    res->class_n[lab[k]]++;
                    res->class_correct[lab[k]] += pred[k] == lab[k];
                }
            }
        }
    }
done:
    fs_run_free(r);
    fs_free(x);
    free(lab);
    free(bidx);
    free(pred);
    return rc;
}

void fs_data_stats(const fs_dataset *ds, float *mean, float *std)
{
    size_t hw = (size_t)ds->h * ds->w;
    for (int c = 0; c < ds->c; c++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < ds->n; i++) {
            const uint8_t *p = fs_dataset_image(ds, i) + (size_t)c * hw;
            uint64_t a = 0, a2 = 0;
            for (size_t k = 0; k < hw; k++) {
                a += p[k];
                a2 += (uint64_t)p[k] * p[k];
            }
            s += (double)a;
            s2 += (double)a2;
        }
        double n = (double)ds->n * (double)hw;
        double mu = s / n / 255.0;
        double var = s2 / n / (255.0 * 255.0) - mu * mu;
        mean[c] = (float)mu;
        std[c] = (float)sqrt(var > 1e-12 ? var : 1e-12);
    }
}

static void format_eta(char *buf, size_t n, double sec)
{
    if (sec < 0 || !isfinite(sec))
        sec = 0;
    int s = (int)(sec + 0.5);
    snprintf(buf, n, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
}

int fs_train_supervised(fs_model *m, const fs_dataset *train, const fs_train_config *c,
                        fs_diag *d)
{
    int rc = fs_learn_check_data(m, train, d);
    if (rc)
        return rc;
    if (!train->labels)
        return fs_diag_set(d, FS_EINVAL, "%s: training needs labels", train->source);
    if (c->batch <= 0 || c->epochs <= 0)
        return fs_diag_set(d, FS_EINVAL, "epochs and batch must be positive");
    int B = c->batch < train->n ? c->batch : train->n;
    long per_epoch = train->n / B;
    long total = per_epoch * c->epochs;
    size_t per = (size_t)train->c * train->h * train->w;
    int K = m->arch.num_classes;
    fs_run *r = NULL;
    fs_optimizer *opt = NULL;
    fs_optim_config oc = {.kind = FS_OPT_SGD, .lr = c->lr, .momentum = c->momentum,
                          .weight_decay = c->weight_decay, .nesterov = c->nesterov};
    float *x = fs_alloc((size_t)B * per * sizeof(float));
    int32_t *lab = malloc((size_t)B * sizeof(int32_t));
    int32_t *perm = malloc((size_t)train->n * sizeof(int32_t));
    if (!x || !lab || !perm) {
        rc = fs_diag_set(d, FS_ENOMEM, "out of memory for training");
        goto done;
    }
    if ((rc = fs_run_create(&r, m, B, d)) != 0 || (rc = fs_optimizer_create(&opt, m, &oc, d)) != 0)
        goto done;
    fs_rng rng, aug_rng;
    fs_rng_seed(&rng, c->seed);
    fs_rng_fork(&aug_rng, &rng, 0xA06);
    double t0 = fs_now_sec();
    long it = 0;
    for (int ep = 0; ep < c->epochs; ep++) {
        for (int i = 0; i < train->n; i++)
            perm[i] = i;
        for (int i = train->n - 1; i > 0; i--) {
            int j = (int)fs_rng_below(&rng, (uint64_t)i + 1);
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        double loss_sum = 0;
        int64_t correct = 0, seen = 0;
        double te = fs_now_sec();
        for (long b = 0; b < per_epoch; b++, it++) {
            rc = fs_batch_fill(x, lab, train, perm + b * B, B, m->arch.mean, m->arch.std, &c->aug,
                               &aug_rng, d);
            if (rc)
                goto done;
            fs_run_forward(r, m, x, B, FS_MODE_TRAIN);
            fs_model_zero_grad(m);
            int64_t corr = 0;
            float *dl = fs_run_dout(r, m->logits_node);
            loss_sum += fs_softmax_xent(dl, &corr, fs_run_out(r, m->logits_node), lab, B, K,
                                        1.0f / (float)B);
            correct += corr;
            seen += B;
            fs_run_backward(r, m);
            fs_optimizer_step(opt, m, fs_lr_cosine(c->lr, it, total));
            if (c->progress && (b % 20 == 19 || b == per_epoch - 1)) {
                double now = fs_now_sec();
                double ips = (double)seen / (now - te);
                char eta[32];
                format_eta(eta, sizeof eta, (double)(total - it - 1) * B / ips);
                fprintf(c->progress, "%sepoch %d/%d  iter %ld/%ld  loss %.4f  acc %.2f%%  %.0f img/s"
                        "  ETA %s%s", c->progress_tty ? "\r" : "", ep + 1, c->epochs, b + 1,
                        per_epoch, loss_sum / (double)seen, 100.0 * (double)correct / (double)seen,
                        ips, eta, c->progress_tty ? "   " : "\n");
                fflush(c->progress);
            }
        }
        if (c->progress) {
            if (c->progress_tty)
                fputc('\n', c->progress);
            if (c->eval) {
                fs_eval_result er;
                if ((rc = fs_evaluate(&er, m, c->eval, NULL, 0, 256, d)) != 0)
                    goto done;
                fprintf(c->progress, "epoch %d/%d  test accuracy %.2f%%  test loss %.4f  "
                        "elapsed %.0f s\n", ep + 1, c->epochs,
                        100.0 * (double)er.correct / (double)er.n, er.loss_sum / (double)er.n,
                        fs_now_sec() - t0);
            }
        }
    }
done:
    fs_run_free(r);
    fs_optimizer_free(opt);
    fs_free(x);
    free(lab);
    free(perm);
    return rc;
}
