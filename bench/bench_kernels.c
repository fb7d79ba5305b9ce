/*
 * bench_kernels.c — convolution throughput of fs_kernels against plain cblas_sgemm.
 *
 * The conv layers of a ResNet-20 on 1x28x28 input at batch 64 (stem 1->16; stages 16/32/64 of
 * 3x3 convs; the stride-2 3x3 convs and 1x1 downsamples that open stages 2 and 3), each counted as
 * often as it occurs in the network. For each layer: forward, backward-data and backward-weight
 * time of fs_conv2d_*, and of one cblas_sgemm at the same GEMM shape (M = OC, N = N·OH·OW,
 * K = C·KH·KW; the data gradient is the transposed product, the weight gradient contracts over N),
 * at 1 and 2 threads. Prints one JSON object per line:
 *   {"name": ..., "value": ..., "unit": ..., "reference": ..., "ratio": ...}
 * "conv_gemm_efficiency_t<T>" = (conv FLOPs / our time) / (same FLOPs / sgemm time).
 * Also: batch norm (train forward + backward, ms) and fs_linear_* on the MLP's 128x784x512 layer
 * against cblas_sgemm ("linear_*").
 *
 * Usage: bench_kernels [reps (default 5)] [threads list, default "1,2"] [layer name filter]
 *                      [conv implementation: auto | blas | avx2 | avx512]
 * (with a filter, "" for all, only the matching layers run: for profiling one shape).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_kernels.h"
#include "fs_rng.h"
#include "fs_util.h"

typedef struct {
    const char *name;
    int C, H, OC, K, stride, pad, count;
} layer;

static const layer LAYERS[] = {
    {"stem_1to16", 1, 28, 16, 3, 1, 1, 1},   {"s1_16to16", 16, 28, 16, 3, 1, 1, 6},
    {"s2_16to32_s2", 16, 28, 32, 3, 2, 1, 1}, {"s2_down_1x1", 16, 28, 32, 1, 2, 0, 1},
    {"s2_32to32", 32, 14, 32, 3, 1, 1, 5},   {"s3_32to64_s2", 32, 14, 64, 3, 2, 1, 1},
    {"s3_down_1x1", 32, 14, 64, 1, 2, 0, 1}, {"s3_64to64", 64, 7, 64, 3, 1, 1, 5},
};
#define NLAYERS (int)(sizeof LAYERS / sizeof LAYERS[0])
#define BATCH 64

enum { FWD, BWD_DATA, BWD_WEIGHT, NDIR };
static const char *DIR_NAME[NDIR] = {"fwd", "bwd_data", "bwd_weight"};

static void *xalloc(size_t floats)
{
    void *p = fs_alloc(sizeof(float) * (floats ? floats : 1));
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory (%zu floats)\n", floats);
        exit(1);
    }
    return p;
}

static void randn(float *p, size_t n, fs_rng *r) /* uniform in [-1, 1): cheap, enough here */
{
    for (size_t i = 0; i < n; i++)
        p[i] = 2.0f * fs_rng_uniform(r) - 1.0f;
}

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

static void emit(const char *name, double value, const char *unit, double reference)
{
    if (reference > 0)
        printf("{\"name\":\"%s\",\"value\":%.4g,\"unit\":\"%s\",\"reference\":%.4g,\"ratio\":%.4g}\n",
               name, value, unit, reference, value / reference);
    else
        printf("{\"name\":\"%s\",\"value\":%.4g,\"unit\":\"%s\",\"reference\":null,\"ratio\":null}\n",
               name, value, unit);
    fflush(stdout);
}

/* Seconds per call (median over reps, after one warm-up call). */
typedef struct {
    const layer *L;
    fs_conv2d_shape s;
    float *x, *w, *y, *dy, *dx, *dw, *work;
    float *A, *B, *Cm; /* sgemm operands: weight [M,K], col [K,N], out [M,N] */
    int M, N, K;
} bench_ctx;

static void run_ours(bench_ctx *b, int dir)
{
    if (dir == FWD)
        fs_conv2d_forward(b->y, b->x, b->w, NULL, b->work, &b->s);
    else if (dir == BWD_DATA)
        fs_conv2d_backward(b->dx, NULL, NULL, b->dy, b->x, b->w, b->work, &b->s);
    else
        fs_conv2d_backward(NULL, b->dw, NULL, b->dy, b->x, b->w, b->work, &b->s);
}

static void run_sgemm(bench_ctx *b, int dir)
{
    const int M = b->M, N = b->N, K = b->K;
    if (dir == FWD) /* out[M,N] = W[M,K] · col[K,N] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, b->A, K, b->B, N,
                    0.0f, b->Cm, N);
    else if (dir == BWD_DATA) /* dcol[K,N] = Wᵀ · dout[M,N] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, N, M, 1.0f, b->A, K, b->Cm, N,
                    0.0f, b->B, N);
    else /* dW[M,K] += dout[M,N] · colᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, K, N, 1.0f, b->Cm, N, b->B, N,
                    1.0f, b->A, K);
}

/* With one thread everything runs on the calling thread, so its CPU time is used: it leaves out
 * the time the thread waited for a core on a shared machine. With more threads: wall time. */
static int g_thread_clock;

static double now(void)
{
    if (!g_thread_clock)
        return fs_now_sec();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double time_it(bench_ctx *b, int dir, int ours, int reps)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    ours ? run_ours(b, dir) : run_sgemm(b, dir);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        ours ? run_ours(b, dir) : run_sgemm(b, dir);
        t[r] = now() - t0;
    }
    return median(t, reps);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    const char *tlist = argc > 2 ? argv[2] : "1,2";
    const char *filter = argc > 3 && argv[3][0] ? argv[3] : NULL;
    if (argc > 4) {
        static const char *names[] = {"auto", "blas", "avx2", "avx512"};
        int impl = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(argv[4], names[i]) == 0)
                impl = i; /* FS_CONV_IMPL_AUTO .. FS_CONV_IMPL_AVX512 */
        if (impl < 0 || fs_conv2d_set_impl(impl) != 0) {
            fprintf(stderr, "bench_kernels: conv implementation '%s' unknown or unsupported\n",
                    argv[4]);
            return 2;
        }
    }
    if (reps < 1 || reps > 64) {
        fprintf(stderr, "bench_kernels: reps must be 1..64, got '%s'\n", argv[1]);
        return 2;
    }
    fs_rng r;
    fs_rng_seed(&r, 42);
    char tbuf[64];
    snprintf(tbuf, sizeof tbuf, "%s", tlist);
    for (char *save = NULL, *tok = strtok_r(tbuf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int T = atoi(tok);
        if (T < 1 || T > 64) {
            fprintf(stderr, "bench_kernels: bad thread count '%s'\n", tok);
            return 2;
        }
        fs_threads_configure(T);
        g_thread_clock = T == 1;
        fprintf(stderr, "bench_kernels: %s; conv: %s; timing: %s\n", fs_threads_describe(),
                fs_conv2d_impl_name(fs_conv2d_get_impl()),
                g_thread_clock ? "thread CPU time" : "wall time");
        double flops_dir[NDIR] = {0}, ours_dir[NDIR] = {0}, ref_dir[NDIR] = {0};
        for (int li = 0; li < NLAYERS; li++) {
            const layer *L = &LAYERS[li];
            if (filter && !strstr(L->name, filter))
                continue;
            bench_ctx b = {.L = L};
            b.s = (fs_conv2d_shape){.N = BATCH, .C = L->C, .H = L->H, .W = L->H, .OC = L->OC,
                                    .KH = L->K, .KW = L->K, .stride = L->stride, .pad = L->pad,
                                    .groups = 1};
            if (fs_conv2d_shape_init(&b.s) != 0) {
                fprintf(stderr, "bench_kernels: bad layer %s\n", L->name);
                return 1;
            }
            size_t nx = (size_t)BATCH * L->C * L->H * L->H;
            size_t ny = (size_t)BATCH * L->OC * b.s.OH * b.s.OW;
            size_t nw = (size_t)L->OC * L->C * L->K * L->K;
            b.M = L->OC, b.N = BATCH * b.s.OH * b.s.OW, b.K = L->C * L->K * L->K;
            b.x = xalloc(nx), b.dx = xalloc(nx), b.y = xalloc(ny), b.dy = xalloc(ny);
            b.w = xalloc(nw), b.dw = xalloc(nw), b.work = xalloc(fs_conv2d_workspace(&b.s));
            b.A = xalloc((size_t)b.M * b.K), b.B = xalloc((size_t)b.K * b.N);
            b.Cm = xalloc((size_t)b.M * b.N);
            randn(b.x, nx, &r), randn(b.dy, ny, &r), randn(b.w, nw, &r);
            randn(b.A, (size_t)b.M * b.K, &r), randn(b.B, (size_t)b.K * b.N, &r);
            randn(b.Cm, (size_t)b.M * b.N, &r);
            double flops = 2.0 * b.M * (double)b.N * b.K;
            for (int d = 0; d < NDIR; d++) {
                if (d == BWD_DATA && li == 0)
                    continue; /* the stem's input gradient is never needed */
                double to = time_it(&b, d, 1, reps), ts = time_it(&b, d, 0, reps);
                char name[128];
                snprintf(name, sizeof name, "conv_%s_%s_t%d", L->name, DIR_NAME[d], T);
                emit(name, flops / to * 1e-9, "GFLOP/s", flops / ts * 1e-9);
                flops_dir[d] += flops * L->count;
                ours_dir[d] += to * L->count;
                ref_dir[d] += ts * L->count;
            }
            fs_free(b.x), fs_free(b.dx), fs_free(b.y), fs_free(b.dy), fs_free(b.w);
            fs_free(b.dw), fs_free(b.work), fs_free(b.A), fs_free(b.B), fs_free(b.Cm);
        }
        {
            /* Batch norm (train forward + backward) on the largest activation, [64, 16, 28x28]:
             * memory-bound passes, reported as ms per call. */
            fs_bn_shape bs = {.N = BATCH, .C = 16, .HW = 784, .eps = 1e-5f, .momentum = 0.1f};
            size_t n = (size_t)BATCH * 16 * 784;
            float *x = xalloc(n), *y = xalloc(n), *dy = xalloc(n), *dx = xalloc(n);
            float gm[16], bt[16], mean[16], invstd[16], rm[16] = {0}, rv[16] = {0}, dg[16], db[16];
            randn(x, n, &r), randn(dy, n, &r);
            for (int c = 0; c < 16; c++)
                gm[c] = 1.0f, bt[c] = 0.0f;
            double tb[64];
            for (int rep = 0; rep <= reps; rep++) {
                double t0 = now();
                fs_bn_forward_train(y, mean, invstd, rm, rv, x, gm, bt, &bs);
                fs_bn_backward_train(dx, dg, db, dy, x, mean, invstd, gm, &bs);
                double t1 = now();
                if (rep > 0) /* the first call warms up */
                    tb[rep - 1] = t1 - t0;
            }
            char name[128];
            snprintf(name, sizeof name, "bn_train_fwd_bwd_64x16x28x28_t%d", T);
            emit(name, 1e3 * median(tb, reps), "ms", 0);
            fs_free(x), fs_free(y), fs_free(dy), fs_free(dx);
        }
        if (!filter || strstr("linear", filter)) {
            /* The MLP's first layer at batch 128: fs_linear_* against cblas_sgemm. */
            const int N = 128, IN = 784, OUT = 512;
            float *x = xalloc((size_t)N * IN), *w = xalloc((size_t)OUT * IN);
            float *y = xalloc((size_t)N * OUT), *dy = xalloc((size_t)N * OUT);
            float *dx = xalloc((size_t)N * IN), *dw = xalloc((size_t)OUT * IN);
            randn(x, (size_t)N * IN, &r), randn(w, (size_t)OUT * IN, &r);
            randn(dy, (size_t)N * OUT, &r);
            static const char *what[3] = {"fwd", "bwd_data", "bwd_weight"};
            double t[2][3][64];
            for (int rep = 0; rep <= reps; rep++)
                for (int d = 0; d < 3; d++)
                    for (int ours = 0; ours < 2; ours++) {
                        double t0 = now();
                        if (ours && d == 0)
                            fs_linear_forward(y, x, w, NULL, N, IN, OUT);
                        else if (ours && d == 1)
                            fs_linear_backward(dx, NULL, NULL, dy, x, w, N, IN, OUT);
                        else if (ours)
                            fs_linear_backward(NULL, dw, NULL, dy, x, w, N, IN, OUT);
                        else if (d == 0)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f,
                                        x, IN, w, IN, 0.0f, y, OUT);
                        else if (d == 1)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IN, OUT,
                                        1.0f, dy, OUT, w, IN, 1.0f, dx, IN);
                        else
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, N, 1.0f,
                                        dy, OUT, x, IN, 1.0f, dw, IN);
                        if (rep > 0) /* the first round warms up */
                            t[ours][d][rep - 1] = now() - t0;
                    }
            const double flops = 2.0 * N * IN * OUT;
            for (int d = 0; d < 3; d++) {
                char name[128];
                snprintf(name, sizeof name, "linear_128x784x512_%s_t%d", what[d], T);
                emit(name, flops / median(t[1][d], reps) * 1e-9, "GFLOP/s",
                     flops / median(t[0][d], reps) * 1e-9);
            }
            fs_free(x), fs_free(w), fs_free(y), fs_free(dy), fs_free(dx), fs_free(dw);
        }
        double F = 0, TO = 0, TS = 0;
        for (int d = 0; d < NDIR; d++) {
            if (flops_dir[d] <= 0)
                continue; /* filtered out */
            char name[128];
            snprintf(name, sizeof name, "conv_total_%s_t%d", DIR_NAME[d], T);
            emit(name, flops_dir[d] / ours_dir[d] * 1e-9, "GFLOP/s",
                 flops_dir[d] / ref_dir[d] * 1e-9);
            F += flops_dir[d], TO += ours_dir[d], TS += ref_dir[d];
        }
        if (F <= 0)
            continue;
        char name[128];
        snprintf(name, sizeof name, "conv_total_t%d", T);
        emit(name, F / TO * 1e-9, "GFLOP/s", F / TS * 1e-9);
        snprintf(name, sizeof name, "conv_gemm_efficiency_t%d", T);
        emit(name, (F / TO) / (F / TS), "ratio", 1.0);
        if (T == 1) /* the headline figure */
            emit("conv_gemm_efficiency", (F / TO) / (F / TS), "ratio", 1.0);
        /* Convolutions only (no BN/ReLU/pool/optimizer): an upper bound on training speed. */
        snprintf(name, sizeof name, "conv_only_train_img_per_s_t%d", T);
        emit(name, BATCH / TO, "img/s", 0);
    }
    return 0;
}
