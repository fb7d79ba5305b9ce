/* test_arch.c — architecture descriptions: standard constructors follow torchvision, JSON round
 * trips exactly, the JSON reader names the bad field, and import inference recovers the right
 * architecture from PyTorch-saved state dicts (and refuses files that disagree with it). */
/* cmocka needs these first, in this order */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_arch.h"
#include "fs_safetensors.h"

static const char *fixture(const char *name)
{
    static char path[1024];
    const char *src = getenv("FS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/model/%s", src ? src : ".", name);
    return path;
}

static void round_trip(const fs_arch *a)
{
    char *json = NULL;
    fs_diag d = {0};
    int rc = fs_arch_to_json(a, &json, &d);
    if (rc != 0) {
        fail_msg("to_json: %s", d.msg);
    }
    fs_arch *b = malloc(sizeof *b);
    memset(b, 0xAB, sizeof *b);
    rc = fs_arch_from_json(b, json, strlen(json), &d);
    if (rc != 0) {
        fail_msg("from_json: %s\n%s", d.msg, json);
    }
    /* every field, including unused ones (both sides zero them) */
    assert_memory_equal(a, b, sizeof *a);
    char *json2 = NULL;
    assert_int_equal(fs_arch_to_json(b, &json2, &d), 0);
    assert_string_equal(json, json2);
    free(json);
    free(json2);
    free(b);
}

static void resnet_constructors_follow_torchvision(void **state)
{
    (void)state;
    fs_arch *a = calloc(1, sizeof *a);
    fs_diag d = {0};
    int depths20[3] = {3, 3, 3};
    int widths20[3] = {16, 32, 64};
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths20, widths20, 1, 28,
                                    28, 10, &d),
                     0);
    assert_int_equal(a->stem_width, 16);
    assert_int_equal(a->n_stages, 3);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(a->stages[s].width, widths20[s]);
        assert_int_equal(a->stages[s].n_blocks, 3);
        for (int b = 0; b < 3; b++) {
            const fs_block_arch *bl = &a->stages[s].blocks[b];
            assert_int_equal(bl->mid[0], widths20[s]);
            assert_int_equal(bl->mid[1], 0);
            assert_int_equal(bl->stride, (s > 0 && b == 0) ? 2 : 1);
            assert_int_equal(bl->downsample, s > 0 && b == 0);
        }
    }
    round_trip(a);
    /* compact: plain layers carry no options, and the text says what the schema says */
    char *json = NULL;
    assert_int_equal(fs_arch_to_json(a, &json, &d), 0);
    assert_null(strstr(json, "\"conv\""));
    assert_null(strstr(json, "\"ds\""));
    assert_null(strstr(json, "\"origin\""));
    assert_null(strstr(json, " "));
    assert_non_null(strstr(json, "{\"version\":1,\"type\":\"resnet\",\"input\":[1,28,28],"));
    assert_non_null(strstr(json, "{\"mid\":[32],\"stride\":2,\"downsample\":true}"));
    assert_true(strlen(json) < 1000);
    free(json);

    int depths50[4] = {3, 4, 6, 3};
    int widths50[4] = {64, 128, 256, 512};
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BOTTLENECK, FS_STEM_IMAGENET, 4, depths50,
                                    widths50, 3, 224, 224, 1000, &d),
                     0);
    assert_int_equal(a->stem_width, 64);
    assert_int_equal(a->stages[0].width, 256);
    assert_int_equal(a->stages[3].width, 2048);
    /* layer1.0 downsamples 64 -> 256 at stride 1; later stages at stride 2 on block 0 only */
    assert_int_equal(a->stages[0].blocks[0].downsample, 1);
    assert_int_equal(a->stages[0].blocks[0].stride, 1);
    assert_int_equal(a->stages[0].blocks[1].downsample, 0);
    assert_int_equal(a->stages[2].blocks[0].stride, 2);
    assert_int_equal(a->stages[2].blocks[0].mid[0], 256);
    assert_int_equal(a->stages[2].blocks[0].mid[1], 256);
    assert_int_equal(a->stages[2].blocks[5].downsample, 0);
    round_trip(a);

    /* bad arguments */
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 0, depths20, widths20, 1, 28,
                                    28, 10, &d),
                     FS_EINVAL);
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths20, widths20, 5, 28,
                                    28, 10, &d),
                     FS_EINVAL);
    int bad_depth[3] = {3, 65, 3};
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, bad_depth, widths20, 1,
                                    28, 28, 10, &d),
                     FS_EINVAL);
    free(a);
}

static void mlp_and_compressed_round_trip(void **state)
{
    (void)state;
    fs_arch *a = calloc(1, sizeof *a);
    fs_diag d = {0};
    int hidden[2] = {300, 100};
    assert_int_equal(fs_arch_mlp(a, 2, hidden, 1, 28, 28, 10, &d), 0);
    a->mean[0] = 0.2860f;
    a->std[0] = 0.3530f;
    round_trip(a);
    a->mlp_opts[1].rank = 16;
    a->mlp_opts[2].qbits = 8;
    round_trip(a);
    assert_int_equal(fs_arch_mlp(a, 0, hidden, 1, 4, 4, 2, &d), 0);   /* logistic regression */
    round_trip(a);

    /* a compressed ResNet: blocks removed (origin kept), widths changed, per-layer options */
    int depths[3] = {3, 3, 3};
    int widths[3] = {16, 32, 64};
    assert_int_equal(fs_arch_resnet(a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths, widths, 3, 32, 32,
                                    10, &d),
                     0);
    a->mean[0] = 0.4914f;
    a->mean[1] = 0.4822f;
    a->mean[2] = 0.4465f;
    a->std[0] = 0.2470f;
    a->std[1] = 0.2435f;
    a->std[2] = 0.2616f;
    fs_stage_arch *s1 = &a->stages[1];
    s1->blocks[1] = s1->blocks[2];       /* layer2.1 removed: layer2.2 becomes layer2.1 */
    snprintf(s1->blocks[1].origin, sizeof s1->blocks[1].origin, "layer2.2");
    s1->n_blocks = 2;
    memset(&s1->blocks[2], 0, sizeof s1->blocks[2]);   /* unused slots are zero, as from_json makes them */
    a->stages[0].blocks[1].mid[0] = 7;   /* pruned */
    a->stages[0].blocks[1].conv[0].rank = 4;
    a->stages[2].blocks[0].conv[1].nm_n = 2;
    a->stages[2].blocks[0].conv[1].nm_m = 4;
    a->stages[2].blocks[0].ds.qbits = 8;
    a->stem_opts.qbits = 8;
    a->fc_opts.rank = 5;
    assert_int_equal(fs_arch_validate(a, &d), 0);
    round_trip(a);

    /* validation catches inconsistent edits */
    a->stages[2].blocks[0].downsample = 0;
    assert_int_equal(fs_arch_validate(a, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "stages[2].blocks[0]"));
    assert_non_null(strstr(d.msg, "downsample"));
    char *json = NULL;
    assert_int_equal(fs_arch_to_json(a, &json, &d), FS_EINVAL);
    assert_null(json);
    a->stages[2].blocks[0].downsample = 1;
    a->stages[0].blocks[0].conv[2].rank = 3;     /* a basic block has no conv3 */
    assert_int_equal(fs_arch_validate(a, &d), FS_EINVAL);
    a->stages[0].blocks[0].conv[2].rank = 0;
    a->std[1] = 0.0f;
    assert_int_equal(fs_arch_validate(a, &d), FS_EINVAL);
    free(a);
}

/* from_json on `text` must fail with `code` and a message containing `what`. */
static void bad_json(const char *text, int code, const char *what)
{
    fs_arch *a = calloc(1, sizeof *a);
    a->num_classes = 12345;
    fs_diag d = {0};
    int rc = fs_arch_from_json(a, text, strlen(text), &d);
    if (rc != code || !strstr(d.msg, what)) {
        fail_msg("got %d \"%s\", expected %d with \"%s\"\n  for %s", rc, d.msg, code, what, text);
    }
    assert_int_equal(a->num_classes, 12345);     /* untouched on error */
    if (getenv("FS_TEST_VERBOSE")) {
        print_message("    %s\n", d.msg);
    }
    free(a);
}

#define HEAD "{\"version\":1,\"type\":\"resnet\",\"input\":[1,28,28],\"num_classes\":10,"
#define STEM "\"block\":\"basic\",\"stem\":\"cifar\",\"stem_width\":16,"
#define B16 "{\"mid\":[16],\"stride\":1,\"downsample\":false}"
#define B32 "{\"mid\":[32],\"stride\":2,\"downsample\":true}"

static void from_json_names_the_field(void **state)
{
    (void)state;
    /* the good one first */
    const char *good = HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[" B16 "]},"
                                 "{\"width\":32,\"blocks\":[" B32 "]}]}";
    fs_arch *a = calloc(1, sizeof *a);
    fs_diag d = {0};
    assert_int_equal(fs_arch_from_json(a, good, strlen(good), &d), 0);
    assert_int_equal(a->stages[1].blocks[0].mid[0], 32);
    assert_true(a->std[0] == 1.0f && a->mean[0] == 0.0f);    /* defaults */
    free(a);

    bad_json("{\"version\":7,\"type\":\"transformer\"}", FS_EUNSUPPORTED,
             "fedslim.arch version 7 is not supported (this build reads 1)");
    bad_json("{\"type\":\"mlp\"}", FS_EFORMAT, "version: missing field");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[" B16 "]},"
                       "{\"width\":32,\"blocks\":[{\"mid\":[\"x\"],\"stride\":2,"
                       "\"downsample\":true}]}]}",
             FS_EFORMAT, "stages[1].blocks[0].mid[0]: expected a positive integer");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[" B16 "]},"
                       "{\"width\":32,\"blocks\":[{\"mid\":[-3],\"stride\":2,"
                       "\"downsample\":true}]}]}",
             FS_EFORMAT, "stages[1].blocks[0].mid[0]: -3 is out of range");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":3,"
                       "\"downsample\":false}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].stride: 3 is out of range (1..2)");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16,16],\"stride\":1,"
                       "\"downsample\":false}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].mid: expected 1 elements, found 2");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].downsample: missing field");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1,"
                       "\"downsample\":0}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].downsample: expected true or false");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1,"
                       "\"downsample\":false,\"conv\":[{},{\"rank\":0}]}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].conv[1].rank: 0 is out of range");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1,"
                       "\"downsample\":false,\"conv\":[{},{\"nm\":[4,2]}]}]}]}",
             FS_EFORMAT, "stages[0].blocks[0].conv[1]: nm: N 4 must be less than M 2");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1,"
                       "\"downsample\":false,\"colour\":1}]}]}",
             FS_EFORMAT, "stages[0].blocks[0]: unknown field 'colour'");
    bad_json(HEAD STEM "\"stages\":[{\"width\":16,\"blocks\":[{\"mid\":[16],\"stride\":1,"
                       "\"downsample\":false,\"origin\":\"layer1.0; rm -rf\"}]}]}",
             FS_EFORMAT, "origin");
    /* a semantic error found by validation: 16 -> 32 channels without a downsample */
    bad_json(HEAD STEM "\"stages\":[{\"width\":32,\"blocks\":[" B16 "]}]}", FS_EFORMAT,
             "stages[0].blocks[0]: stride 1 and 16 -> 32 channels need a downsample");
    bad_json(HEAD STEM "\"stages\":[]}", FS_EFORMAT, "stages: expected 1..8 elements, found 0");
    bad_json(HEAD STEM "\"stages\":{}}", FS_EFORMAT, "stages: expected an array");
    bad_json(HEAD "\"block\":\"fancy\",\"stem\":\"cifar\",\"stem_width\":16,\"stages\":[]}",
             FS_EFORMAT, "block: expected \"basic\" or \"bottleneck\"");
    bad_json("{\"version\":1,\"type\":\"resnet\",\"input\":[1,28],\"num_classes\":10}", FS_EFORMAT,
             "input: expected 3 elements, found 2");
    bad_json("{\"version\":1,\"type\":\"resnet\",\"input\":[9,28,28],\"num_classes\":10}",
             FS_EFORMAT, "input[0]: 9 is out of range (1..4)");
    bad_json("{\"version\":1,\"type\":\"mlp\",\"input\":[1,8,8],\"num_classes\":10,"
             "\"hidden\":[32,0]}",
             FS_EFORMAT, "hidden[1]: 0 is out of range");
    bad_json("{\"version\":1,\"type\":\"mlp\",\"input\":[1,8,8],\"num_classes\":10,"
             "\"hidden\":[32],\"std\":[0]}",
             FS_EFORMAT, "std[0]: expected a positive number");
    bad_json("{\"version\":1,\"type\":\"mlp\",\"input\":[1,8,8],\"num_classes\":10,"
             "\"hidden\":[32],\"layers\":[{}]}",
             FS_EFORMAT, "layers: expected 2 elements, found 1");
    bad_json("{\"version\":1,\"type\":\"mlp\",\"input\":[1,8,8],\"num_classes\":10,"
             "\"hidden\":[32],\"stages\":[]}",
             FS_EFORMAT, "(top level): unknown field 'stages'");
    bad_json("{\"version\":1,\"version\":1}", FS_EFORMAT, "not valid JSON");
    bad_json("{\"version\":1,", FS_EFORMAT, "not valid JSON");
    bad_json("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", FS_EFORMAT,
             "nested deeper");
}

/* ---- inference from PyTorch files -------------------------------------------------------------- */

static fs_safetensors *open_fixture(const char *name)
{
    fs_safetensors *st = NULL;
    fs_diag d = {0};
    if (fs_safetensors_open(&st, fixture(name), &d) != 0) {
        fail_msg("%s", d.msg);
    }
    return st;
}

static void infer_pytorch_resnet20(void **state)
{
    (void)state;
    fs_safetensors *st = open_fixture("resnet20.safetensors");
    fs_arch *got = calloc(1, sizeof *got);
    fs_arch *want = calloc(1, sizeof *want);
    fs_diag d = {0};
    float mean = 0.2860f;
    float std = 0.3530f;
    int rc = fs_arch_infer(got, st, 1, 28, 28, &mean, &std, 1, &d);
    if (rc != 0) {
        fail_msg("%s", d.msg);
    }
    int depths[3] = {3, 3, 3};
    int widths[3] = {16, 32, 64};
    assert_int_equal(fs_arch_resnet(want, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths, widths, 1, 28,
                                    28, 10, &d),
                     0);
    want->mean[0] = mean;
    want->std[0] = std;
    assert_memory_equal(got, want, sizeof *got);

    /* in_c <= 0: taken from conv1.weight; a wrong in_c is refused, naming the tensor */
    assert_int_equal(fs_arch_infer(got, st, 0, 28, 28, NULL, NULL, 0, &d), 0);
    assert_int_equal(got->in_c, 1);
    assert_int_equal(fs_arch_infer(got, st, 3, 28, 28, NULL, NULL, 0, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "'conv1.weight'"));
    assert_int_equal(fs_arch_infer(got, st, 1, 28, 28, &mean, &std, 2, &d), FS_EINVAL);
    fs_safetensors_free(st);
    free(got);
    free(want);
}

static void infer_pytorch_bottleneck_and_mlp(void **state)
{
    (void)state;
    fs_arch *got = calloc(1, sizeof *got);
    fs_arch *want = calloc(1, sizeof *want);
    fs_diag d = {0};
    fs_safetensors *st = open_fixture("bottleneck.safetensors");
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
    int rc = fs_arch_infer(got, st, 3, 32, 32, mean, std, 3, &d);
    if (rc != 0) {
        fail_msg("%s", d.msg);
    }
    int depths[2] = {1, 2};
    int widths[2] = {4, 8};
    assert_int_equal(fs_arch_resnet(want, FS_BLOCK_BOTTLENECK, FS_STEM_IMAGENET, 2, depths, widths,
                                    3, 32, 32, 5, &d),
                     0);
    memcpy(want->mean, mean, sizeof mean);
    memcpy(want->std, std, sizeof std);
    assert_memory_equal(got, want, sizeof *got);
    fs_safetensors_free(st);

    st = open_fixture("mlp.safetensors");
    rc = fs_arch_infer(got, st, 0, 8, 8, NULL, NULL, 0, &d);
    if (rc != 0) {
        fail_msg("%s", d.msg);
    }
    int hidden[2] = {32, 16};
    assert_int_equal(fs_arch_mlp(want, 2, hidden, 1, 8, 8, 10, &d), 0);
    assert_memory_equal(got, want, sizeof *got);
    /* 64 input features are not 3 x 5 x 5 */
    assert_int_equal(fs_arch_infer(got, st, 0, 5, 5, NULL, NULL, 0, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "'fc1.weight'"));
    assert_int_equal(fs_arch_infer(got, st, 1, 4, 4, NULL, NULL, 0, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "'fc1.weight'"));
    assert_non_null(strstr(d.msg, "[32, 64]"));
    assert_non_null(strstr(d.msg, "[32, 16]"));
    fs_safetensors_free(st);
    free(got);
    free(want);
}

/* Copies a fixture through the writer with edits, and opens the result (in memory).
 *   drop:    a tensor to leave out (or NULL)
 *   replace: a tensor to write with `shape` instead (zeros), or to add if absent (or NULL) */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[4];
} edit;

static fs_safetensors *edited(const char *fixture_name, const char *drop, const edit *edits,
                              int n_edits)
{
    fs_safetensors *src = open_fixture(fixture_name);
    fs_safetensors_writer *w = NULL;
    fs_diag d = {0};
    static float zeros[65536];
    assert_int_equal(fs_safetensors_writer_new(&w, &d), 0);
    for (size_t i = 0; i < fs_safetensors_count(src); i++) {
        const fs_st_tensor *t = fs_safetensors_tensor(src, i);
        if (drop && strcmp(t->name, drop) == 0) {
            continue;
        }
        int replaced = 0;
        for (int k = 0; k < n_edits; k++) {
            if (strcmp(edits[k].name, t->name) == 0) {
                assert_int_equal(fs_safetensors_writer_add(w, t->name, FS_ST_F32, edits[k].ndim,
                                                           edits[k].shape, zeros, &d),
                                 0);
                replaced = 1;
            }
        }
        if (!replaced) {
            assert_int_equal(fs_safetensors_writer_add(w, t->name, t->dtype, t->ndim, t->shape,
                                                       fs_safetensors_data(src, t), &d),
                             0);
        }
    }
    for (int k = 0; k < n_edits; k++) {
        if (!fs_safetensors_find(src, edits[k].name)) {
            assert_int_equal(fs_safetensors_writer_add(w, edits[k].name, FS_ST_F32, edits[k].ndim,
                                                       edits[k].shape, zeros, &d),
                             0);
        }
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(fs_safetensors_writer_to_buffer(w, &buf, &len, &d), 0);
    fs_safetensors *st = NULL;
    assert_int_equal(fs_safetensors_parse(&st, buf, len, "edited.safetensors", &d), 0);
    free(buf);
    fs_safetensors_writer_free(w);
    fs_safetensors_free(src);
    return st;
}

static void expect_infer_error_hw(fs_safetensors *st, int hw, const char *tensor,
                                  const char *what1, const char *what2)
{
    fs_arch *a = calloc(1, sizeof *a);
    fs_diag d = {0};
    int rc = fs_arch_infer(a, st, 0, hw, hw, NULL, NULL, 0, &d);
    if (rc != FS_EFORMAT || !strstr(d.msg, "edited.safetensors") || !strstr(d.msg, tensor) ||
        (what1 && !strstr(d.msg, what1)) || (what2 && !strstr(d.msg, what2))) {
        fail_msg("got %d \"%s\"; wanted tensor %s, \"%s\", \"%s\"", rc, d.msg, tensor,
                 what1 ? what1 : "", what2 ? what2 : "");
    }
    if (getenv("FS_TEST_VERBOSE")) {
        print_message("    %s\n", d.msg);
    }
    fs_safetensors_free(st);
    free(a);
}

static void expect_infer_error(fs_safetensors *st, const char *tensor, const char *what1,
                               const char *what2)
{
    expect_infer_error_hw(st, 28, tensor, what1, what2);
}

static void infer_refuses_disagreeing_files(void **state)
{
    (void)state;
    expect_infer_error(edited("resnet20.safetensors", "layer2.1.bn1.running_var", NULL, 0),
                       "'layer2.1.bn1.running_var'", "missing tensor", "[32]");
    edit extra = {"layer1.0.conv1.bias", 1, {16}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &extra, 1), "'layer1.0.conv1.bias'",
                       "unexpected tensor", "[16]");
    edit stray = {"classifier.weight", 2, {10, 64}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &stray, 1), "'classifier.weight'",
                       "unexpected tensor", NULL);
    /* wrong shape: both shapes in the message */
    edit wrong = {"layer1.1.conv2.weight", 4, {16, 8, 3, 3}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &wrong, 1), "'layer1.1.conv2.weight'",
                       "[16, 8, 3, 3]", "[16, 16, 3, 3]");
    edit fcw = {"fc.bias", 1, {11}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &fcw, 1), "'fc.bias'", "[11]", "[10]");
    edit k5 = {"conv1.weight", 4, {16, 1, 5, 5}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &k5, 1), "'conv1.weight'", "7x7",
                       "[16, 1, 5, 5]");
    /* a missing downsample where the channels change */
    expect_infer_error(edited("resnet20.safetensors", "layer3.0.downsample.0.weight", NULL, 0),
                       "'layer3.0.downsample.0.weight'", "missing tensor", "[64, 32, 1, 1]");
    /* a hole in the block numbering */
    edit far = {"layer3.5.conv1.weight", 4, {64, 64, 3, 3}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &far, 1), "'layer3.3.conv1.weight'",
                       "missing tensor", NULL);
    edit l9 = {"layer9.0.conv1.weight", 4, {64, 64, 3, 3}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &l9, 1), "'layer9.0.conv1.weight'",
                       "beyond", NULL);
    edit l5 = {"layer5.0.conv1.weight", 4, {64, 64, 3, 3}};
    expect_infer_error(edited("resnet20.safetensors", NULL, &l5, 1), "'layer4'", "layer5", NULL);
    expect_infer_error_hw(edited("mlp.safetensors", "fc2.bias", NULL, 0), 8, "'fc2.bias'",
                          "missing tensor", NULL);
    expect_infer_error_hw(edited("mlp.safetensors", "fc1.weight", NULL, 0), 8, "'fc1.weight'",
                          "cannot infer", NULL);
    edit f4 = {"fc4.weight", 2, {3, 10}};
    expect_infer_error_hw(edited("mlp.safetensors", NULL, &f4, 1), 8, "'fc4.bias'",
                          "missing tensor", NULL);
}

static void infer_imports_pruned_model(void **state)
{
    (void)state;
    /* layer1.0 pruned from 16 to 8 inner channels; layer2.2 from 32 to 5 */
    edit e[] = {
        {"layer1.0.conv1.weight", 4, {8, 16, 3, 3}}, {"layer1.0.bn1.weight", 1, {8}},
        {"layer1.0.bn1.bias", 1, {8}},              {"layer1.0.bn1.running_mean", 1, {8}},
        {"layer1.0.bn1.running_var", 1, {8}},       {"layer1.0.conv2.weight", 4, {16, 8, 3, 3}},
        {"layer2.2.conv1.weight", 4, {5, 32, 3, 3}}, {"layer2.2.bn1.weight", 1, {5}},
        {"layer2.2.bn1.bias", 1, {5}},              {"layer2.2.bn1.running_mean", 1, {5}},
        {"layer2.2.bn1.running_var", 1, {5}},       {"layer2.2.conv2.weight", 4, {32, 5, 3, 3}},
    };
    fs_safetensors *st = edited("resnet20.safetensors", NULL, e, (int)(sizeof e / sizeof e[0]));
    fs_arch *a = calloc(1, sizeof *a);
    fs_diag d = {0};
    int rc = fs_arch_infer(a, st, 1, 28, 28, NULL, NULL, 0, &d);
    if (rc != 0) {
        fail_msg("%s", d.msg);
    }
    assert_int_equal(a->stages[0].blocks[0].mid[0], 8);
    assert_int_equal(a->stages[0].blocks[1].mid[0], 16);
    assert_int_equal(a->stages[1].blocks[2].mid[0], 5);
    assert_int_equal(a->stages[1].width, 32);
    round_trip(a);
    fs_safetensors_free(st);

    /* a file without conv1/fc1 is not guessed at */
    fs_safetensors *dt = open_fixture("dtypes.safetensors");
    assert_int_equal(fs_arch_infer(a, dt, 0, 28, 28, NULL, NULL, 0, &d), FS_EFORMAT);
    assert_non_null(strstr(d.msg, "cannot infer"));
    fs_safetensors_free(dt);
    free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resnet_constructors_follow_torchvision),
        cmocka_unit_test(mlp_and_compressed_round_trip),
        cmocka_unit_test(from_json_names_the_field),
        cmocka_unit_test(infer_pytorch_resnet20),
        cmocka_unit_test(infer_pytorch_bottleneck_and_mlp),
        cmocka_unit_test(infer_refuses_disagreeing_files),
        cmocka_unit_test(infer_imports_pruned_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
