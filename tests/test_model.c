/* test_model.c — the layer graph: whole-model backward against finite differences (ResNet with
 * BasicBlocks and CIFAR stem, Bottleneck with ImageNet stem + max pool, MLP; BN in training and
 * eval mode; low-rank layers and adaptors), save/load round trips and load errors that name the
 * file and tensor, and the optimizer against torch.optim semantics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_model.h"
#include "fs_optim.h"
#include "fs_rng.h"
#include "fs_safetensors.h"

static void fill(float *x, size_t n, fs_rng *r, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * fs_rng_normal(r);
}

/* L = Σ logits·g1 + Σ feat·g2 */
static double loss_of(fs_run *r, fs_model *m, const float *x, int N, fs_mode mode, const float *g1,
                      const float *g2)
{
    fs_run_forward(r, m, x, N, mode);
    const float *lg = fs_run_out(r, m->logits_node);
    double L = 0;
    size_t nl = (size_t)N * fs_node_numel(m, m->logits_node);
    for (size_t i = 0; i < nl; i++)
        L += (double)lg[i] * g1[i];
    if (m->feat_node >= 0) {
        const float *f = fs_run_out(r, m->feat_node);
        size_t nf = (size_t)N * fs_node_numel(m, m->feat_node);
        for (size_t i = 0; i < nf; i++)
            L += (double)f[i] * g2[i];
    }
    return L;
}

static void check_model_grads(const fs_arch *a, const fs_adaptor_spec *ad, int nad, fs_mode mode,
                              int N)
{
    fs_diag d = {0};
    fs_model *m = NULL;
    assert_int_equal(fs_model_build(&m, a, ad, nad, &d), 0);
    fs_model_init(m, 3);
    fs_rng rng;
    fs_rng_seed(&rng, 11);
    /* non-trivial BN statistics and affine parameters */
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        for (size_t k = 0; k < p->numel; k++) {
            if (p->kind == FS_PARAM_BN_WEIGHT)
                p->data[k] = 0.8f + 0.4f * fs_rng_uniform(&rng);
            else if (p->kind == FS_PARAM_BN_BIAS || p->kind == FS_PARAM_BN_MEAN)
                p->data[k] = 0.1f * fs_rng_normal(&rng);
            else if (p->kind == FS_PARAM_BN_VAR)
                p->data[k] = 0.5f + fs_rng_uniform(&rng);
            else if (strstr(p->name, "adaptor"))
                p->data[k] += 0.05f * fs_rng_normal(&rng);
        }
    }
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, m, N, &d), 0);
    size_t nx = (size_t)N * fs_node_numel(m, -1);
    size_t nl = (size_t)N * fs_node_numel(m, m->logits_node);
    size_t nf = m->feat_node >= 0 ? (size_t)N * fs_node_numel(m, m->feat_node) : 1;
    float *x = malloc(nx * sizeof(float)), *g1 = malloc(nl * sizeof(float)),
          *g2 = malloc(nf * sizeof(float));
    fill(x, nx, &rng, 1.0f);
    fill(g1, nl, &rng, 1.0f);
    fill(g2, nf, &rng, 0.1f);

    fs_model_zero_grad(m);
    fs_run_forward(r, m, x, N, mode);
    memcpy(fs_run_dout(r, m->logits_node), g1, nl * sizeof(float));
    if (m->feat_node >= 0)
        memcpy(fs_run_dout(r, m->feat_node), g2, nf * sizeof(float));
    fs_run_backward(r, m);

    int probes = 0, bad = 0;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        for (int k = 0; k < 3; k++) {
            size_t j = fs_rng_below(&rng, p->numel);
            float saved = p->data[j];
            double an = p->grad[j], fd = 0;
            int ok = 0;
            /* two step sizes: a probe that straddles a ReLU/max-pool kink disagrees at one of
               them, a wrong gradient at both */
            for (int t = 0; t < 2 && !ok; t++) {
                float h = (t ? 2e-4f : 1e-3f) * fmaxf(1.0f, fabsf(saved));
                p->data[j] = saved + h;
                double lp = loss_of(r, m, x, N, mode, g1, g2);
                p->data[j] = saved - h;
                double lm = loss_of(r, m, x, N, mode, g1, g2);
                p->data[j] = saved;
                fd = (lp - lm) / (2.0 * h);
                ok = fabs(fd - an) <= 2e-2 + 3e-2 * fabs(fd);
            }
            probes++;
            if (!ok) {
                bad++;
                print_message("%s[%zu]: analytic %.6f, finite difference %.6f\n", p->name, j, an,
                              fd);
            }
        }
    }
    /* a probe may straddle a ReLU or max-pool kink; anything more is a wrong gradient */
    assert_true(probes > 10);
    assert_true(bad * 20 <= probes);
    free(x);
    free(g1);
    free(g2);
    fs_run_free(r);
    fs_model_free(m);
}

static void resnet_basic_grads(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int depths[2] = {2, 1}, widths[2] = {4, 6};
    assert_int_equal(fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 2, 8, 8,
                                     5, &d), 0);
    check_model_grads(&a, NULL, 0, FS_MODE_TRAIN_NOSTATS, 4);
    check_model_grads(&a, NULL, 0, FS_MODE_EVAL, 3);
}

static void resnet_bottleneck_grads(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int depths[2] = {1, 2}, widths[2] = {4, 6};
    assert_int_equal(fs_arch_resnet(&a, FS_BLOCK_BOTTLENECK, FS_STEM_IMAGENET, 2, depths, widths,
                                     3, 32, 32, 4, &d), 0);
    check_model_grads(&a, NULL, 0, FS_MODE_EVAL, 3);
    check_model_grads(&a, NULL, 0, FS_MODE_TRAIN_NOSTATS, 3);
}

static void lowrank_and_adaptor_grads(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int depths[2] = {2, 1}, widths[2] = {4, 6};
    assert_int_equal(fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 1, 8, 8,
                                     3, &d), 0);
    a.stages[0].blocks[1].conv[0].rank = 2;
    a.fc_opts.rank = 2;
    fs_adaptor_spec ad[2] = {{"layer1.0.conv2", FS_ADAPTOR_AFTER}, {"layer2.0.conv1", FS_ADAPTOR_PRE}};
    check_model_grads(&a, ad, 2, FS_MODE_EVAL, 3);
}

static void mlp_grads(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int hidden[2] = {7, 5};
    assert_int_equal(fs_arch_mlp(&a, 2, hidden, 1, 4, 4, 3, &d), 0);
    check_model_grads(&a, NULL, 0, FS_MODE_TRAIN, 4);
}

static void adaptors_start_as_identity(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int depths[2] = {2, 2}, widths[2] = {4, 8};
    assert_int_equal(fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 1, 8, 8,
                                     3, &d), 0);
    fs_model *m = NULL, *ma = NULL;
    assert_int_equal(fs_model_build(&m, &a, NULL, 0, &d), 0);
    fs_model_init(m, 5);
    fs_adaptor_spec ad[3] = {{"layer1.0.conv2", FS_ADAPTOR_AFTER},
                             {"layer2.0.conv1", FS_ADAPTOR_PRE},
                             {"layer2.0.downsample.0", FS_ADAPTOR_PRE}};
    assert_int_equal(fs_model_build(&ma, &a, ad, 3, &d), 0);
    assert_int_equal(fs_model_copy_matching(ma, m), m->n_params);
    assert_non_null(fs_model_param(ma, "layer2.0.conv1.adaptor_pre.weight"));
    fs_run *r1 = NULL, *r2 = NULL;
    assert_int_equal(fs_run_create(&r1, m, 2, &d), 0);
    assert_int_equal(fs_run_create(&r2, ma, 2, &d), 0);
    float x[128];
    fs_rng rng;
    fs_rng_seed(&rng, 1);
    fill(x, 128, &rng, 1.0f);
    fs_run_forward(r1, m, x, 2, FS_MODE_EVAL);
    fs_run_forward(r2, ma, x, 2, FS_MODE_EVAL);
    const float *y1 = fs_run_out(r1, m->logits_node), *y2 = fs_run_out(r2, ma->logits_node);
    for (int i = 0; i < 6; i++)
        assert_float_equal(y1[i], y2[i], 1e-5);
    fs_run_free(r1);
    fs_run_free(r2);
    fs_model_free(m);
    fs_model_free(ma);
    fs_adaptor_spec bad = {"layer9.0.conv1", FS_ADAPTOR_PRE};
    assert_int_equal(fs_model_build(&ma, &a, &bad, 1, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer9.0.conv1"));
}

static void save_load_round_trip_and_errors(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int depths[2] = {1, 1}, widths[2] = {4, 8};
    assert_int_equal(fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 1, 8, 8,
                                     3, &d), 0);
    a.mean[0] = 0.25f;
    a.std[0] = 0.5f;
    fs_model *m = NULL, *m2 = NULL;
    assert_int_equal(fs_model_build(&m, &a, NULL, 0, &d), 0);
    fs_model_init(m, 9);
    char path[] = "/tmp/fs_test_model_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fs_model_save(m, path, &d), 0);
    assert_int_equal(fs_model_load(&m2, path, &d), 0);
    assert_int_equal(m2->n_params, m->n_params);
    assert_memory_equal(m2->param_block, m->param_block, m->param_floats * sizeof(float));
    assert_float_equal(m2->arch.mean[0], 0.25f, 0);
    fs_model_free(m2);

    /* a file whose tensors disagree with the architecture: the shape error names both */
    fs_safetensors_writer *w = NULL;
    char *json = NULL;
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    assert_int_equal(fs_arch_to_json(&a, &json, &d), 0);
    assert_int_equal(fs_safetensors_writer_meta(w, "fedslim.arch", json, &d), 0);
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        int64_t shape[4];
        memcpy(shape, p->shape, sizeof shape);
        if (!strcmp(p->name, "fc.weight"))
            shape[0] = 1;   /* 1 x 8 instead of 3 x 8 (fewer bytes, still valid safetensors) */
        assert_int_equal(fs_safetensors_writer_add(w, p->name, FS_ST_F32, p->ndim, shape, p->data,
                                                   &d), 0);
    }
    assert_int_equal(fs_safetensors_writer_write(w, path, &d), 0);
    fs_safetensors_writer_free(w);
    assert_int_equal(fs_model_load(&m2, path, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, path));
    assert_non_null(strstr(d.msg, "fc.weight"));

    /* a state_dict without the architecture metadata */
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    assert_int_equal(fs_safetensors_writer_add(w, "conv1.weight", FS_ST_F32, m->params[0].ndim,
                                               m->params[0].shape, m->params[0].data, &d), 0);
    assert_int_equal(fs_safetensors_writer_write(w, path, &d), 0);
    fs_safetensors_writer_free(w);
    assert_int_equal(fs_model_load(&m2, path, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "fedslim import"));
    /* and as a state dict for the architecture: the missing tensor is named */
    assert_int_equal(fs_model_from_state_dict(&m2, &a, path, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "bn1.weight"));
    free(json);
    unlink(path);
    fs_model_free(m);
}

static void sgd_nesterov_matches_torch_formula(void **state)
{
    (void)state;
    fs_arch a;
    fs_diag d = {0};
    int hidden[1] = {2};
    assert_int_equal(fs_arch_mlp(&a, 1, hidden, 1, 1, 2, 2, &d), 0);
    fs_model *m = NULL;
    assert_int_equal(fs_model_build(&m, &a, NULL, 0, &d), 0);
    fs_optimizer *o = NULL;
    fs_optim_config c = {.kind = FS_OPT_SGD, .lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f,
                         .nesterov = 1};
    assert_int_equal(fs_optimizer_create(&o, m, &c, &d), 0);
    fs_param *w = fs_model_param(m, "fc1.weight");
    w->data[0] = 1.0f;
    /* by hand: g = grad + wd w; buf = g (first) then 0.9 buf + g; step = g + 0.9 buf */
    double wv = 1.0, buf = 0;
    for (int t = 0; t < 3; t++) {
        fs_model_zero_grad(m);
        w->grad[0] = 0.5f;
        fs_optimizer_step(o, m, 0.1f);
        double g = 0.5 + 0.01 * wv;
        buf = t == 0 ? g : 0.9 * buf + g;
        wv -= 0.1 * (g + 0.9 * buf);
        assert_float_equal(w->data[0], (float)wv, 1e-6);
    }
    fs_optimizer_free(o);
    fs_model_free(m);
    assert_float_equal(fs_lr_cosine(1.0f, 50, 100), 0.5f, 1e-6);
    float ms[2] = {0.4f, 0.8f};
    assert_float_equal(fs_lr_step(1.0f, 39, 100, ms, 2, 0.1f), 1.0f, 1e-6);
    assert_float_equal(fs_lr_step(1.0f, 40, 100, ms, 2, 0.1f), 0.1f, 1e-6);
    assert_float_equal(fs_lr_step(1.0f, 85, 100, ms, 2, 0.1f), 0.01f, 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resnet_basic_grads),
        cmocka_unit_test(resnet_bottleneck_grads),
        cmocka_unit_test(lowrank_and_adaptor_grads),
        cmocka_unit_test(mlp_grads),
        cmocka_unit_test(adaptors_start_as_identity),
        cmocka_unit_test(save_load_round_trip_and_errors),
        cmocka_unit_test(sgd_nesterov_matches_torch_formula),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
