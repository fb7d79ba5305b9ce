/* test_compress.c — the engine's data interface and block dropping, on real Fashion-MNIST images:
 * the local source's sums equal a direct per-sample computation (losses, gradients, moments,
 * histograms, evaluation counts); BN re-estimation gives the data's statistics; dropping blocks
 * renumbers and copies the teacher's weights; recovery lowers the objective; bad plans are refused
 * with errors that name the problem. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_models.h"
#include "fs_compress.h"
#include "fs_local.h"

#define FMNIST "idx:/usr/share/datasets/fashion-mnist/t10k"

typedef struct {
    fs_dataset *ds;
    fs_model *teacher;
} fixture;

static void perturb_bn(fs_model *m, uint64_t seed)
{
    fs_test_perturb_bn(m, seed, 0.2f);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    fs_diag d = {0};
    fs_data_opts o = {.max_images = 48};
    if (fs_dataset_open(&f->ds, FMNIST, &o, &d) != 0) {
        fprintf(stderr, "%s\n", d.msg);
        return -1;
    }
    fs_arch a;
    int depths[2] = {3, 2}, widths[2] = {4, 8};
    if (fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 1, 28, 28, 10, &d) ||
        fs_model_build(&f->teacher, &a, NULL, 0, &d))
        return -1;
    f->teacher->arch.mean[0] = 0.286f;
    f->teacher->arch.std[0] = 0.353f;
    fs_model_init(f->teacher, 1);
    perturb_bn(f->teacher, 2);
    /* a trained teacher's BN statistics describe its activations: estimate them on the data */
    fs_local *L = NULL;
    fs_source *src = NULL;
    fs_model *copy = NULL;
    if (fs_model_clone(&copy, f->teacher, &d) || fs_local_create(&L, copy, f->ds, 64, 0, &d) ||
        fs_source_local(&src, L, &d) || fs_bn_reestimate(src, f->teacher, 12, &d)) {
        fprintf(stderr, "%s\n", d.msg);
        return -1;
    }
    fs_source_free(src);
    fs_model_free(copy);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    fs_model_free(f->teacher);
    fs_dataset_free(f->ds);
    free(f);
    return 0;
}

/* A student: the teacher without layer1.1, BN perturbed so it differs. */
static fs_model *make_student(const fixture *f)
{
    fs_diag d = {0};
    fs_arch sa;
    const char *drop[1] = {"layer1.1"};
    assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, drop, 1, &d), 0);
    fs_model *s = NULL;
    assert_int_equal(fs_student_from_teacher(&s, &sa, f->teacher, NULL, 0, &d), 0);
    return s;
}

/* Per-sample reference: batch-1 forward passes, summed in double. */
static void direct_sums(const fixture *f, fs_model *s, fs_objective obj, double *loss,
                        int64_t *correct, int64_t *agree, float *grad_ref, const char *pname)
{
    fs_diag d = {0};
    fs_run *rs = NULL, *rt = NULL;
    assert_int_equal(fs_run_create(&rs, s, 1, &d), 0);
    assert_int_equal(fs_run_create(&rt, f->teacher, 1, &d), 0);
    size_t per = (size_t)f->ds->h * f->ds->w;
    float *x = malloc(per * sizeof(float));
    fs_param *p = fs_model_param(s, pname);
    memset(grad_ref, 0, p->numel * sizeof(float));
    *loss = 0;
    *correct = *agree = 0;
    for (int i = 0; i < f->ds->n; i++) {
        int32_t lab, idx = i;
        assert_int_equal(fs_batch_fill(x, &lab, f->ds, &idx, 1, s->arch.mean, s->arch.std, NULL,
                                       NULL, &d), 0);
        fs_run_forward(rt, f->teacher, x, 1, FS_MODE_EVAL);
        fs_run_forward(rs, s, x, 1, FS_MODE_EVAL);
        fs_model_zero_grad(s);
        size_t nf = fs_node_numel(s, s->feat_node);
        int K = s->arch.num_classes;
        if (obj == FS_OBJ_MIMIC) {
            float *g = fs_run_dout(rs, s->feat_node);
            *loss += fs_mse(g, fs_run_out(rs, s->feat_node), fs_run_out(rt, f->teacher->feat_node),
                            nf, 1.0f / (float)nf) / (double)nf;
        } else if (obj == FS_OBJ_KD) {
            float *g = fs_run_dout(rs, s->logits_node);
            *loss += fs_kl_div_t(g, fs_run_out(rs, s->logits_node),
                                 fs_run_out(rt, f->teacher->logits_node), 1, K, 4.0f, 1.0f);
        } else {
            float *g = fs_run_dout(rs, s->logits_node);
            int64_t c = 0;
            *loss += fs_softmax_xent(g, &c, fs_run_out(rs, s->logits_node), &lab, 1, K, 1.0f);
            *correct += c;
        }
        int32_t ps, pt;
        fs_argmax_rows(&ps, fs_run_out(rs, s->logits_node), 1, K);
        fs_argmax_rows(&pt, fs_run_out(rt, f->teacher->logits_node), 1, K);
        *agree += ps == pt;
        fs_run_backward(rs, s);
        for (size_t k = 0; k < p->numel; k++)
            grad_ref[k] += p->grad[k];
    }
    free(x);
    fs_run_free(rs);
    fs_run_free(rt);
}

static void local_sums_equal_direct_computation(void **state)
{
    fixture *f = *state;
    fs_model *s = make_student(f);
    perturb_bn(s, 3);
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 64, 0, &d), 0);
    const char *pname = "layer1.0.conv2.weight";
    fs_param *p = fs_model_param(s, pname);
    float *ref = malloc(p->numel * sizeof(float));
    fs_objective objs[3] = {FS_OBJ_MIMIC, FS_OBJ_KD, FS_OBJ_CE};
    for (int o = 0; o < 3; o++) {
        double loss;
        int64_t correct, agree;
        direct_sums(f, s, objs[o], &loss, &correct, &agree, ref, pname);
        fs_loss_req req = {.objective = objs[o], .temperature = 4.0f, .mode = FS_MODE_EVAL,
                           .want_grad = 1, .sample = {.batch = 0}};
        fs_loss_sum ls;
        fs_model_zero_grad(s);
        assert_int_equal(fs_local_loss(L, s, &req, f->ds->n, &ls, &d), 0);
        assert_int_equal(ls.count, f->ds->n);
        assert_true(loss > 0);
        assert_true(fabs(ls.loss_sum - loss) <= 1e-4 * fabs(loss));
        double gmax = 0, emax = 0;
        for (size_t k = 0; k < p->numel; k++) {
            gmax = fmax(gmax, fabs(ref[k]));
            emax = fmax(emax, fabs(ref[k] - p->grad[k]));
        }
        assert_true(gmax > 0);
        assert_true(emax <= 1e-4 * gmax + 1e-6);
        if (objs[o] == FS_OBJ_CE) {
            fs_eval_sum ev;
            assert_int_equal(fs_local_evaluate(L, s, &ev, &d), 0);
            assert_int_equal(ev.n, f->ds->n);
            assert_int_equal(ev.correct, correct);
            assert_int_equal(ev.agree, agree);
            assert_true(fabs(ev.loss_sum - loss) <= 1e-4 * loss);
        }
    }
    /* the teacher agrees with itself on every sample */
    fs_eval_sum ev;
    assert_int_equal(fs_local_evaluate(L, f->teacher, &ev, &d), 0);
    assert_int_equal(ev.agree, f->ds->n);
    free(ref);
    fs_local_free(L);
    fs_model_free(s);
}

static void minibatches_are_deterministic_and_proportional(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 64, 0, &d), 0);
    fs_model *s = make_student(f);
    fs_loss_req req = {.objective = FS_OBJ_MIMIC, .mode = FS_MODE_EVAL, .want_grad = 0,
                       .sample = {.batch = 16, .seed = 5, .step = 3, .pad = 2, .hflip = 1}};
    fs_loss_sum a, b, c;
    assert_int_equal(fs_local_loss(L, s, &req, f->ds->n, &a, &d), 0);
    assert_int_equal(fs_local_loss(L, s, &req, f->ds->n, &b, &d), 0);
    assert_int_equal(a.count, 16);
    assert_true(a.loss_sum == b.loss_sum);
    req.sample.step = 4;
    assert_int_equal(fs_local_loss(L, s, &req, f->ds->n, &c, &d), 0);
    assert_true(c.loss_sum != a.loss_sum);
    /* a site holding a quarter of the federation's samples draws a quarter of the batch */
    assert_int_equal(fs_local_loss(L, s, &req, 4 * f->ds->n, &c, &d), 0);
    assert_int_equal(c.count, 4);
    fs_local_free(L);
    fs_model_free(s);
}

static void moments_histograms_and_bn_reestimation(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 32, 0, &d), 0);
    fs_model *s = make_student(f);
    int bn1 = fs_model_node(s, "bn1"), conv1 = fs_model_node(s, "conv1");
    assert_true(bn1 > 0 && conv1 >= 0);
    /* direct: conv1 outputs over all samples */
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, s, f->ds->n, &d), 0);
    size_t per = (size_t)f->ds->h * f->ds->w;
    float *x = malloc((size_t)f->ds->n * per * sizeof(float));
    int32_t *idx = malloc((size_t)f->ds->n * sizeof(int32_t));
    for (int i = 0; i < f->ds->n; i++)
        idx[i] = i;
    assert_int_equal(fs_batch_fill(x, NULL, f->ds, idx, f->ds->n, s->arch.mean, s->arch.std, NULL,
                                   NULL, &d), 0);
    fs_run_forward(r, s, x, f->ds->n, FS_MODE_EVAL);
    const fs_node *cn = &s->nodes[conv1];
    int C = cn->C, HW = cn->H * cn->W;
    double *dm = calloc((size_t)C, sizeof(double)), *dv = calloc((size_t)C, sizeof(double));
    const float *y = fs_run_out(r, conv1);
    for (int i = 0; i < f->ds->n; i++)
        for (int c = 0; c < C; c++)
            for (int k = 0; k < HW; k++) {
                double v = y[((size_t)i * C + c) * HW + k];
                dm[c] += v;
                dv[c] += v * v;
            }
    double sum[64], sumsq[64];
    int64_t count;
    assert_int_equal(fs_local_moments(L, s, &bn1, 1, sum, sumsq, &count, &d), 0);
    assert_int_equal(count, (int64_t)f->ds->n * HW);
    for (int c = 0; c < C; c++) {
        assert_true(fabs(sum[c] - dm[c]) <= 1e-3 * (fabs(dm[c]) + 1));
        assert_true(fabs(sumsq[c] - dv[c]) <= 1e-3 * (dv[c] + 1));
    }
    /* histogram of conv1's output: every value lands in a bin */
    float lo = -3, hi = 3;
    int64_t counts[16];
    assert_int_equal(fs_local_histogram(L, s, &conv1, 1, &lo, &hi, 16, counts, &d), 0);
    int64_t tot = 0;
    for (int i = 0; i < 16; i++)
        tot += counts[i];
    assert_int_equal(tot, (int64_t)f->ds->n * C * HW);

    /* BN re-estimation: bn1's running statistics become the data's */
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    assert_int_equal(fs_bn_reestimate(src, s, 2, &d), 0);
    const float *rm = fs_model_param(s, "bn1.running_mean")->data;
    const float *rv = fs_model_param(s, "bn1.running_var")->data;
    double n = (double)count;
    for (int c = 0; c < C; c++) {
        double mu = dm[c] / n, var = (dv[c] / n - mu * mu) * n / (n - 1);
        assert_true(fabs(rm[c] - mu) <= 1e-4 * (fabs(mu) + 1));
        assert_true(fabs(rv[c] - var) <= 1e-3 * (var + 1e-3));
    }
    fs_source_free(src);
    free(dm);
    free(dv);
    free(x);
    free(idx);
    fs_run_free(r);
    fs_model_free(s);
}

static void dropping_blocks_renumbers_and_copies(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_arch sa;
    const char *drop[2] = {"layer1.1", "layer2.1"};
    assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, drop, 2, &d), 0);
    assert_int_equal(sa.stages[0].n_blocks, 2);
    assert_int_equal(sa.stages[1].n_blocks, 1);
    assert_string_equal(sa.stages[0].blocks[1].origin, "layer1.2");
    fs_model *s = NULL;
    assert_int_equal(fs_student_from_teacher(&s, &sa, f->teacher, NULL, 0, &d), 0);
    fs_param *ps = fs_model_param(s, "layer1.1.conv1.weight");
    fs_param *pt = fs_model_param(f->teacher, "layer1.2.conv1.weight");
    assert_memory_equal(ps->data, pt->data, pt->numel * sizeof(float));
    assert_null(fs_model_param(s, "layer1.2.conv1.weight"));
    assert_true(fs_model_num_params(s) < fs_model_num_params(f->teacher));
    assert_true(fs_model_flops(s) < fs_model_flops(f->teacher));
    fs_model_free(s);
    /* nothing dropped: the student is the teacher */
    assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, NULL, 0, &d), 0);
    assert_int_equal(fs_student_from_teacher(&s, &sa, f->teacher, NULL, 0, &d), 0);
    assert_memory_equal(s->param_block, f->teacher->param_block,
                        f->teacher->param_floats * sizeof(float));
    fs_model_free(s);
    /* bad plans */
    const char *ds[1] = {"layer2.0"};
    assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, ds, 1, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer2.0"));
    const char *unknown[1] = {"layer7.3"};
    assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, unknown, 1, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer7.3"));
}

static void recovery_lowers_the_objective(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 64, 0, &d), 0);
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    fs_model *s = make_student(f);
    double before, after;
    assert_int_equal(fs_source_set_student(src, s, &d), 0);
    assert_int_equal(fs_objective_mean(src, s, FS_OBJ_MIMIC, 0, &before, &d), 0);
    fs_recover_config c;
    fs_recover_defaults(&c);
    c.iterations = 40;
    c.batch = 0;
    c.pad = c.hflip = 0;
    c.lr = 0.02f;
    int rc = fs_recover(src, s, &c, "test", NULL, NULL, NULL, &d);
    if (rc)
        print_message("%s\n", d.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(fs_objective_mean(src, s, FS_OBJ_MIMIC, 0, &after, &d), 0);
    assert_true(before > 0);
    assert_true(after < 0.95 * before);
    fs_source_free(src);
    fs_model_free(s);
}

static float max_weight_diff(const fs_model *a, const fs_model *b)
{
    float m = 0;
    for (size_t k = 0; k < a->param_floats; k++) {
        float e = fabsf(a->param_block[k] - b->param_block[k]);
        if (e > m)
            m = e;
    }
    return m;
}

static fs_source *local_source(const fixture *f)
{
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 64, 0, &d), 0);
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    return src;
}

/* One site, every sample, no momentum, one local step: a FedAvg round is one step of plain SGD,
 * so FedAvg and FedSGD recoveries agree to float precision; a local update leaves the student's
 * weights as they were and returns n * delta with n the site's samples. */
static void fedavg_one_step_equals_fedsgd(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_source *src = local_source(f);
    fs_model *a = make_student(f), *b = NULL, *c0 = NULL;
    assert_int_equal(fs_model_clone(&b, a, &d), 0);
    assert_int_equal(fs_model_clone(&c0, a, &d), 0);
    fs_model_set_trainable(a, 1);
    fs_model_set_trainable(b, 1);
    /* the local update alone */
    fs_update_req q = {.objective = FS_OBJ_MIMIC, .mode = FS_MODE_EVAL, .sample = {.batch = 0},
                       .steps = 1, .lr = 0.02f};
    fs_update_sum us;
    assert_int_equal(fs_source_local_update(src, a, &q, &us, &d), 0);
    assert_int_equal(us.n, f->ds->n);
    assert_int_equal(us.loss_count, f->ds->n);
    assert_true(us.loss_sum > 0);
    assert_memory_equal(a->param_block, c0->param_block, a->param_floats * sizeof(float));
    /* delta / n == -lr * mean gradient (no weight decay) */
    fs_loss_req lq = {.objective = FS_OBJ_MIMIC, .mode = FS_MODE_EVAL, .want_grad = 1,
                      .sample = {.batch = 0}};
    fs_loss_sum ls;
    fs_model_zero_grad(b);
    assert_int_equal(fs_source_loss(src, b, &lq, &ls, &d), 0);
    assert_true(fabs(ls.loss_sum - us.loss_sum) <= 1e-9 * fabs(ls.loss_sum));
    /* delta = (w - lr g) - w in float: exact up to the rounding of w - lr g, half an ulp of w */
    float gmax = 0, emax = 0, wmax = 0;
    for (int i = 0; i < a->n_params; i++) {
        const fs_param *p = &a->params[i];
        if (!p->grad || !p->trainable)
            continue;
        size_t off = (size_t)(p->grad - a->grad_block);
        for (size_t k = 0; k < p->numel; k++) {
            float want = -0.02f * b->grad_block[off + k] / (float)ls.count;
            float got = a->grad_block[off + k] / (float)us.n;
            gmax = fmaxf(gmax, fabsf(want));
            emax = fmaxf(emax, fabsf(got - want));
            wmax = fmaxf(wmax, fabsf(p->data[k]));
        }
    }
    print_message("# one local step: max |delta/n + lr g| = %.3g (max |lr g| = %.3g, max |w| = "
                  "%.3g)\n", (double)emax, (double)gmax, (double)wmax);
    assert_true(gmax > 0 && emax <= 4 * FLT_EPSILON * wmax);
    /* whole recoveries: FedSGD (momentum 0) vs FedAvg E=1 */
    fs_recover_config c;
    fs_recover_defaults(&c);
    c.iterations = 8;
    c.batch = 0;
    c.pad = c.hflip = 0;
    c.momentum = 0;
    assert_int_equal(fs_recover(src, b, &c, "fedsgd", NULL, NULL, NULL, &d), 0);
    c.local_steps = 1;
    int rc = fs_recover(src, a, &c, "fedavg", NULL, NULL, NULL, &d);
    if (rc)
        print_message("%s\n", d.msg);
    assert_int_equal(rc, 0);
    float diff = max_weight_diff(a, b), moved = max_weight_diff(b, c0);
    print_message("# 8 rounds, E=1: FedAvg vs FedSGD max |weight difference| = %.3g (moved %.3g)\n",
                  (double)diff, (double)moved);
    assert_true(moved > 1e-4f);
    assert_true(diff <= 1e-5f && diff <= 1e-2f * moved);
    fs_model_free(a);
    fs_model_free(b);
    fs_model_free(c0);
    fs_source_free(src);
}

/* Checkpoint hooks over FedAvg rounds: a snapshot after round K and a resume from it end where an
 * uninterrupted run ends (the state is the weights; nothing else carries between rounds). */
typedef struct {
    long at;
    long done;
    float *w;
    size_t n;
} mem_ckpt;

static int mem_checkpoint(void *ud, fs_model *s, fs_optimizer *opt, long done, long total,
                          double loss, fs_diag *d)
{
    (void)opt;
    (void)total;
    (void)loss;
    (void)d;
    mem_ckpt *m = ud;
    if (done == m->at) {
        memcpy(m->w, s->param_block, m->n * sizeof(float));
        m->done = done;
        return FS_ECANCELED;    /* "killed" right after the snapshot */
    }
    return 0;
}

static int mem_resume(void *ud, fs_model *s, fs_optimizer *opt, long total, long *start,
                      fs_diag *d)
{
    (void)opt;
    (void)total;
    (void)d;
    mem_ckpt *m = ud;
    *start = 0;
    if (m->done) {
        memcpy(s->param_block, m->w, m->n * sizeof(float));
        *start = m->done;
        m->at = -1;
    }
    return 0;
}

static void no_before_step(void *ud, fs_model *s, long it, float lr)
{
    (void)ud;
    (void)s;
    (void)it;
    (void)lr;
}

/* E > 1 local steps on minibatches with momentum lower the objective; resuming from a checkpoint
 * gives exactly the uninterrupted result. */
static void fedavg_lowers_the_objective_and_resumes(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_source *src = local_source(f);
    fs_model *s = make_student(f), *r = NULL;
    assert_int_equal(fs_model_clone(&r, s, &d), 0);
    double before, after;
    assert_int_equal(fs_source_set_student(src, s, &d), 0);
    assert_int_equal(fs_objective_mean(src, s, FS_OBJ_MIMIC, 0, &before, &d), 0);
    fs_recover_config c;
    fs_recover_defaults(&c);
    c.iterations = 10;
    c.local_steps = 4;
    c.batch = 16;
    c.pad = 0;
    c.hflip = 1;
    fs_model_set_trainable(s, 1);
    int rc = fs_recover(src, s, &c, "fedavg", NULL, NULL, NULL, &d);
    if (rc)
        print_message("%s\n", d.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(fs_objective_mean(src, s, FS_OBJ_MIMIC, 0, &after, &d), 0);
    print_message("# FedAvg E=4, 10 rounds: objective %.5f -> %.5f\n", before, after);
    assert_true(before > 0);
    assert_true(after < 0.95 * before);
    /* interrupted after round 4, resumed */
    mem_ckpt m = {.at = 4, .n = r->param_floats};
    m.w = malloc(m.n * sizeof(float));
    fs_recover_hooks h = {mem_resume, mem_checkpoint, &m};
    c.hooks = &h;
    fs_model_set_trainable(r, 1);
    assert_int_equal(fs_recover(src, r, &c, "fedavg", NULL, NULL, NULL, &d), FS_ECANCELED);
    assert_int_equal(m.done, 4);
    assert_int_equal(fs_recover(src, r, &c, "fedavg", NULL, NULL, NULL, &d), 0);
    assert_memory_equal(r->param_block, s->param_block, s->param_floats * sizeof(float));
    /* a before-step hook needs FedSGD */
    c.hooks = NULL;
    c.before_step = no_before_step;
    assert_int_equal(fs_recover(src, r, &c, "fedavg", NULL, NULL, NULL, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "FedSGD"));
    free(m.w);
    fs_model_free(s);
    fs_model_free(r);
    fs_source_free(src);
}

/* Latency proportional to FLOPs: deterministic, so the test does not depend on the load. */
static int flops_latency(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d)
{
    (void)ud;
    (void)reps;
    (void)d;
    *sec = 1e-9 * (double)fs_model_flops(m) * batch;
    return 0;
}

/* The same, but the first measurement (the teacher's, at the start) twice as slow: as a busy
 * machine made it. The teacher's later measurements must be the reference. */
static int flops_latency_slow_start(void *ud, double *sec, fs_model *m, int batch, int reps,
                                    fs_diag *d)
{
    int *calls = ud;
    flops_latency(NULL, sec, m, batch, reps, d);
    if ((*calls)++ == 0)
        *sec *= 2;
    return 0;
}

static void practise_scores_and_choice(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->teacher, f->ds, 64, 0, &d), 0);
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    fs_practise_config pc;
    fs_practise_defaults(&pc);
    pc.iterations = 10;
    pc.batch = 0;
    pc.latency_batch = 8;
    pc.latency_reps = 3;
    pc.latency = flops_latency;
    fs_block_score sc[16];
    int n = 0;
    assert_int_equal(fs_practise_score(src, f->teacher, &pc, sc, &n, NULL, NULL, &d), 0);
    /* candidates: identity-shortcut blocks layer1.0..2 and layer2.1 */
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) {
        assert_true(sc[i].loss_before > 0);
        assert_true(sc[i].recoverability <= sc[i].loss_before * 1.0001);
    }
    int chosen[16], nc;
    assert_int_equal(fs_practise_choose(sc, n, 1.0, chosen, &nc, &d), 0);
    assert_int_equal(nc, 0);
    assert_int_equal(fs_practise_choose(sc, n, 0.01, chosen, &nc, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "cannot be met"));
    assert_int_equal(fs_practise_choose(sc, n, 1.5, chosen, &nc, &d), FS_EINVAL);
    /* the saving is the FLOPs saved (latency proportional to FLOPs), with or without a slow
       first measurement of the teacher */
    int calls = 0;
    pc.latency = flops_latency_slow_start;
    pc.latency_ud = &calls;
    pc.iterations = 1;
    fs_block_score sc2[16];
    int n2 = 0;
    assert_int_equal(fs_practise_score(src, f->teacher, &pc, sc2, &n2, NULL, NULL, &d), 0);
    assert_int_equal(n2, n);
    double ft = (double)fs_model_flops(f->teacher);
    for (int i = 0; i < n; i++) {
        const char *names[1] = {sc[i].name};
        fs_arch sa;
        fs_model *plain = NULL;
        assert_int_equal(fs_arch_drop_blocks(&sa, &f->teacher->arch, names, 1, &d), 0);
        assert_int_equal(fs_student_from_teacher(&plain, &sa, f->teacher, NULL, 0, &d), 0);
        double want = (ft - (double)fs_model_flops(plain)) / ft * 100.0;
        fs_model_free(plain);
        assert_true(fabs(sc[i].latency_saved_pct - want) < 1e-9);
        assert_true(fabs(sc2[i].latency_saved_pct - want) < 1e-9);
    }
    fs_source_free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(local_sums_equal_direct_computation),
        cmocka_unit_test(minibatches_are_deterministic_and_proportional),
        cmocka_unit_test(moments_histograms_and_bn_reestimation),
        cmocka_unit_test(dropping_blocks_renumbers_and_copies),
        cmocka_unit_test(recovery_lowers_the_objective),
        cmocka_unit_test(fedavg_one_step_equals_fedsgd),
        cmocka_unit_test(fedavg_lowers_the_objective_and_resumes),
        cmocka_unit_test(practise_scores_and_choice),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
