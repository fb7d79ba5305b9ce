/*
 * bench_model.c — whole-network throughput and latency of fedslim's trainer (model/ + kernels/).
 *
 * Networks (bench/torch_bench.py builds the same ones in PyTorch):
 *   resnet20  1x28x28 input, CIFAR stem (3x3 conv 1->16, BN, ReLU), 3 stages of 3 BasicBlocks,
 *             widths 16/32/64, stride 2 + 1x1-conv/BN downsample opening stages 2 and 3 (option B),
 *             global average pool, fc 64->10; convs without bias.
 *   mlp       784-512-256-10 with ReLU.
 * Measurements on random inputs (uniform [-1, 1)) and random labels:
 *   train  one SGD step: forward (BN in training mode) + softmax cross-entropy + backward + SGD
 *          with momentum 0.9, weight decay 5e-4 -> images/s
 *   infer  forward in eval mode -> ms per batch (a latency)
 * Each timed run is `iters` steps; the value is the median over `reps` runs after `warm` warm-up
 * steps. Timing: with 1 thread the process CPU time (it leaves out the time spent waiting for a
 * core on a shared machine; nothing else runs in the process), with more threads wall time. Both
 * are printed ("cpu_value"/"wall_value"); "value" is the one the policy picks.
 *
 * Prints one JSON object per line:
 *   {"name": "<model>_<train|infer>_b<B>_t<T>", "value", "unit", "clock", "wall_value",
 *    "cpu_value", "reps", "params", "mflop_per_img", "blas", "conv"}
 *
 * Usage: bench_model MODEL MODE BATCH THREADS [REPS]      one configuration
 *        bench_model --describe                           the OpenBLAS setting, then exit
 * MODEL: resnet20 | mlp; MODE: train | infer; BATCH 1..1024; THREADS 1..64; REPS 1..64 (default 7).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_kernels.h"
#include "fs_model.h"
#include "fs_optim.h"
#include "fs_rng.h"
#include "fs_util.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double clock_sec(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_int(const char *s, int lo, int hi, const char *what, int *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_model: %s must be an integer in %d..%d, got '%s'\n", what, lo, hi,
                s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

typedef struct {
    fs_model *m;
    fs_run *r;
    fs_optimizer *opt;
    float *x;
    int32_t *lab;
    int B, K, train;
} bench;

static void step(bench *b)
{
    if (!b->train) {
        fs_run_forward(b->r, b->m, b->x, b->B, FS_MODE_EVAL);
        return;
    }
    fs_run_forward(b->r, b->m, b->x, b->B, FS_MODE_TRAIN);
    fs_model_zero_grad(b->m);
    float *dl = fs_run_dout(b->r, b->m->logits_node);
    (void)fs_softmax_xent(dl, NULL, fs_run_out(b->r, b->m->logits_node), b->lab, b->B, b->K,
                          1.0f / (float)b->B);
    fs_run_backward(b->r, b->m);
    fs_optimizer_step(b->opt, b->m, 0.01f);
}

int main(int argc, char **argv)
{
    fs_blas_select_core(argv);
    if (argc == 2 && strcmp(argv[1], "--describe") == 0) {
        fs_threads_configure(1);
        const char *ct = getenv("OPENBLAS_CORETYPE");
        printf("{\"blas\":\"%s\",\"openblas_coretype\":\"%s\",\"conv\":\"%s\"}\n",
               fs_threads_describe(), ct ? ct : "", fs_conv2d_impl_name(fs_conv2d_get_impl()));
        return 0;
    }
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: bench_model resnet20|mlp train|infer BATCH THREADS [REPS]\n"
                        "       bench_model --describe\n");
        return 2;
    }
    const char *model = argv[1], *mode = argv[2];
    int is_resnet = strcmp(model, "resnet20") == 0, train = strcmp(mode, "train") == 0;
    if (!is_resnet && strcmp(model, "mlp") != 0) {
        fprintf(stderr, "bench_model: model must be resnet20 or mlp, got '%s'\n", model);
        return 2;
    }
    if (!train && strcmp(mode, "infer") != 0) {
        fprintf(stderr, "bench_model: mode must be train or infer, got '%s'\n", mode);
        return 2;
    }
    int B, T, reps = 7;
    if (parse_int(argv[3], 1, 1024, "BATCH", &B) || parse_int(argv[4], 1, 64, "THREADS", &T) ||
        (argc > 5 && parse_int(argv[5], 1, 64, "REPS", &reps)))
        return 2;

    fs_threads_configure(T);
    fs_diag d = {0};
    fs_arch a;
    int rc;
    if (is_resnet) {
        const int depths[3] = {3, 3, 3}, widths[3] = {16, 32, 64};
        rc = fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths, widths, 1, 28, 28, 10,
                            &d);
    } else {
        const int hidden[2] = {512, 256};
        rc = fs_arch_mlp(&a, 2, hidden, 1, 28, 28, 10, &d);
    }
    bench b = {.B = B, .K = 10, .train = train};
    if (rc == 0)
        rc = fs_model_build(&b.m, &a, NULL, 0, &d);
    if (rc == 0) {
        fs_model_init(b.m, 1);
        rc = fs_run_create(&b.r, b.m, B, &d);
    }
    fs_optim_config oc = {.kind = FS_OPT_SGD, .lr = 0.01f, .momentum = 0.9f,
                          .weight_decay = 5e-4f};
    if (rc == 0 && train)
        rc = fs_optimizer_create(&b.opt, b.m, &oc, &d);
    size_t per = 28 * 28;
    b.x = fs_alloc((size_t)B * per * sizeof(float));
    b.lab = malloc((size_t)B * sizeof(int32_t));
    if (rc == 0 && (!b.x || !b.lab))
        rc = fs_diag_set(&d, FS_ENOMEM, "out of memory for a batch of %d", B);
    if (rc != 0) {
        fprintf(stderr, "bench_model: %s\n", d.msg);
        return 1;
    }
    fs_rng rng;
    fs_rng_seed(&rng, 42);
    for (size_t i = 0; i < (size_t)B * per; i++)
        b.x[i] = 2.0f * fs_rng_uniform(&rng) - 1.0f;
    for (int i = 0; i < B; i++)
        b.lab[i] = (int32_t)fs_rng_below(&rng, 10);

    /* Each timed run lasts roughly 0.1-0.3 s at the speeds seen here. */
    int iters = train ? (is_resnet ? 2 : 40) : (is_resnet ? (B == 1 ? 100 : 4) : (B == 1 ? 2000 : 200));
    int warm = iters > 3 ? iters : 3;
    for (int i = 0; i < warm; i++)
        step(&b);
    double wall[64], cpu[64];
    for (int r = 0; r < reps; r++) {
        double w0 = fs_now_sec(), c0 = clock_sec(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < iters; i++)
            step(&b);
        cpu[r] = (clock_sec(CLOCK_PROCESS_CPUTIME_ID) - c0) / iters;
        wall[r] = (fs_now_sec() - w0) / iters;
    }
    double tw = median(wall, reps), tc = median(cpu, reps);
    int use_cpu = T == 1;
    char name[64];
    snprintf(name, sizeof name, "%s_%s_b%d_t%d", model, mode, B, T);
    double vw = train ? B / tw : 1e3 * tw, vc = train ? B / tc : 1e3 * tc;
    printf("{\"name\":\"%s\",\"value\":%.5g,\"unit\":\"%s\",\"clock\":\"%s\",\"wall_value\":%.5g,"
           "\"cpu_value\":%.5g,\"reps\":%d,\"iters\":%d,\"params\":%lld,\"mflop_per_img\":%.4g,"
           "\"blas\":\"%s\",\"conv\":\"%s\"}\n",
           name, use_cpu ? vc : vw, train ? "img/s" : "ms", use_cpu ? "cpu" : "wall", vw, vc, reps,
           iters, (long long)fs_model_num_params(b.m), 1e-6 * (double)fs_model_flops(b.m),
           fs_threads_describe(), fs_conv2d_impl_name(fs_conv2d_get_impl()));
    fflush(stdout);
    fs_optimizer_free(b.opt);
    fs_run_free(b.r);
    fs_model_free(b.m);
    fs_free(b.x);
    free(b.lab);
    return 0;
}
