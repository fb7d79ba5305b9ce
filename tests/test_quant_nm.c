/* test_quant_nm.c — int8 post-training quantization and N:M sparsity on real Fashion-MNIST images:
 * BN folding is exact, weight quantization error is within half a step, the calibration methods
 * clip synthetic histograms where expected, a quantized model stays close to the float one,
 * N:M masks keep the N largest of every group and masked fine-tuning keeps the pattern, compressed
 * files round-trip bit-exactly and are smaller, bad compressed files are refused by name, and the
 * pipeline runs int8 alone and after N:M. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_models.h"
#include "fs_compress.h"
#include "fs_local.h"
#include "fs_optim.h"
#include "fs_pipeline.h"
#include "fs_safetensors.h"

#define FMNIST "idx:/usr/share/datasets/fashion-mnist/t10k"

typedef struct {
    fs_dataset *ds;
    fs_model *teacher;
    fs_source *src;
    float *x;           /* every image, normalised */
    char dir[64];
} fixture;

static void perturb(fs_model *m, uint64_t seed)
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
    int depths[2] = {2, 2}, widths[2] = {8, 16};
    if (fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 2, depths, widths, 1, 28, 28, 10, &d) ||
        fs_model_build(&f->teacher, &a, NULL, 0, &d))
        return -1;
    f->teacher->arch.mean[0] = 0.286f;
    f->teacher->arch.std[0] = 0.353f;
    fs_model_init(f->teacher, 1);
    perturb(f->teacher, 2);
    fs_local *L = NULL;
    fs_model *copy = NULL;
    if (fs_model_clone(&copy, f->teacher, &d) || fs_local_create(&L, copy, f->ds, 64, 0, &d) ||
        fs_source_local(&f->src, L, &d) || fs_bn_reestimate(f->src, f->teacher, 10, &d)) {
        fprintf(stderr, "%s\n", d.msg);
        return -1;
    }
    fs_source_free(f->src);
    fs_model_free(copy);
    /* the source every test uses: the teacher with data-estimated BN statistics */
    L = NULL;
    if (fs_local_create(&L, f->teacher, f->ds, 64, 0, &d) || fs_source_local(&f->src, L, &d))
        return -1;
    size_t per = (size_t)f->ds->h * f->ds->w;
    f->x = malloc((size_t)f->ds->n * per * sizeof(float));
    int32_t idx[48];
    for (int i = 0; i < f->ds->n; i++)
        idx[i] = i;
    if (fs_batch_fill(f->x, NULL, f->ds, idx, f->ds->n, f->teacher->arch.mean,
                      f->teacher->arch.std, NULL, NULL, &d))
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/fs_test_quant_nm.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    fs_source_free(f->src);
    fs_model_free(f->teacher);
    fs_dataset_free(f->ds);
    free(f->x);
    free(f);
    return 0;
}

/* logits of every fixture image: returns malloc'd [n, K] */
static float *logits_of(const fixture *f, fs_model *m)
{
    fs_diag d = {0};
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, m, f->ds->n, &d), 0);
    fs_run_forward(r, m, f->x, f->ds->n, FS_MODE_EVAL);
    size_t n = (size_t)f->ds->n * (size_t)m->arch.num_classes;
    float *y = malloc(n * sizeof(float));
    memcpy(y, fs_run_out(r, m->logits_node), n * sizeof(float));
    fs_run_free(r);
    return y;
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *scale)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)a[i]));
    }
    if (scale)
        *scale = s;
    return e;
}

static int argmax_agree(const float *a, const float *b, int n, int K)
{
    int agree = 0;
    for (int i = 0; i < n; i++) {
        int ia = 0, ib = 0;
        for (int k = 1; k < K; k++) {
            ia = a[i * K + k] > a[i * K + ia] ? k : ia;
            ib = b[i * K + k] > b[i * K + ib] ? k : ib;
        }
        agree += ia == ib;
    }
    return agree;
}

static void bn_folding_alone_is_exact(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    /* also a factorized conv (its BN folds into the ".1" factor) and a bottleneck/imagenet net */
    fs_arch a = f->teacher->arch;
    a.stages[0].blocks[1].conv[0].rank = 3;
    fs_model *m = NULL;
    assert_int_equal(fs_model_build(&m, &a, NULL, 0, &d), 0);
    fs_model_init(m, 9);
    perturb(m, 10);
    fs_model *models[2] = {f->teacher, m};
    for (int t = 0; t < 2; t++) {
        fs_model *q = NULL;
        assert_int_equal(fs_quant_fold(&q, models[t], NULL, &d), 0);
        /* no BN node left; convs have biases; names kept */
        for (int i = 0; i < q->n_nodes; i++)
            assert_int_not_equal(q->nodes[i].op, FS_NODE_BN);
        assert_non_null(fs_model_param(q, "conv1.bias"));
        assert_non_null(fs_model_param(q, "layer2.0.downsample.0.weight_scale"));
        assert_null(fs_model_param(q, "bn1.weight"));
        float *y0 = logits_of(f, models[t]), *y1 = logits_of(f, q);
        double scale, e = max_abs_diff(y0, y1, (size_t)f->ds->n * 10, &scale);
        assert_true(scale > 0.1);
        assert_true(e <= 1e-4 * fmax(1.0, scale));
        free(y0);
        free(y1);
        /* a second fold is refused */
        fs_model *q2 = NULL;
        assert_int_equal(fs_quant_fold(&q2, q, NULL, &d), FS_EINVAL);
        assert_non_null(strstr(d.msg, "int8 already"));
        fs_model_free(q);
    }
    fs_model_free(m);
}

static void weight_quantization_error_is_half_a_step(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *q = NULL;
    assert_int_equal(fs_quant_fold(&q, f->teacher, NULL, &d), 0);
    fs_model *ref = NULL;
    assert_int_equal(fs_model_clone(&ref, q, &d), 0);
    fs_quant_weights(q);
    int layers = 0;
    for (int i = 0; i < q->n_nodes; i++) {
        const fs_node *n = &q->nodes[i];
        if (n->q[0] < 0)
            continue;
        layers++;
        const fs_param *w = &q->params[n->p[0]], *w0 = &ref->params[n->p[0]];
        const float *s = q->params[n->q[0]].data;
        size_t OC = (size_t)w->shape[0], K = w->numel / OC;
        for (size_t o = 0; o < OC; o++) {
            int top = 0;
            assert_true(s[o] > 0);
            for (size_t k = 0; k < K; k++) {
                float qv = w->data[o * K + k] / s[o];
                assert_true(fabsf(qv - rintf(qv)) <= 1e-3f);        /* s * integer */
                assert_true(fabsf(rintf(qv)) <= 127);
                top |= fabsf(rintf(qv)) == 127;
                assert_true(fabsf(w0->data[o * K + k] - w->data[o * K + k]) <=
                            s[o] / 2 * (1 + 1e-5f));
            }
            assert_true(top);                                      /* the max maps to 127 */
        }
    }
    assert_true(layers >= 10);      /* stem, 8 block convs, downsample, fc */
    fs_model_free(ref);
    fs_model_free(q);
}

static void calibration_methods_clip_as_expected(void **state)
{
    (void)state;
    fs_diag d = {0};
    enum { B = 1000 };
    int64_t *h = calloc(B, sizeof(int64_t));
    /* 1e8 values uniform on [0, 1), one outlier near 10: histogram on [0, 10] */
    for (int i = 0; i < 100; i++)
        h[i] = 1000000;
    h[B - 1] = 1;
    fs_quant_config c = {.method = FS_CALIB_MINMAX};
    float a, b;
    assert_int_equal(fs_calib_clip(h, B, 0, 10, &c, &a, &b, &d), 0);
    assert_true(a == 0 && fabsf(b - 10) < 1e-5f);
    c.method = FS_CALIB_PERCENTILE;     /* 99.99 %: 100 values above -> 0.9999 */
    assert_int_equal(fs_calib_clip(h, B, 0, 10, &c, &a, &b, &d), 0);
    assert_true(a == 0 && fabsf(b - 0.9999f) < 1e-3f);
    /* MSE: E(b) = 1e8 b^2 / (255^2 12) + (10 - b)^2 (+ clipping of the bulk below 1):
     * the minimum is at 1 (the step cost 128 b^2 outweighs one outlier) */
    c.method = FS_CALIB_MSE;
    assert_int_equal(fs_calib_clip(h, B, 0, 10, &c, &a, &b, &d), 0);
    assert_true(a == 0 && b >= 0.95f && b <= 1.06f);
    /* 1000 outliers: 128 b^2 + 1000 (10 - b)^2 is least at b = 10000 / 1128 = 8.87 */
    h[B - 1] = 1000;
    assert_int_equal(fs_calib_clip(h, B, 0, 10, &c, &a, &b, &d), 0);
    assert_true(b >= 8.6f && b <= 9.1f);
    /* symmetric data on [-4, 4]: min-max keeps both ends */
    memset(h, 0, B * sizeof(int64_t));
    for (int i = 0; i < B; i++)
        h[i] = 5;
    c.method = FS_CALIB_MINMAX;
    assert_int_equal(fs_calib_clip(h, B, -4, 4, &c, &a, &b, &d), 0);
    assert_true(fabsf(a + 4) < 1e-5f && fabsf(b - 4) < 1e-5f);
    /* empty: an error */
    memset(h, 0, B * sizeof(int64_t));
    assert_int_equal(fs_calib_clip(h, B, 0, 1, &c, &a, &b, &d), FS_EINVAL);
    free(h);
    /* uint8 parameters: zero is exact */
    float s, z;
    fs_quant_act_params(0, 2.55f, &s, &z);
    assert_true(fabsf(s - 0.01f) < 1e-7f && z == 0);
    fs_quant_act_params(-1, 1.55f, &s, &z);
    assert_true(fabsf(s - 0.01f) < 1e-7f && z == 100);
    float x[3] = {0, -1, 5}, y[3];
    fs_fake_quant_u8(y, x, 3, s, z);
    assert_true(y[0] == 0 && fabsf(y[1] + 1) <= s / 2 && fabsf(y[2] - 155 * s) < 1e-6f);
    fs_calib_method m;
    assert_int_equal(fs_calib_parse(&m, "mse", &d), 0);
    assert_int_equal(m, FS_CALIB_MSE);
    assert_int_equal(fs_calib_parse(&m, "kl", &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "'kl'"));
}

/* min-max calibration from the summed histograms finds the range of every int8 layer's input as a
 * direct forward pass sees it (to a bin: within 2% above; the image's range is data-free) */
static void check_minmax_ranges(const fixture *f, const fs_model *q)
{
    fs_diag d = {0};
    fs_model *c = NULL;
    assert_int_equal(fs_model_clone(&c, q, &d), 0);
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].q[1] >= 0)
            c->params[c->nodes[i].q[1]].data[0] = 0;     /* the float inputs */
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, c, f->ds->n, &d), 0);
    fs_run_forward(r, c, f->x, f->ds->n, FS_MODE_EVAL);
    for (int i = 0; i < c->n_nodes; i++) {
        const fs_node *n = &c->nodes[i];
        if (n->q[1] < 0)
            continue;
        const float *x = n->in0 >= 0 ? fs_run_out(r, n->in0) : f->x;
        size_t len = (size_t)f->ds->n * fs_node_numel(c, n->in0);
        float mx = 0;
        for (size_t k = 0; k < len; k++)
            mx = fmaxf(mx, x[k]);
        float s = q->params[n->q[1]].data[0], z = q->params[n->q[2]].data[0];
        float hi = (255 - z) * s;
        /* (the integer zero point may move the top by half a step) */
        if (!(hi >= mx * (1 - 1e-5f) - s / 2 && hi <= mx * 1.02f + 1e-6f))
            fail_msg("%s: input max %g, calibrated max %g", n->name, (double)mx, (double)hi);
    }
    fs_run_free(r);
    fs_model_free(c);
}

static void quantized_model_stays_close(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    float *y0 = logits_of(f, f->teacher);
    fs_calib_method methods[3] = {FS_CALIB_MINMAX, FS_CALIB_PERCENTILE, FS_CALIB_MSE};
    for (int t = 0; t < 3; t++) {
        fs_quant_config c = {.method = methods[t]};
        fs_model *q = NULL;
        assert_int_equal(fs_quant_int8(&q, f->src, f->teacher, &c, &d), 0);
        for (int i = 0; i < q->n_nodes; i++)
            if (q->nodes[i].q[1] >= 0) {
                float s = q->params[q->nodes[i].q[1]].data[0];
                float z = q->params[q->nodes[i].q[2]].data[0];
                assert_true(s > 0 && z >= 0 && z <= 255 && z == rintf(z));
                /* every int8 input but the image follows a ReLU: zero point 0 */
                if (q->nodes[i].in0 >= 0)
                    assert_true(z == 0);
            }
        if (methods[t] == FS_CALIB_MINMAX)
            check_minmax_ranges(f, q);
        float *y1 = logits_of(f, q);
        double scale, e = max_abs_diff(y0, y1, (size_t)f->ds->n * 10, &scale);
        int agree = argmax_agree(y0, y1, f->ds->n, 10);
        printf("  %s: max |logit error| %.4f of %.3f, agreement %d/%d\n",
               fs_calib_name(methods[t]), e, scale, agree, f->ds->n);
        assert_true(e > 0);                 /* it is quantized */
        assert_true(e <= 0.1 * scale);
        assert_true(agree >= f->ds->n * 9 / 10);
        free(y1);
        fs_model_free(q);
    }
    free(y0);
}

static int same_params(const fs_model *a, const fs_model *b)
{
    if (a->n_params != b->n_params)
        return 0;
    for (int i = 0; i < a->n_params; i++)
        if (strcmp(a->params[i].name, b->params[i].name) || a->params[i].numel != b->params[i].numel ||
            memcmp(a->params[i].data, b->params[i].data, a->params[i].numel * sizeof(float))) {
            for (size_t k = 0; k < a->params[i].numel; k++)
                if (memcmp(&a->params[i].data[k], &b->params[i].data[k], sizeof(float)))
                    printf("  %s[%zu]: %.9g != %.9g\n", a->params[i].name, k,
                           (double)a->params[i].data[k], (double)b->params[i].data[k]);
            return 0;
        }
    return 1;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void round_trips_are_exact_and_files_smaller(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *q = NULL, *n = NULL, *nq = NULL;
    assert_int_equal(fs_quant_int8(&q, f->src, f->teacher, NULL, &d), 0);
    int layers = 0;
    assert_int_equal(fs_nm_apply(&n, f->teacher, NULL, &layers, &d), 0);
    assert_int_equal(layers, 9);    /* 8 block convs + 1 downsample; not the stem, not fc */
    assert_int_equal(fs_quant_int8(&nq, f->src, n, NULL, &d), 0);
    fs_model *models[4] = {f->teacher, q, n, nq};
    const char *names[4] = {"dense", "int8", "nm", "nm-int8"};
    long size[4];
    for (int t = 0; t < 4; t++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s.safetensors", f->dir, names[t]);
        assert_int_equal(fs_model_save(models[t], path, &d), 0);
        size[t] = file_size(path);
        fs_model *back = NULL;
        if (fs_model_load(&back, path, &d))
            fail_msg("%s", d.msg);
        if (!same_params(models[t], back))
            fail_msg("%s: parameters differ after the round trip", names[t]);
        float *y0 = logits_of(f, models[t]), *y1 = logits_of(f, back);
        assert_memory_equal(y0, y1, (size_t)f->ds->n * 10 * sizeof(float));
        free(y0);
        free(y1);
        fs_model_free(back);
        /* the stored dtypes and shapes */
        fs_safetensors *st = NULL;
        assert_int_equal(fs_safetensors_open(&st, path, &d), 0);
        const fs_st_tensor *w = fs_safetensors_find(st, "layer1.0.conv2.weight");
        const fs_st_tensor *ix = fs_safetensors_find(st, "layer1.0.conv2.weight_nm_index");
        const fs_st_tensor *stem = fs_safetensors_find(st, "conv1.weight");
        assert_non_null(w);
        assert_int_equal(w->dtype, t % 2 ? FS_ST_I8 : FS_ST_F32);
        assert_int_equal(stem->dtype, t % 2 ? FS_ST_I8 : FS_ST_F32);
        if (t >= 2) {
            assert_non_null(ix);
            assert_int_equal(ix->dtype, FS_ST_U8);
            assert_int_equal(ix->shape[1], 8 * 9 / 2 * 2 / 8);        /* 2 bits per position */
            assert_int_equal(w->ndim, 2);
            assert_int_equal(w->shape[0], 8);
            assert_int_equal(w->shape[1], 8 * 9 / 2);
            assert_int_equal(stem->ndim, 4);                        /* the stem stays dense */
        } else {
            assert_null(ix);
            assert_int_equal(w->ndim, 4);
        }
        fs_safetensors_free(st);
    }
    printf("  bytes: dense %ld, int8 %ld, 2:4 %ld, 2:4 + int8 %ld\n", size[0], size[1], size[2],
           size[3]);
    assert_true(size[1] < size[0] / 2);
    assert_true(size[2] < size[0] * 3 / 4);
    assert_true(size[3] < size[1]);
    fs_model_free(q);
    fs_model_free(n);
    fs_model_free(nq);
}

static void nm_masks_keep_the_largest(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_nm_config configs[2] = {{0}, {.n = 1, .m = 3, .fc = 1}};
    for (int t = 0; t < 2; t++) {
        const fs_nm_config *c = &configs[t];
        int N = c->n ? c->n : 2, M = c->m ? c->m : 4;
        fs_model *s = NULL;
        int layers = 0;
        assert_int_equal(fs_nm_apply(&s, f->teacher, c, &layers, &d), 0);
        assert_int_equal(fs_nm_check(s, &d), 0);
        int sparse = 0;
        for (int i = 0; i < s->n_nodes; i++) {
            const fs_node *n = &s->nodes[i];
            if (n->op != FS_NODE_CONV && n->op != FS_NODE_LINEAR)
                continue;
            const fs_param *w = &s->params[n->p[0]];
            const fs_param *w0 = fs_model_param_c(f->teacher, w->name);
            size_t OC = (size_t)w->shape[0], K = w->numel / OC;
            if (!n->opts.nm_m) {
                /* dense: the stem, fc without c->fc, or K not a multiple of M */
                assert_true(!strcmp(n->name, "conv1") || (!strcmp(n->name, "fc") && !c->fc) ||
                            K % (size_t)M != 0);
                assert_memory_equal(w->data, w0->data, w->numel * sizeof(float));
                continue;
            }
            sparse++;
            assert_int_equal(n->opts.nm_n, N);
            assert_int_equal(n->opts.nm_m, M);
            for (size_t o = 0; o < OC; o++)
                for (size_t g = 0; g < K / (size_t)M; g++) {
                    const float *v = w->data + o * K + g * (size_t)M;
                    const float *v0 = w0->data + o * K + g * (size_t)M;
                    int nz = 0;
                    float kept_min = INFINITY, dropped_max = 0;
                    for (int k = 0; k < M; k++) {
                        if (v[k] != 0) {
                            nz++;
                            assert_true(v[k] == v0[k]);
                            kept_min = fminf(kept_min, fabsf(v0[k]));
                        } else {
                            dropped_max = fmaxf(dropped_max, fabsf(v0[k]));
                        }
                    }
                    assert_int_equal(nz, N);
                    assert_true(kept_min >= dropped_max);
                }
        }
        assert_int_equal(sparse, layers);
        /* 2:4: 8 block convs + downsample; 1:3 with fc: the 3x3 convs only (K = 9 C) */
        assert_int_equal(layers, t ? 8 : 9);
        fs_model_free(s);
    }
    /* mask of one row, with ties: the lower position wins */
    float row[8] = {1, -3, 2, 0.5f, 1, 1, 1, 1};
    uint8_t mask[8];
    fs_nm_mask_row(mask, row, 8, 2, 4);
    uint8_t want[8] = {0, 1, 1, 0, 1, 1, 0, 0};
    assert_memory_equal(mask, want, 8);
    /* an N:M model refuses a second N:M pass, and a bad N:M is refused */
    fs_model *s = NULL, *s2 = NULL;
    assert_int_equal(fs_nm_apply(&s, f->teacher, NULL, NULL, &d), 0);
    assert_int_equal(fs_nm_apply(&s2, s, NULL, NULL, &d), FS_EINVAL);
    fs_nm_config bad = {.n = 4, .m = 4};
    assert_int_equal(fs_nm_apply(&s2, f->teacher, &bad, NULL, &d), FS_EINVAL);
    /* a model whose masked weight grew back cannot be saved */
    fs_param *w = fs_model_param(s, "layer1.0.conv1.weight");
    for (size_t k = 0; k < 4; k++)
        w->data[k] = 1.0f;
    assert_int_equal(fs_nm_check(s, &d), FS_EINVAL);
    char path[128];
    snprintf(path, sizeof path, "%s/regrown.safetensors", f->dir);
    assert_int_equal(fs_model_save(s, path, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "layer1.0.conv1.weight"));
    fs_model_free(s);
}

static void nm_test_step(void *ud, fs_model *m, long it, float lr)
{
    (void)ud;
    (void)m;
    (void)it;
    (void)lr;
}

/* An in-memory checkpoint, as the coordinator keeps one on disk: the trainable weights and the
 * optimizer state after step `at`; `crash` makes the checkpoint stop the fine-tuning there. */
typedef struct {
    long at, done;
    int crash;
    float *w, *state;
    size_t nw, nstate;
    long steps;
} snapshot;

static int snap_checkpoint(void *ud, fs_model *m, fs_optimizer *opt, long done, long total,
                           double loss, fs_diag *d)
{
    (void)total;
    (void)loss;
    snapshot *sn = ud;
    if (done != sn->at)
        return 0;
    size_t nstate = 0, nw = 0;
    const float *state = fs_optimizer_state(opt, &nstate);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable && m->params[i].grad)
            nw += m->params[i].numel;
    sn->w = malloc(nw * sizeof(float));
    sn->state = malloc((nstate ? nstate : 1) * sizeof(float));
    assert_non_null(sn->w);
    assert_non_null(sn->state);
    for (int i = 0, o = 0; i < m->n_params; i++)
        if (m->params[i].trainable && m->params[i].grad) {
            memcpy(sn->w + o, m->params[i].data, m->params[i].numel * sizeof(float));
            o += (int)m->params[i].numel;
        }
    memcpy(sn->state, state, nstate * sizeof(float));
    sn->nw = nw;
    sn->nstate = nstate;
    sn->steps = fs_optimizer_steps(opt);
    sn->done = done;
    return sn->crash ? fs_diag_set(d, FS_ECANCELED, "killed after step %ld", done) : 0;
}

static int snap_resume(void *ud, fs_model *m, fs_optimizer *opt, long total, long *start,
                       fs_diag *d)
{
    (void)total;
    (void)d;
    snapshot *sn = ud;
    *start = 0;
    if (!sn->w)
        return 0;
    size_t nstate = 0;
    float *state = fs_optimizer_state(opt, &nstate);
    assert_int_equal(nstate, sn->nstate);
    for (int i = 0, o = 0; i < m->n_params; i++)
        if (m->params[i].trainable && m->params[i].grad) {
            memcpy(m->params[i].data, sn->w + o, m->params[i].numel * sizeof(float));
            o += (int)m->params[i].numel;
        }
    memcpy(state, sn->state, nstate * sizeof(float));
    fs_optimizer_set_steps(opt, sn->steps);
    *start = sn->done;
    return 0;
}

/* A masked fine-tuning killed after step 5 and resumed from its checkpoint ends with the weights
 * of an uninterrupted one, bit for bit: the checkpoint holds the dense weights, not W*mask (the
 * pruned entries' dense values decide which weights come back into the mask). */
static void masked_finetuning_resumes_exactly(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *s0 = NULL, *a = NULL, *b = NULL;
    assert_int_equal(fs_nm_apply(&s0, f->teacher, NULL, NULL, &d), 0);
    assert_int_equal(fs_bn_reestimate(f->src, s0, 10, &d), 0);
    fs_model_set_trainable(s0, 1);
    fs_recover_config rc;
    fs_recover_defaults(&rc);
    rc.iterations = 12;
    rc.batch = 16;
    rc.lr = 0.01f;
    rc.pad = 0;
    rc.hflip = 0;
    assert_int_equal(fs_model_clone(&a, s0, &d), 0);
    assert_int_equal(fs_model_clone(&b, s0, &d), 0);
    fs_model_set_trainable(a, 1);
    fs_model_set_trainable(b, 1);
    snapshot sn = {.at = 5, .crash = 1};
    fs_recover_hooks hooks = {snap_resume, snap_checkpoint, &sn};
    fs_recover_config rb = rc;
    rb.hooks = &hooks;
    assert_int_equal(fs_nm_finetune(f->src, b, NULL, &rb, NULL, NULL, NULL, &d), FS_ECANCELED);
    /* the checkpoint holds the dense weights: non-zero where the mask of s0 has zeros */
    size_t dense_only = 0;
    for (int i = 0, o = 0; i < s0->n_params; i++) {
        const fs_param *p0 = &s0->params[i];
        if (!p0->trainable || !p0->grad)
            continue;
        for (size_t k = 0; k < p0->numel; k++)
            dense_only += p0->data[k] == 0.0f && sn.w[(size_t)o + k] != 0.0f;
        o += (int)p0->numel;
    }
    assert_true(dense_only > 0);
    fs_model_free(b);       /* the process died: start again from the student as it was built */
    assert_int_equal(fs_model_clone(&b, s0, &d), 0);
    fs_model_set_trainable(b, 1);
    sn.crash = 0;
    sn.at = -1;
    if (fs_nm_finetune(f->src, b, NULL, &rb, NULL, NULL, NULL, &d))
        fail_msg("%s", d.msg);
    if (fs_nm_finetune(f->src, a, NULL, &rc, NULL, NULL, NULL, &d))
        fail_msg("%s", d.msg);
    int changed = 0;
    for (int i = 0; i < a->n_params; i++) {
        assert_memory_equal(a->params[i].data, b->params[i].data,
                            a->params[i].numel * sizeof(float));
        const fs_param *p0 = &s0->params[i];
        for (size_t k = 0; k < p0->numel; k++)     /* a pruned weight came back */
            changed += p0->data[k] == 0.0f && a->params[i].data[k] != 0.0f &&
                       strstr(p0->name, "conv") && strstr(p0->name, "weight");
    }
    printf("  resumed at step 5 of 12: identical; checkpoint held %zu dense values of pruned "
           "weights; %d weights re-entered the masks\n", dense_only, changed);
    free(sn.w);
    free(sn.state);
    fs_model_free(a);
    fs_model_free(b);
    fs_model_free(s0);
}

static void masked_finetuning_keeps_the_pattern(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *s = NULL;
    assert_int_equal(fs_nm_apply(&s, f->teacher, NULL, NULL, &d), 0);
    assert_int_equal(fs_bn_reestimate(f->src, s, 10, &d), 0);
    double before, after;
    assert_int_equal(fs_objective_mean(f->src, s, FS_OBJ_MIMIC, 4, &before, &d), 0);
    fs_recover_config rc;
    fs_recover_defaults(&rc);
    rc.iterations = 30;
    rc.batch = 16;
    rc.lr = 0.005f;
    rc.pad = 0;
    rc.hflip = 0;
    fs_model_set_trainable(s, 1);
    fs_model *start = NULL;
    assert_int_equal(fs_model_clone(&start, s, &d), 0);
    if (fs_nm_finetune(f->src, s, NULL, &rc, NULL, NULL, NULL, &d))
        fail_msg("%s", d.msg);
    assert_int_equal(fs_objective_mean(f->src, s, FS_OBJ_MIMIC, 4, &after, &d), 0);
    printf("  mimic loss %.4f -> %.4f after 30 masked steps\n", before, after);
    assert_true(after < before);
    assert_int_equal(fs_nm_check(s, &d), 0);
    /* exactly N non-zeros per group, and the weights moved */
    const fs_param *w = fs_model_param_c(s, "layer2.1.conv2.weight");
    const fs_param *w0 = fs_model_param_c(start, "layer2.1.conv2.weight");
    int moved = 0;
    for (size_t g = 0; g < w->numel / 4; g++) {
        int nz = 0;
        for (int k = 0; k < 4; k++) {
            nz += w->data[g * 4 + (size_t)k] != 0;
            moved |= w->data[g * 4 + (size_t)k] != w0->data[g * 4 + (size_t)k];
        }
        assert_int_equal(nz, 2);
    }
    assert_true(moved);
    /* its own step hooks cannot be combined */
    fs_recover_config bad = rc;
    bad.before_step = nm_test_step;
    assert_int_equal(fs_nm_finetune(f->src, s, NULL, &bad, NULL, NULL, NULL, &d), FS_EINVAL);
    fs_model_free(start);
    fs_model_free(s);
}

/* rewrites `in` to `out` with tensor `name` replaced by (dtype, data) or dropped (data NULL) */
static void rewrite(const char *in, const char *out, const char *name, fs_st_dtype dtype,
                    const void *data)
{
    fs_diag d = {0};
    fs_safetensors *st = NULL;
    fs_safetensors_writer *w = NULL;
    assert_int_equal(fs_safetensors_open(&st, in, &d), 0);
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    for (size_t i = 0; i < fs_safetensors_meta_count(st); i++) {
        const char *k, *v;
        fs_safetensors_meta_at(st, i, &k, &v);
        assert_int_equal(fs_safetensors_writer_meta(w, k, v, &d), 0);
    }
    for (size_t i = 0; i < fs_safetensors_count(st); i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(st, i);
        if (!strcmp(t->name, name)) {
            if (data)
                assert_int_equal(fs_safetensors_writer_add(w, t->name, dtype, t->ndim, t->shape,
                                                           data, &d), 0);
            continue;
        }
        assert_int_equal(fs_safetensors_writer_add(w, t->name, t->dtype, t->ndim, t->shape,
                                                   fs_safetensors_data(st, t), &d), 0);
    }
    assert_int_equal(fs_safetensors_writer_write(w, out, &d), 0);
    fs_safetensors_writer_free(w);
    fs_safetensors_free(st);
}

static void bad_compressed_files_are_refused(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_model *nq = NULL, *n = NULL;
    assert_int_equal(fs_nm_apply(&n, f->teacher, NULL, NULL, &d), 0);
    assert_int_equal(fs_quant_int8(&nq, f->src, n, NULL, &d), 0);
    char good[128], bad[128];
    snprintf(good, sizeof good, "%s/good.safetensors", f->dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", f->dir);
    assert_int_equal(fs_model_save(nq, good, &d), 0);
    /* layer1.0.conv1 weight is [8, 36] kept values; its index [8, 36] */
    uint8_t idx[8 * 36];
    memset(idx, 0, sizeof idx);         /* positions not ascending */
    float zero[8 * 36 * 9] = {0};
    int8_t q[8 * 36];
    memset(q, -128, sizeof q);
    struct {
        const char *tensor;
        fs_st_dtype dtype;
        const void *data;
        const char *want;
    } cases[] = {
        {"layer1.0.conv1.weight_nm_index", FS_ST_U8, idx, "ascending"},
        {"layer1.0.conv1.weight_nm_index", FS_ST_U8, NULL, "missing"},
        {"layer1.0.conv1.weight", FS_ST_F32, zero, "I8"},
        {"layer1.0.conv1.weight", FS_ST_I8, q, "-128"},
        {"layer1.0.conv1.input_scale", FS_ST_F32, zero, "not calibrated"},
        {"layer1.0.conv1.weight_scale", FS_ST_F32, zero, "positive"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite(good, bad, cases[i].tensor, cases[i].dtype, cases[i].data);
        fs_model *m = NULL;
        assert_int_not_equal(fs_model_load(&m, bad, &d), 0);
        assert_null(m);
        if (!strstr(d.msg, cases[i].want) || !strstr(d.msg, "bad.safetensors") ||
            !strstr(d.msg, "layer1.0.conv1"))
            fail_msg("case %zu: '%s'", i, d.msg);
    }
    /* an index tensor for a dense layer is not part of the architecture */
    fs_model *m = NULL;
    rewrite(good, bad, "conv1.weight_scale", FS_ST_F32, NULL);
    assert_int_equal(fs_model_load(&m, bad, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "conv1.weight_scale"));
    fs_model_free(n);
    fs_model_free(nq);
}

static void pipeline_runs_int8_and_nm(void **state)
{
    fixture *f = *state;
    fs_diag d = {0};
    fs_pipeline_config c;
    fs_pipeline_defaults(&c);
    c.practise.latency_batch = 4;
    c.practise.latency_reps = 1;
    c.recovery.iterations = 5;
    c.recovery.batch = 16;
    c.recovery.lr = 0.005f;
    int methods[2] = {FS_METHOD_INT8, FS_METHOD_NM | FS_METHOD_INT8};
    for (int t = 0; t < 2; t++) {
        c.methods = methods[t];
        c.quant.method = t ? FS_CALIB_MSE : FS_CALIB_MINMAX;
        fs_pipeline_output out;
        if (fs_pipeline_run(&c, f->teacher, f->src, NULL, NULL, &out, &d))
            fail_msg("%s", d.msg);
        assert_int_equal(out.n_results, 1);
        const fs_model *m = out.results[0].model;
        assert_int_equal(m->arch.stages[0].blocks[0].conv[0].qbits, 8);
        assert_int_equal(m->arch.stem_opts.qbits, 8);
        assert_int_equal(m->arch.stages[0].blocks[0].conv[0].nm_m, t ? 4 : 0);
        assert_true(out.results[0].on_source.agree >= out.results[0].on_source.n * 7 / 10);
        assert_true(out.results[0].params < out.params);   /* the BN parameters are gone */
        fs_pipeline_output_free(&out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bn_folding_alone_is_exact),
        cmocka_unit_test(weight_quantization_error_is_half_a_step),
        cmocka_unit_test(calibration_methods_clip_as_expected),
        cmocka_unit_test(quantized_model_stays_close),
        cmocka_unit_test(round_trips_are_exact_and_files_smaller),
        cmocka_unit_test(nm_masks_keep_the_largest),
        cmocka_unit_test(masked_finetuning_keeps_the_pattern),
        cmocka_unit_test(masked_finetuning_resumes_exactly),
        cmocka_unit_test(bad_compressed_files_are_refused),
        cmocka_unit_test(pipeline_runs_int8_and_nm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
