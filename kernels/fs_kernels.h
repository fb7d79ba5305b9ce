/*
 * fs_kernels.h — float32 NCHW compute kernels, forward and backward (PyTorch semantics).
 *
 * Pure functions (STYLE C8): outputs first, inputs const, shapes explicit, no I/O, no allocation
 * inside, no globals except the thread setting (fs_threads_*). Backward functions ADD into the
 * gradient buffers they are given (the caller zeroes them once per step), except where the comment
 * says "written". Any gradient pointer may be NULL when that gradient is not wanted.
 *
 * Threading policy (SYSTEMS.md d3): cblas_sgemm is called from serial code, except in the
 * convolution's per-image mode, taken only where d3 item 4 allows it (OpenMP OpenBLAS, or a BLAS
 * pool of one thread); the convolution's own AVX-512/AVX2 micro-kernels run inside OpenMP loops
 * over images. OpenMP loops use schedule(static); float sums that must be reproducible use
 * per-thread partials added in thread order. Results are bitwise reproducible for a fixed thread
 * count (and implementation). See docs/kernels.md.
 */
#ifndef FS_KERNELS_H
#define FS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- threads ------------------------------------------------------------------------------- */

/* Applies the one thread setting to OpenMP and OpenBLAS (threads <= 0: CPUs in the affinity
 * mask). Call once at start-up, from the main thread. */
void fs_threads_configure(int threads);
int fs_threads_get(void);
/* "OpenBLAS 0.3.21 ... (pthread|openmp), N threads" for logs and bench reports. */
const char *fs_threads_describe(void);
/* Call first thing in main(): if OpenBLAS misdetected this CPU (0.3.21 falls back to SSE3
 * kernels on AMD Zen 4), sets OPENBLAS_CORETYPE and re-executes the program (blas_core.c).
 * Returns only when no re-execution was needed or possible. */
void fs_blas_select_core(char **argv);

/* OpenBLAS's DYNAMIC_ARCH picks its kernels before main and may fall back to a generic core on
 * CPUs it does not know (here: Intel family 6 model 207 -> "Prescott", SSE3 kernels, 3-4x slower
 * GEMM). Returns the OPENBLAS_CORETYPE value that would select proper kernels for this CPU
 * ("SkylakeX" with AVX-512, "Haswell" with AVX2+FMA) when OpenBLAS runs a generic/SSE core and
 * OPENBLAS_CORETYPE is not set; NULL when nothing is to gain (fs_blas_select_core acts on the
 * same situation by re-executing). The convolutions and, with the micro-kernels, the linear
 * layers do not depend on it. */
const char *fs_blas_coretype_hint(void);

/* ---- convolution -------------------------------------------------------------------------- */

typedef struct {
    int N, C, H, W;     /* input */
    int OC, KH, KW;     /* weight [OC, C/groups, KH, KW] (PyTorch conv.weight layout) */
    int stride, pad;    /* same in both spatial dimensions */
    int groups;         /* 1, or C == OC == groups for depthwise */
    int OH, OW;         /* filled by fs_conv2d_shape_init */
} fs_conv2d_shape;

/* Fills OH/OW; 0, or FS_EINVAL if the shape is impossible (groups not dividing C/OC, kernel larger
 * than the padded input, non-positive sizes). */
int fs_conv2d_shape_init(fs_conv2d_shape *s);
/* Floats of scratch memory fs_conv2d_forward/backward need for this shape. The size depends on
 * the thread setting and the implementation (fs_conv2d_set_impl): compute it after both are set,
 * and again if either changes. */
size_t fs_conv2d_workspace(const fs_conv2d_shape *s);

/* out [N, OC, OH, OW] written; in [N, C, H, W]; w [OC, C/groups, KH, KW]; bias [OC] or NULL.
 * Matches torch.nn.functional.conv2d. */
void fs_conv2d_forward(float *restrict out, const float *restrict in, const float *restrict w,
                       const float *restrict bias, float *restrict work, const fs_conv2d_shape *s);
/* din [N,C,H,W] +=, dw [OC,C/g,KH,KW] +=, dbias [OC] += (each may be NULL). */
void fs_conv2d_backward(float *din, float *dw, float *dbias, const float *dout, const float *in,
                        const float *w, float *work, const fs_conv2d_shape *s);

/* Implementation of the non-depthwise convolutions and of the linear layers (one setting).
 * AUTO (the default) picks the best the CPU supports: own AVX-512 or AVX2+FMA micro-kernels
 * (independent of the kernels OpenBLAS's DYNAMIC_ARCH selects), else cblas_sgemm (with im2col
 * for convolutions); for the linear layers AUTO keeps cblas_sgemm unless OpenBLAS fell back to a
 * generic core (fs_blas_coretype_hint). Forcing one is for tests and benchmarks: fs_conv2d_set_impl returns
 * FS_EUNSUPPORTED if the CPU lacks it. Set it before computing workspace sizes; like the thread
 * setting it is process-wide. */
enum {
    FS_CONV_IMPL_AUTO = 0,
    FS_CONV_IMPL_BLAS = 1,
    FS_CONV_IMPL_AVX2 = 2,
    FS_CONV_IMPL_AVX512 = 3,
};
int fs_conv2d_set_impl(int impl);
int fs_conv2d_get_impl(void);               /* the one in use (never AUTO) */
const char *fs_conv2d_impl_name(int impl);

/* ---- batch norm (torch.nn.BatchNorm2d; also used for [N, C] with H = W = 1) ---------------- */

typedef struct {
    int N, C, HW;       /* x is [N, C, HW] */
    float eps;          /* 1e-5 */
    float momentum;     /* 0.1: running = (1 - m) * running + m * batch (unbiased var) */
} fs_bn_shape;

/* Training mode: normalise with batch statistics; writes mean[C], invstd[C] (saved for backward)
 * and updates running_mean/running_var in place (either may be NULL to skip the update). */
void fs_bn_forward_train(float *restrict y, float *restrict mean, float *restrict invstd,
                         float *running_mean, float *running_var, const float *restrict x,
                         const float *restrict gamma, const float *restrict beta,
                         const fs_bn_shape *s);
/* Inference mode: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta. */
void fs_bn_forward_eval(float *restrict y, const float *restrict x, const float *restrict gamma,
                        const float *restrict beta, const float *restrict running_mean,
                        const float *restrict running_var, const fs_bn_shape *s);
/* Backward of the training mode (batch statistics): dx +=, dgamma +=, dbeta +=. */
void fs_bn_backward_train(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *invstd, const float *gamma,
                          const fs_bn_shape *s);
/* Backward of the inference mode (statistics are constants): dx +=, dgamma +=, dbeta +=. */
void fs_bn_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                         const float *gamma, const float *running_mean, const float *running_var,
                         const fs_bn_shape *s);
/* Per-channel sums over [N, C, HW]: sum[c] += Σx, sumsq[c] += Σx² (double, for exact federated
 * batch-norm re-estimation). */
void fs_channel_moments(double *sum, double *sumsq, const float *x, int N, int C, int HW);

/* ---- element-wise ------------------------------------------------------------------------- */

void fs_relu_forward(float *y, const float *x, size_t n);                  /* y may equal x */
void fs_relu_backward(float *dx, const float *dy, const float *y, size_t n); /* dx += dy*(y>0) */
void fs_add_forward(float *y, const float *a, const float *b, size_t n);   /* y = a + b */
void fs_axpy(float *y, float a, const float *x, size_t n);                 /* y += a*x */

/* ---- pooling ------------------------------------------------------------------------------ */

typedef struct {
    int N, C, H, W;
    int K, stride, pad;     /* square window; padding counts as -inf (torch max_pool2d) */
    int OH, OW;             /* filled by fs_pool_shape_init */
} fs_pool_shape;
int fs_pool_shape_init(fs_pool_shape *s);
/* out [N,C,OH,OW] written; argmax [N,C,OH,OW] written (index into the H*W plane). */
void fs_maxpool_forward(float *out, int32_t *argmax, const float *in, const fs_pool_shape *s);
void fs_maxpool_backward(float *din, const float *dout, const int32_t *argmax,
                         const fs_pool_shape *s);
/* out [N, C] = mean over H*W of in [N, C, HW]. */
void fs_gap_forward(float *out, const float *in, int N, int C, int HW);
void fs_gap_backward(float *din, const float *dout, int N, int C, int HW);

/* ---- linear (torch.nn.Linear: weight [OUT, IN]) ------------------------------------------ */

/* y [N, OUT] = x [N, IN] · wᵀ + bias (bias may be NULL). */
void fs_linear_forward(float *y, const float *x, const float *w, const float *bias, int N, int IN,
                       int OUT);
/* dx [N, IN] +=, dw [OUT, IN] +=, dbias [OUT] += (each may be NULL). */
void fs_linear_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                        const float *w, int N, int IN, int OUT);

/* ---- losses: each returns the SUM over samples (callers divide by the count they want) ------ */

/* Softmax cross-entropy. logits [N, K], labels [N] in [0, K). Returns Σ_i -log softmax(x_i)[y_i];
 * dlogits (written, may be NULL) = scale * (softmax - onehot). correct (may be NULL) += number of
 * argmax == label. */
double fs_softmax_xent(float *dlogits, int64_t *correct, const float *logits, const int32_t *labels,
                       int N, int K, float scale);
/* Σ (a - b)²; da (written, may be NULL) = scale * 2 (a - b). */
double fs_mse(float *da, const float *a, const float *b, size_t n, float scale);
/* Hinton distillation: Σ_i T² · KL(softmax(t_i/T) ‖ softmax(s_i/T)) over rows of [N, K];
 * ds (written, may be NULL) = scale * T * (softmax(s/T) - softmax(t/T)). */
double fs_kl_div_t(float *ds, const float *s, const float *t, int N, int K, float T, float scale);
/* Index of the largest value of each row of [N, K]: out [N]. */
void fs_argmax_rows(int32_t *out, const float *x, int N, int K);

/* ---- optimizers (torch.optim semantics) ---------------------------------------------------- */

typedef struct {
    float lr, momentum, dampening, weight_decay;
    int nesterov;
} fs_sgd_config;
/* torch.optim.SGD: g = grad + wd*w; buf = momentum*buf + (1-dampening)*g (buf = g on the first
 * step, signalled by first != 0); step = nesterov ? g + momentum*buf : buf; w -= lr*step. */
void fs_sgd_step(float *w, float *buf, const float *grad, size_t n, const fs_sgd_config *c,
                 int first);

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} fs_adamw_config;
/* torch.optim.AdamW; t is the 1-based step number. m, v: moment buffers (zero initially). */
void fs_adamw_step(float *w, float *m, float *v, const float *grad, size_t n,
                   const fs_adamw_config *c, long t);

#endif
