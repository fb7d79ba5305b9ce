/* test_pytorch_logits.c — models saved from PyTorch 1.13 (tests/fixtures/model/gen_fixtures.py:
 * a CIFAR-style ResNet-20 for 1x28x28, a Bottleneck ResNet with the ImageNet stem, an MLP), imported
 * by fedslim (architecture inferred from the state dict) and run on the same inputs give the same
 * eval-mode logits as PyTorch: max abs difference <= 1e-4. Also through a save/load round trip. */
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
#include "fs_safetensors.h"

static char *fixture(const char *name, const char *suffix)
{
    const char *root = getenv("FS_SOURCE_DIR");
    static char path[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/tests/fixtures/model/%s%s", root ? root : ".", name,
             suffix);
    return path[k];
}

static void read_f32(const char *path, float *x, size_t n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(x, sizeof(float), n, f), n);
    fclose(f);
}

static double max_diff(fs_model *m, const float *x, const float *want, int N)
{
    fs_diag d = {0};
    fs_run *r = NULL;
    assert_int_equal(fs_run_create(&r, m, N, &d), 0);
    fs_run_forward(r, m, x, N, FS_MODE_EVAL);
    const float *o = fs_run_out(r, m->logits_node);
    double md = 0;
    for (int i = 0; i < N * m->arch.num_classes; i++)
        md = fmax(md, fabs((double)o[i] - want[i]));
    fs_run_free(r);
    return md;
}

static void check(const char *name, int in_c, int hw, int nm, const float *mean, const float *std)
{
    fs_diag d = {0};
    fs_safetensors *st = NULL;
    fs_arch a;
    fs_model *m = NULL, *m2 = NULL;
    const char *path = fixture(name, ".safetensors");
    assert_int_equal(fs_safetensors_open(&st, path, &d), 0);
    assert_int_equal(fs_arch_infer(&a, st, in_c, hw, hw, mean, std, nm, &d), 0);
    assert_int_equal(fs_model_from_state_dict(&m, &a, path, &d), 0);
    const int N = 4;
    size_t plane = (size_t)hw * hw, n = (size_t)N * in_c * plane;
    float *x = malloc(n * sizeof(float)), *want = malloc((size_t)N * a.num_classes * sizeof(float));
    read_f32(fixture(name, ".input.f32"), x, n);
    read_f32(fixture(name, ".logits.f32"), want, (size_t)N * a.num_classes);
    for (int i = 0; i < N; i++)                 /* the fixture's logits are on normalised input */
        for (int c = 0; c < in_c; c++)
            for (size_t k = 0; k < plane; k++) {
                float *v = &x[((size_t)i * in_c + c) * plane + k];
                *v = (*v - a.mean[c]) / a.std[c];
            }
    double md = max_diff(m, x, want, N);
    print_message("%s: max |fedslim - PyTorch| = %.3g\n", name, md);
    assert_true(md <= 1e-4);
    /* saved as a fedslim model and loaded back: the same numbers */
    char tmp[] = "/tmp/fs_test_logits_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fs_model_save(m, tmp, &d), 0);
    assert_int_equal(fs_model_load(&m2, tmp, &d), 0);
    assert_true(max_diff(m2, x, want, N) <= 1e-4);
    unlink(tmp);
    fs_model_free(m);
    fs_model_free(m2);
    fs_safetensors_free(st);
    free(x);
    free(want);
}

static void resnet20_matches_pytorch(void **state)
{
    (void)state;
    float mean = 0.2860f, std = 0.3530f;
    check("resnet20", 1, 28, 1, &mean, &std);
}

static void bottleneck_matches_pytorch(void **state)
{
    (void)state;
    float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    check("bottleneck", 3, 32, 3, mean, std);
}

static void mlp_matches_pytorch(void **state)
{
    (void)state;
    float mean = 0, std = 1;
    check("mlp", 1, 8, 1, &mean, &std);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resnet20_matches_pytorch),
        cmocka_unit_test(bottleneck_matches_pytorch),
        cmocka_unit_test(mlp_matches_pytorch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
