/* test_prune_lowrank.c — channel pruning and low-rank factorization on small ResNets run on real
 * Fashion-MNIST images: pruning nothing / full rank reproduce the teacher; channels whose BN scale
 * is zero are removed without changing the outputs (beta folded into the next BN / the fc) where
 * the fold is exact; residual groups share one index set; FLOPs / params targets are met and
 * counted exactly; impossible targets are refused with a clear message; energy ranks; sparsity
 * training; factorized models save and load; the pipeline runs both methods end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_models.h"
#include "fs_compress.h"
#include "fs_local.h"
#include "fs_pipeline.h"

#define FMNIST "idx:/usr/share/datasets/fashion-mnist/t10k"

typedef struct {
    fs_dataset *ds;
    float *x;           /* every image, normalised */
    int n;
    fs_model *basic;    /* CIFAR-stem BasicBlock ResNet, depths 2,2, widths 8,16 */
    fs_model *bneck;    /* CIFAR-stem Bottleneck ResNet, depths 2,2, inner widths 4,8 */
} fixture;

static void perturb_bn(fs_model *m, uint64_t seed)
{
    fs_test_perturb_bn(m, seed, 0.3f);
}

static fs_model *make_resnet(fs_block_type bt, const int *widths, uint64_t seed)
{
    fs_diag d = {0};
    fs_arch a;
    int depths[2] = {2, 2};
    fs_model *m = NULL;
    if (fs_arch_resnet(&a, bt, FS_STEM_CIFAR, 2, depths, widths, 1, 28, 28, 10, &d) ||
        fs_model_build(&m, &a, NULL, 0, &d)) {
        fprintf(stderr, "%s\n", d.msg);
        return NULL;
    }
    m->arch.mean[0] = 0.286f;
    m->arch.std[0] = 0.353f;
    fs_model_init(m, seed);
    perturb_bn(m, seed + 1);
    return m;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    fs_diag d = {0};
    fs_data_opts o = {.max_images = 32};
    if (fs_dataset_open(&f->ds, FMNIST, &o, &d) != 0) {
        fprintf(stderr, "%s\n", d.msg);
        return -1;
    }
    int wb[2] = {8, 16}, wn[2] = {4, 8};
    f->basic = make_resnet(FS_BLOCK_BASIC, wb, 1);
    f->bneck = make_resnet(FS_BLOCK_BOTTLENECK, wn, 3);
    if (!f->basic || !f->bneck)
        return -1;
    /* running statistics of the data, as a trained teacher has (exact: one pass per BN) */
    fs_model *ms[2] = {f->basic, f->bneck};
    for (int k = 0; k < 2; k++) {
        fs_local *L = NULL;
        fs_source *src = NULL;
        int nbn = 0;
        for (int i = 0; i < ms[k]->n_nodes; i++)
            nbn += ms[k]->nodes[i].op == FS_NODE_BN;
        if (fs_local_create(&L, ms[k], f->ds, 32, 0, &d) || fs_source_local(&src, L, &d) ||
            fs_bn_reestimate(src, ms[k], nbn, &d)) {
            fprintf(stderr, "%s\n", d.msg);
            return -1;
        }
        fs_source_free(src);
    }
    f->n = f->ds->n;
    f->x = malloc((size_t)f->n * 28 * 28 * sizeof(float));
    int32_t *idx = malloc((size_t)f->n * sizeof(int32_t));
    for (int i = 0; i < f->n; i++)
        idx[i] = i;
    int rc = fs_batch_fill(f->x, NULL, f->ds, idx, f->n, f->basic->arch.mean, f->basic->arch.std,
                           NULL, NULL, &d);
    free(idx);
    if (rc) {
        fprintf(stderr, "%s\n", d.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    fs_model_free(f->basic);
    fs_model_free(f->bneck);
    fs_dataset_free(f->ds);
    free(f->x);
    free(f);
    return 0;
}

/* logits of every image, [n, 10], owned */
static float *logits(const fixture *f, fs_model *m)
{
    fs_diag d = {0};
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, m, f->n, &d), 0);
    fs_run_forward(r, m, f->x, f->n, FS_MODE_EVAL);
    float *out = malloc((size_t)f->n * 10 * sizeof(float));
    memcpy(out, fs_run_out(r, m->logits_node), (size_t)f->n * 10 * sizeof(float));
    fs_run_free(r);
    return out;
}

static double max_diff(const fixture *f, fs_model *a, fs_model *b, double *scale)
{
    float *la = logits(f, a), *lb = logits(f, b);
    double e = 0, s = 0;
    for (int i = 0; i < f->n * 10; i++) {
        e = fmax(e, fabs((double)la[i] - lb[i]));
        s = fmax(s, fabs((double)la[i]));
    }
    free(la);
    free(lb);
    if (scale)
        *scale = s;
    return e;
}

static void set_gamma(fs_model *m, const char *bn, int c, float v)
{
    char nm[128];
    snprintf(nm, sizeof nm, "%s.weight", bn);
    fs_param *p = fs_model_param(m, nm);
    assert_non_null(p);
    assert_true(c < (int)p->numel);
    p->data[c] = v;
}

static void pruning_nothing_reproduces_the_teacher(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    pc.threshold = -1.0f;   /* no score is below it */
    fs_model *teachers[2] = {f->basic, f->bneck};
    for (int k = 0; k < 2; k++) {
        fs_model *t = teachers[k], *s = NULL;
        fs_layer_change *ch = NULL;
        int nch = 0;
        assert_int_equal(fs_prune_channels(&s, t, &pc, FS_COST_FLOPS, 0, &ch, &nch, &d), 0);
        assert_int_equal(s->param_floats, t->param_floats);
        assert_memory_equal(s->param_block, t->param_block, t->param_floats * sizeof(float));
        assert_true(max_diff(f, t, s, NULL) == 0.0);
        assert_true(nch > 0);
        for (int i = 0; i < nch; i++)
            assert_int_equal(ch[i].before, ch[i].after);
        free(ch);
        fs_model_free(s);
        /* a target of 1 removes nothing either */
        assert_int_equal(fs_prune_channels(&s, t, &pc, FS_COST_PARAMS, 1.0, NULL, NULL, &d), 0);
        assert_int_equal(fs_model_num_params(s), fs_model_num_params(t));
        fs_model_free(s);
    }
}

/* Bottleneck: every consumer of a removable channel is a 1x1 conv or the fc, where the fold is
 * exact. Zero gamma in bn2 channels (read by conv3, 1x1) and in whole residual groups. */
static void zero_gamma_channels_are_removed_exactly(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *t = NULL;
    assert_int_equal(fs_model_clone(&t, f->bneck, &d), 0);
    const char *blocks[4] = {"layer1.0", "layer1.1", "layer2.0", "layer2.1"};
    char nm[64];
    for (int b = 0; b < 4; b++) {
        snprintf(nm, sizeof nm, "%s.bn2", blocks[b]);
        set_gamma(t, nm, 1, 0.0f);
        set_gamma(t, nm, 2, 0.0f);
    }
    /* stream of stage 1 (16 channels): channel 5 and 9; stage 2 (32): channel 0; stem (4): 3 */
    const char *g1[3] = {"layer1.0.bn3", "layer1.0.downsample.1", "layer1.1.bn3"};
    const char *g2[3] = {"layer2.0.bn3", "layer2.0.downsample.1", "layer2.1.bn3"};
    for (int i = 0; i < 3; i++) {
        set_gamma(t, g1[i], 5, 0.0f);
        set_gamma(t, g1[i], 9, 0.0f);
        set_gamma(t, g2[i], 0, 0.0f);
    }
    set_gamma(t, "bn1", 3, 0.0f);
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    pc.threshold = 0.0f;
    fs_model *s = NULL, *s_raw = NULL;
    assert_int_equal(fs_prune_channels(&s, t, &pc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    assert_int_equal(s->arch.stem_width, 3);
    assert_int_equal(s->arch.stages[0].width, 14);
    assert_int_equal(s->arch.stages[1].width, 31);
    assert_int_equal(s->arch.stages[0].blocks[1].mid[1], 2);
    assert_int_equal(s->arch.stages[1].blocks[0].mid[1], 6);
    assert_int_equal(s->arch.stages[1].blocks[0].mid[0], 8);
    double scale, e = max_diff(f, t, s, &scale);
    print_message("bottleneck, zero-gamma channels removed: max |dlogit| %.3g (logits up to %.3g)\n",
                  e, scale);
    assert_true(scale > 0.1);
    assert_true(e <= 1e-4 * fmax(1.0, scale));
    /* without the fold the outputs change: the test can tell */
    pc.compensate = 0;
    assert_int_equal(fs_prune_channels(&s_raw, t, &pc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    double e_raw = max_diff(f, t, s_raw, NULL);
    print_message("  without beta folding: %.3g\n", e_raw);
    assert_true(e_raw > 100 * e && e_raw > 1e-3);
    fs_model_free(s_raw);
    fs_model_free(s);
    fs_model_free(t);
}

/* BasicBlock: conv2 is 3x3 with zero padding, so the fold of a removed bn1 channel is exact inside
 * and inexact on the one-pixel border; it must still bring the outputs much closer. */
static void compensation_before_a_padded_conv_is_approximate(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *t = NULL;
    assert_int_equal(fs_model_clone(&t, f->basic, &d), 0);
    set_gamma(t, "layer1.0.bn1", 0, 0.0f);
    set_gamma(t, "layer1.1.bn1", 4, 0.0f);
    set_gamma(t, "layer2.1.bn1", 7, 0.0f);
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    fs_model *s = NULL, *s_raw = NULL;
    assert_int_equal(fs_prune_channels(&s, t, &pc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    assert_int_equal(s->arch.stages[0].blocks[0].mid[0], 7);
    assert_int_equal(s->arch.stages[1].blocks[1].mid[0], 15);
    pc.compensate = 0;
    assert_int_equal(fs_prune_channels(&s_raw, t, &pc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    double e = max_diff(f, t, s, NULL), e_raw = max_diff(f, t, s_raw, NULL);
    print_message("basic block, 3x3 consumer: max |dlogit| %.3g with folding, %.3g without\n", e,
                  e_raw);
    assert_true(e < 0.5 * e_raw);
    fs_model_free(s);
    fs_model_free(s_raw);
    fs_model_free(t);
}

static void groups_share_one_index_set(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *t = NULL;
    assert_int_equal(fs_model_clone(&t, f->basic, &d), 0);
    /* tag each channel of the stage-1 stream in every BN of the group (stem bn1 included, since
     * layer1.0 has no downsample) through running_var = 1 + channel, which folding leaves alone */
    const char *g[3] = {"bn1", "layer1.0.bn2", "layer1.1.bn2"};
    for (int i = 0; i < 3; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "%s.running_var", g[i]);
        fs_param *p = fs_model_param(t, nm);
        for (size_t c = 0; c < p->numel; c++)
            p->data[c] = 1.0f + (float)c;
        /* channels 2 and 5 of the stream score lowest: they go first */
        set_gamma(t, g[i], 2, 0.05f);
        set_gamma(t, g[i], 5, 0.1f);
    }
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    fs_model *s = NULL;
    fs_layer_change *ch = NULL;
    int nch = 0;
    assert_int_equal(fs_prune_channels(&s, t, &pc, FS_COST_FLOPS, 0.5, &ch, &nch, &d), 0);
    assert_int_equal(s->arch.stem_width, s->arch.stages[0].width);
    assert_true(s->arch.stages[0].width <= 6);
    const float *tag = fs_model_param(s, "bn1.running_var")->data;
    for (int c = 0; c < s->arch.stages[0].width; c++)
        assert_true(tag[c] != 3.0f && tag[c] != 6.0f);  /* channels 2 and 5 are gone */
    const float *ref = fs_model_param(s, "bn1.running_var")->data;
    for (int i = 1; i < 3; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "%s.running_var", g[i]);
        assert_memory_equal(fs_model_param(s, nm)->data, ref,
                            (size_t)s->arch.stages[0].width * sizeof(float));
    }
    /* the changes: the merged stream is named after both, widths match the architecture */
    int found = 0;
    for (int i = 0; i < nch; i++)
        if (!strcmp(ch[i].name, "stream conv1+layer1")) {
            found = 1;
            assert_int_equal(ch[i].before, 8);
            assert_int_equal(ch[i].after, s->arch.stages[0].width);
        }
    assert_true(found);
    /* keep_output: the stream before global pooling keeps its width */
    fs_model *s2 = NULL;
    pc.keep_output = 1;
    assert_int_equal(fs_prune_channels(&s2, t, &pc, FS_COST_FLOPS, 0.5, NULL, NULL, &d), 0);
    assert_int_equal(s2->arch.stages[1].width, 16);
    assert_true(fs_model_flops(s2) <= 0.5 * (double)fs_model_flops(t));
    fs_model_free(s2);
    /* the student runs (all shapes agree) */
    double scale;
    max_diff(f, t, s, &scale);
    assert_true(isfinite(scale));
    free(ch);
    fs_model_free(s);
    fs_model_free(t);
}

static void targets_are_met_and_counted_exactly(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *teachers[2] = {f->basic, f->bneck};
    const double targets[3] = {0.8, 0.5, 0.3};
    for (int k = 0; k < 2; k++)
        for (int crit = 0; crit < 2; crit++)
            for (int i = 0; i < 3; i++)
                for (int kind = FS_COST_FLOPS; kind <= FS_COST_PARAMS; kind++) {
                    fs_model *t = teachers[k], *s = NULL;
                    fs_prune_config pc;
                    fs_prune_defaults(&pc);
                    pc.criterion = crit ? FS_PRUNE_L1 : FS_PRUNE_BN_GAMMA;
                    int rc = fs_prune_channels(&s, t, &pc, (fs_cost_kind)kind, targets[i], NULL,
                                               NULL, &d);
                    if (rc)
                        print_message("%s\n", d.msg);
                    assert_int_equal(rc, 0);
                    double r = kind == FS_COST_FLOPS
                                   ? (double)fs_model_flops(s) / (double)fs_model_flops(t)
                                   : (double)fs_model_num_params(s) /
                                         (double)fs_model_num_params(t);
                    assert_true(r <= targets[i]);
                    assert_true(r > targets[i] - 0.1);   /* greedy: stops at the first fit */
                    fs_model_free(s);
                }
}

static void impossible_targets_and_models_are_refused(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    fs_model *s = NULL;
    pc.min_fraction = 0.5f;     /* every layer keeps half its width: about 1/4 of the FLOPs */
    assert_int_equal(fs_prune_channels(&s, f->basic, &pc, FS_COST_FLOPS, 0.1, NULL, NULL, &d),
                     FS_EINVAL);
    assert_null(s);
    print_message("%s\n", d.msg);
    assert_non_null(strstr(d.msg, "minimum widths"));
    assert_non_null(strstr(d.msg, "flops=0.100"));
    assert_int_equal(fs_prune_channels(&s, f->basic, &pc, FS_COST_FLOPS, 0.3, NULL, NULL, &d), 0);
    fs_model_free(s);
    s = NULL;
    fs_prune_defaults(&pc);
    assert_int_equal(fs_prune_channels(&s, f->basic, &pc, FS_COST_FLOPS, 1.5, NULL, NULL, &d),
                     FS_EINVAL);
    /* a factorized model is not pruned */
    const char *nm[1] = {"layer1.0.conv1"};
    int rk[1] = {3};
    fs_model *fz = NULL;
    assert_int_equal(fs_lowrank_apply(&fz, f->basic, nm, rk, 1, &d), 0);
    assert_int_equal(fs_prune_channels(&s, fz, &pc, FS_COST_FLOPS, 0.5, NULL, NULL, &d),
                     FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer1.0.conv1"));
    fs_model_free(fz);
    /* an MLP is not a ResNet */
    fs_arch a;
    int hidden[1] = {16};
    fs_model *mlp = NULL;
    assert_int_equal(fs_arch_mlp(&a, 1, hidden, 1, 28, 28, 10, &d), 0);
    assert_int_equal(fs_model_build(&mlp, &a, NULL, 0, &d), 0);
    assert_int_equal(fs_prune_channels(&s, mlp, &pc, FS_COST_FLOPS, 0.5, NULL, NULL, &d),
                     FS_EINVAL);
    assert_non_null(strstr(d.msg, "ResNet"));
    fs_model_free(mlp);
}

static void sparsity_training_zeroes_scales(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->basic, f->ds, 32, 0, &d), 0);
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    fs_model *m = NULL;
    assert_int_equal(fs_model_clone(&m, f->basic, &d), 0);
    fs_recover_config rc;
    fs_recover_defaults(&rc);
    rc.iterations = 8;
    rc.batch = 0;
    rc.pad = rc.hflip = 0;
    rc.lr = 0.01f;      /* this untrained teacher's mimic loss is unstable at 0.05 */
    rc.objective = FS_OBJ_MIMIC;
    rc.milestones[0] = rc.milestones[1] = 1.0f;     /* constant lr: the threshold is 8 lr lambda */
    fs_sparsity_config sc = {.kind = FS_SPARSITY_PROX_L1, .lambda = 12.0f, .a = 1.0f};
    fs_model_set_trainable(m, 1);
    int r = fs_prune_sparsify(src, m, &sc, &rc, NULL, NULL, &d);
    if (r)
        print_message("%s\n", d.msg);
    assert_int_equal(r, 0);
    int zeros = 0, total = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].kind == FS_PARAM_BN_WEIGHT)
            for (size_t k = 0; k < m->params[i].numel; k++) {
                zeros += m->params[i].data[k] == 0.0f;
                total++;
            }
    print_message("proximal L1: %d of %d BN scales exactly zero\n", zeros, total);
    assert_true(zeros > total / 5 && zeros < total);
    /* the sub-gradient forms shrink the scales */
    fs_model *m2 = NULL;
    assert_int_equal(fs_model_clone(&m2, f->basic, &d), 0);
    fs_model_set_trainable(m2, 1);
    sc.kind = FS_SPARSITY_TL1;
    sc.lambda = 2.0f;
    assert_int_equal(fs_prune_sparsify(src, m2, &sc, &rc, NULL, NULL, &d), 0);
    double s0 = 0, s1 = 0;
    for (int i = 0; i < m2->n_params; i++)
        if (m2->params[i].kind == FS_PARAM_BN_WEIGHT)
            for (size_t k = 0; k < m2->params[i].numel; k++) {
                s0 += fabs(f->basic->params[i].data[k]);
                s1 += fabs(m2->params[i].data[k]);
            }
    assert_true(s1 < 0.9 * s0);
    sc.kind = (fs_sparsity_kind)9;
    assert_int_equal(fs_prune_sparsify(src, m2, &sc, &rc, NULL, NULL, &d), FS_EINVAL);
    /* pruning the exactly-zero channels by threshold keeps at least the minimum widths */
    fs_prune_config pc;
    fs_prune_defaults(&pc);
    fs_model *s = NULL;
    assert_int_equal(fs_prune_channels(&s, m, &pc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    assert_true(fs_model_flops(s) < fs_model_flops(m));
    fs_model_free(s);
    fs_model_free(m);
    fs_model_free(m2);
    fs_source_free(src);
}

/* A deterministic "latency": proportional to FLOPs plus a fixed overhead, so a plan made by FLOPs
 * alone misses a latency target and must be tightened. */
static int fake_latency(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d)
{
    (void)d;
    (void)reps;
    (*(int *)ud)++;
    *sec = (double)batch * (1e-9 * (double)fs_model_flops(m) + 2e-3);
    return 0;
}

static void latency_targets_are_measured_and_met(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    double t_sec;
    int calls = 0;
    fake_latency(&calls, &t_sec, f->basic, 1, 1, &d);
    for (int k = 0; k < 2; k++) {
        fs_model *s = NULL;
        int rc;
        calls = 0;
        if (k == 0) {
            fs_prune_config pc;
            fs_prune_defaults(&pc);
            pc.latency = fake_latency;
            pc.latency_ud = &calls;
            rc = fs_prune_channels(&s, f->basic, &pc, FS_COST_LATENCY, 0.7, NULL, NULL, &d);
        } else {
            fs_lowrank_config lc;
            fs_lowrank_defaults(&lc);
            lc.latency = fake_latency;
            lc.latency_ud = &calls;
            rc = fs_lowrank(&s, f->basic, &lc, FS_COST_LATENCY, 0.7, NULL, NULL, &d);
        }
        if (rc)
            print_message("%s\n", d.msg);
        assert_int_equal(rc, 0);
        double s_sec;
        int dummy = 0;
        fake_latency(&dummy, &s_sec, s, 1, 1, &d);
        print_message("%s latency 0.7: %.3f of the teacher after %d measurements, FLOPs %.3f\n",
                      k ? "lowrank" : "prune", s_sec / t_sec, calls,
                      (double)fs_model_flops(s) / (double)fs_model_flops(f->basic));
        assert_true(s_sec <= 0.7 * t_sec);
        assert_true(calls >= 3);    /* teacher, the FLOPs plan that missed, the tightened one */
        assert_true((double)fs_model_flops(s) < 0.7 * (double)fs_model_flops(f->basic));
        fs_model_free(s);
    }
}

/* ---- low-rank -------------------------------------------------------------------------------- */

static void energy_rank_of_known_singular_values(void **state)
{
    fixture *f = *state;
    const double sig[4] = {4, 3, 2, 1};     /* squares 16, 9, 4, 1 of 30 */
    assert_int_equal(fs_lowrank_energy_rank(sig, 4, 0.5), 1);
    assert_int_equal(fs_lowrank_energy_rank(sig, 4, 0.8), 2);
    assert_int_equal(fs_lowrank_energy_rank(sig, 4, 25.0 / 30.0), 2);
    assert_int_equal(fs_lowrank_energy_rank(sig, 4, 0.9), 3);
    assert_int_equal(fs_lowrank_energy_rank(sig, 4, 1.0), 4);
    /* a conv whose [OC, C*9] matrix has singular values 4,3,2,1,0.5,... (signed permutation) */
    fs_diag d = {0};
    fs_model *t = NULL;
    assert_int_equal(fs_model_clone(&t, f->basic, &d), 0);
    fs_param *w = fs_model_param(t, "layer1.1.conv2.weight");
    assert_int_equal(w->numel, 8 * 72);
    memset(w->data, 0, w->numel * sizeof(float));
    const float sv[8] = {4, 3, 2, 1, 0.5f, 0.25f, 0.125f, 0.0625f};
    for (int i = 0; i < 8; i++)
        w->data[i * 72 + (i * 29 + 11) % 72] = (i & 1) ? -sv[i] : sv[i];
    fs_lowrank_config lc;
    fs_lowrank_defaults(&lc);
    lc.energy = 0.8f;
    fs_model *s = NULL;
    fs_layer_change *ch = NULL;
    int nch = 0;
    assert_int_equal(fs_lowrank(&s, t, &lc, FS_COST_FLOPS, 0, &ch, &nch, &d), 0);
    int found = 0;
    for (int i = 0; i < nch; i++)
        if (!strcmp(ch[i].name, "layer1.1.conv2")) {
            found = 1;
            assert_int_equal(ch[i].before, 8);
            assert_int_equal(ch[i].after, 2);   /* (16 + 9) / 30.33 >= 0.8 > 16 / 30.33 */
        }
    assert_true(found);
    assert_int_equal(s->arch.stages[0].blocks[1].conv[1].rank, 2);
    free(ch);
    fs_model_free(s);
    fs_model_free(t);
}

static void full_rank_reproduces_the_layers(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    /* a 3x3 stride-1 conv, a 3x3 stride-2 conv, a strided 1x1 downsample and the fc */
    const char *names[4] = {"layer1.0.conv2", "layer2.0.conv1", "layer2.0.downsample.0", "fc"};
    int ranks[4] = {8, 16, 8, 10};
    fs_model *s = NULL;
    assert_int_equal(fs_lowrank_apply(&s, f->basic, names, ranks, 4, &d), 0);
    assert_non_null(fs_model_param(s, "layer2.0.conv1.0.weight"));
    assert_non_null(fs_model_param(s, "fc.1.bias"));
    assert_null(fs_model_param(s, "fc.weight"));
    assert_int_equal(s->nodes[fs_model_node(s, "layer2.0.conv1.0")].conv.stride, 2);
    double scale, e = max_diff(f, f->basic, s, &scale);
    print_message("full rank: max |dlogit| %.3g (logits up to %.3g)\n", e, scale);
    assert_true(e <= 1e-4 * fmax(1.0, scale));
    fs_model_free(s);
    /* a low rank changes them, and bad requests are refused */
    ranks[0] = 2;
    assert_int_equal(fs_lowrank_apply(&s, f->basic, names, ranks, 1, &d), 0);
    assert_true(max_diff(f, f->basic, s, NULL) > 1e-3);
    fs_model_free(s);
    ranks[0] = 9;
    assert_int_equal(fs_lowrank_apply(&s, f->basic, names, ranks, 1, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "1..8"));
    /* an MLP's linears */
    fs_arch a;
    int hidden[1] = {32};
    fs_model *mlp = NULL, *ms = NULL;
    assert_int_equal(fs_arch_mlp(&a, 1, hidden, 1, 28, 28, 10, &d), 0);
    assert_int_equal(fs_model_build(&mlp, &a, NULL, 0, &d), 0);
    fs_model_init(mlp, 5);
    const char *mn[2] = {"fc1", "fc2"};
    int mr[2] = {32, 10};
    assert_int_equal(fs_lowrank_apply(&ms, mlp, mn, mr, 2, &d), 0);
    e = max_diff(f, mlp, ms, &scale);
    assert_true(e <= 1e-4 * fmax(1.0, scale));
    fs_model_free(ms);
    fs_model_free(mlp);
    const char *bad[1] = {"layer1.0.bn1"};
    assert_int_equal(fs_lowrank_apply(&s, f->basic, bad, ranks, 1, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer1.0.bn1"));
}

static void lowrank_targets_are_met(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_lowrank_config lc;
    fs_lowrank_defaults(&lc);
    fs_model *teachers[2] = {f->basic, f->bneck};
    for (int k = 0; k < 2; k++) {
        lc.all_convs = k;   /* the bottleneck's 3x3 convs alone cannot reach 0.7 */
        for (int kind = FS_COST_FLOPS; kind <= FS_COST_PARAMS; kind++) {
            fs_model *t = teachers[k], *s = NULL;
            fs_layer_change *ch = NULL;
            int nch = 0;
            int rc = fs_lowrank(&s, t, &lc, (fs_cost_kind)kind, 0.7, &ch, &nch, &d);
            if (rc)
                print_message("%s\n", d.msg);
            assert_int_equal(rc, 0);
            double r = kind == FS_COST_FLOPS
                           ? (double)fs_model_flops(s) / (double)fs_model_flops(t)
                           : (double)fs_model_num_params(s) / (double)fs_model_num_params(t);
            print_message("lowrank %s target 0.7: %.3f, %d layers factorized\n",
                          kind == FS_COST_FLOPS ? "flops" : "params", r, nch);
            assert_true(r <= 0.7);
            assert_true(nch > 0);
            for (int i = 0; i < nch; i++)
                assert_true(ch[i].after >= 1 && ch[i].after < ch[i].before);
            free(ch);
            fs_model_free(s);
        }
    }
    fs_model *s = NULL;
    assert_int_equal(fs_lowrank(&s, f->basic, &lc, FS_COST_FLOPS, 0.01, NULL, NULL, &d),
                     FS_EINVAL);
    assert_non_null(strstr(d.msg, "cannot be met"));
}

static void factorized_model_saves_and_loads(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_lowrank_config lc;
    fs_lowrank_defaults(&lc);
    lc.energy = 0.6f;
    fs_model *s = NULL, *back = NULL;
    assert_int_equal(fs_lowrank(&s, f->basic, &lc, FS_COST_FLOPS, 0, NULL, NULL, &d), 0);
    assert_true(fs_model_num_params(s) < fs_model_num_params(f->basic));
    assert_true(fs_model_flops(s) < fs_model_flops(f->basic));
    char path[] = "/tmp/fs_lowrank_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    int rc = fs_model_save(s, path, &d);
    if (rc == 0)
        rc = fs_model_load(&back, path, &d);
    unlink(path);
    if (rc)
        print_message("%s\n", d.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(back->arch.stages[0].blocks[0].conv[1].rank,
                     s->arch.stages[0].blocks[0].conv[1].rank);
    assert_int_equal(fs_model_num_params(back), fs_model_num_params(s));
    assert_true(max_diff(f, s, back, NULL) == 0.0);
    fs_model_free(back);
    fs_model_free(s);
}

/* ---- pipeline --------------------------------------------------------------------------------- */

static void dbg_progress(void *ud, const char *phase, long it, long total, double loss, double eta)
{
    (void)ud;
    (void)eta;
    print_message("%s %ld/%ld %g\n", phase, it, total, loss);
}

/* a deterministic stand-in for a latency measurement: a fixed overhead plus time per FLOP */
static int flops_latency(void *ud, double *sec, fs_model *m, int batch, int reps, fs_diag *d)
{
    (void)ud;
    (void)reps;
    (void)d;
    *sec = 1e-4 + 1e-10 * (double)batch * (double)fs_model_flops(m);
    return 0;
}

static void pipeline_runs_both_methods(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_local *L = NULL;
    assert_int_equal(fs_local_create(&L, f->basic, f->ds, 32, 0, &d), 0);
    fs_source *src = NULL;
    assert_int_equal(fs_source_local(&src, L, &d), 0);
    fs_pipeline_config c;
    fs_pipeline_defaults(&c);
    c.practise.latency_batch = 4;
    c.practise.latency_reps = 1;
    c.recovery.iterations = 4;
    c.recovery.batch = 16;
    c.recovery.lr = 0.005f;
    c.bn_rounds = 0;    /* exact */
    assert_int_equal(fs_pipeline_parse_target(&c, "flops=0.6", &d), 0);
    assert_int_equal(fs_pipeline_parse_family(&c, "0.7,0.5", &d), 0);
    fs_pipeline_output *out = calloc(1, sizeof *out);
    const char *methods[2] = {"prune-channels", "lowrank"};
    for (int m = 0; m < 2; m++) {
        assert_int_equal(fs_pipeline_parse_methods(&c.methods, methods[m], &d), 0);
        c.sparsity_iterations = m == 0 ? 2 : 0;
        int rc = fs_pipeline_run(&c, f->basic, src, getenv("DBG") ? dbg_progress : NULL, NULL, out,
                                 &d);
        if (rc)
            print_message("%s\n", d.msg);
        assert_int_equal(rc, 0);
        assert_int_equal(out->n_results, 2);
        for (int i = 0; i < 2; i++) {
            const fs_pipeline_result *r = &out->results[i];
            assert_true((double)r->flops <= (double)r->target * (double)out->flops);
            assert_true(r->n_changes > 0 && r->changes != NULL);
            assert_true(isfinite(r->objective_after));
            assert_int_equal(r->on_source.n, f->n);
        }
        fs_pipeline_output_free(out);
    }
    /* combined: pruning then low-rank, the FLOPs target shared between them */
    assert_int_equal(fs_pipeline_parse_methods(&c.methods, "prune-channels,lowrank", &d), 0);
    c.sparsity_iterations = 0;
    if (fs_pipeline_run(&c, f->basic, src, NULL, NULL, out, &d))
        fail_msg("%s", d.msg);
    assert_int_equal(out->n_results, 2);
    for (int i = 0; i < 2; i++) {
        const fs_pipeline_result *r = &out->results[i];
        int widths = 0, ranks = 0;
        for (int k = 0; k < r->n_changes; k++) {
            ranks += r->changes[k].rank;
            widths += !r->changes[k].rank && r->changes[k].after < r->changes[k].before;
        }
        print_message("  prune+lowrank flops=%.1f: %.3f of the teacher's FLOPs, %d narrower, "
                      "%d factorized\n", (double)r->target,
                      (double)r->flops / (double)out->flops, widths, ranks);
        assert_true((double)r->flops <= (double)r->target * (double)out->flops);
        assert_true(widths > 0 && ranks > 0);      /* both stages did part of the work */
        assert_true(isfinite(r->objective_after));
        assert_non_null(fs_model_param_c(r->model, "fc.weight"));
    }
    fs_pipeline_output_free(out);
    /* drop-blocks then pruning, for a latency target; latency modelled from FLOPs through the
     * measurement hook, so that the sanitizers' and other processes' noise cannot move it */
    assert_int_equal(fs_pipeline_parse_methods(&c.methods, "drop-blocks,prune-channels", &d), 0);
    assert_int_equal(fs_pipeline_parse_target(&c, "latency=0.6", &d), 0);
    c.practise.iterations = 2;
    c.practise.latency = flops_latency;
    if (fs_pipeline_run(&c, f->basic, src, NULL, NULL, out, &d))
        fail_msg("%s", d.msg);
    assert_int_equal(out->n_results, 1);
    const fs_pipeline_result *r = &out->results[0];
    print_message("  drop+prune latency=0.6: %d blocks dropped, %d channel groups changed, "
                  "latency %.2f of the teacher's\n", r->n_dropped, r->n_changes,
                  r->latency_b64 / out->latency_b64);
    assert_true(r->n_dropped >= 1 && r->n_changes > 0);
    assert_true(r->latency_b64 <= 0.6 * out->latency_b64);
    fs_pipeline_output_free(out);
    /* drop-blocks plans for latency only, combined or not */
    assert_int_equal(fs_pipeline_parse_target(&c, "flops=0.5", &d), 0);
    assert_int_equal(fs_pipeline_run(&c, f->basic, src, NULL, NULL, out, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "latency target"));
    free(out);
    fs_source_free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pruning_nothing_reproduces_the_teacher),
        cmocka_unit_test(zero_gamma_channels_are_removed_exactly),
        cmocka_unit_test(compensation_before_a_padded_conv_is_approximate),
        cmocka_unit_test(groups_share_one_index_set),
        cmocka_unit_test(targets_are_met_and_counted_exactly),
        cmocka_unit_test(impossible_targets_and_models_are_refused),
        cmocka_unit_test(sparsity_training_zeroes_scales),
        cmocka_unit_test(latency_targets_are_measured_and_met),
        cmocka_unit_test(energy_rank_of_known_singular_values),
        cmocka_unit_test(full_rank_reproduces_the_layers),
        cmocka_unit_test(lowrank_targets_are_met),
        cmocka_unit_test(factorized_model_saves_and_loads),
        cmocka_unit_test(pipeline_runs_both_methods),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
