/*
 * conv2d.c — 2-D convolution (torch.nn.functional.conv2d semantics), forward and backward.
 *
 * General case: im2col PER IMAGE (the column buffer [C/g·KH·KW, OH·OW] stays in L2) followed by
 * cblas_sgemm with the weight seen as a row-major [OC/g, C/g·KH·KW] matrix (SYSTEMS.md d4).
 * 1x1 stride-1 unpadded convolutions use the input plane directly as the GEMM operand.
 * Depthwise convolutions (groups == C == OC) use a direct loop (a GEMM with M = 1 is wasteful).
 *
 * Threading (SYSTEMS.md d3): when BLAS may be called inside a parallel region
 * (fs__blas_in_parallel_ok) and more than one thread is configured, images are distributed over
 * the OpenMP team (schedule(static)), each thread with its own column buffer and its own weight
 * gradient partial, and the partials are added in thread order. Otherwise images are processed
 * one after another, im2col/col2im are OpenMP loops and every GEMM is a serial call that uses the
 * BLAS pool. Either way the result is bitwise reproducible for a fixed thread count.
 */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "fs_kernels.h"
#include "fs_util.h"
#include "kernels_internal.h"

/* ---- shape -------------------------------------------------------------------------------- */

int fs_conv2d_shape_init(fs_conv2d_shape *s)
{
    if (!s || s->N <= 0 || s->C <= 0 || s->H <= 0 || s->W <= 0 || s->OC <= 0 || s->KH <= 0 ||
        s->KW <= 0 || s->stride <= 0 || s->pad < 0 || s->groups <= 0)
        return FS_EINVAL;
    if (s->C % s->groups != 0 || s->OC % s->groups != 0)
        return FS_EINVAL;
    long long hp = (long long)s->H + 2LL * s->pad, wp = (long long)s->W + 2LL * s->pad;
    if (hp < s->KH || wp < s->KW)
        return FS_EINVAL;
    long long oh = (hp - s->KH) / s->stride + 1, ow = (wp - s->KW) / s->stride + 1;
    /* Every GEMM dimension and every per-image plane must fit a 32-bit blasint. */
    long long kcol = (long long)(s->C / s->groups) * s->KH * s->KW;
    if (oh * ow > INT_MAX || kcol > INT_MAX || kcol * oh * ow > INT_MAX ||
        (long long)s->C * s->H * s->W > INT_MAX || (long long)s->OC * oh * ow > INT_MAX ||
        (long long)s->OC * kcol > INT_MAX)
        return FS_EINVAL;
    s->OH = (int)oh;
    s->OW = (int)ow;
    return 0;
}

static int is_depthwise(const fs_conv2d_shape *s)
{
    return s->groups > 1 && s->groups == s->C && s->groups == s->OC;
}

static int is_pointwise(const fs_conv2d_shape *s)
{
    return s->KH == 1 && s->KW == 1 && s->stride == 1 && s->pad == 0;
}

/* Team size for the per-image parallel mode, or 1 for the serial-GEMM mode. */
static int image_threads(const fs_conv2d_shape *s)
{
    int t = fs__threads();
    if (t <= 1 || !fs__blas_in_parallel_ok())
        return 1;
    return t < s->N ? t : s->N;
}

static size_t col_floats(const fs_conv2d_shape *s)
{
    if (is_pointwise(s) || is_depthwise(s))
        return 0;
    return (size_t)(s->C / s->groups) * s->KH * s->KW * (size_t)s->OH * s->OW;
}

static size_t wpart_floats(const fs_conv2d_shape *s)
{
    return fs_align_up((size_t)s->OC * (s->C / s->groups) * s->KH * s->KW, 16);
}

/* Row stride of the padded column buffers of the micro-kernel path: a multiple of the widest
 * register tile (32 floats), so tiles may read whole vectors past OH*OW. */
static size_t simd_ld(const fs_conv2d_shape *s)
{
    return fs_align_up((size_t)s->OH * s->OW, 32);
}

/* Images per backward chunk: the dot products of the weight gradient run over chunk·ld columns
 * (long enough to amortise the horizontal sums), the column buffer stays within ~768 KiB (L2),
 * and every thread still gets a chunk. */
static int simd_chunk(const fs_conv2d_shape *s)
{
    const size_t ld = simd_ld(s), kcol = (size_t)(s->C / s->groups) * s->KH * s->KW;
    size_t nb = (512 + ld - 1) / ld;
    size_t budget = (size_t)196608 / (kcol * ld);
    if (nb > budget)
        nb = budget;
    int t = fs__threads();
    size_t fair = ((size_t)s->N + (size_t)t - 1) / (size_t)t;
    if (nb > fair)
        nb = fair;
    return nb < 1 ? 1 : (int)nb;
}

/* Per-thread floats of the micro-kernel path: padded col, padded dout copy, weight partial. */
static size_t simd_col_floats(const fs_conv2d_shape *s)
{
    return fs_align_up((size_t)(s->C / s->groups) * s->KH * s->KW * simd_ld(s) *
                           (size_t)simd_chunk(s), 16);
}

static size_t simd_dpad_floats(const fs_conv2d_shape *s)
{
    return fs_align_up((size_t)(s->OC / s->groups) * simd_ld(s) * (size_t)simd_chunk(s), 16);
}

static size_t simd_thread_floats(const fs_conv2d_shape *s)
{
    return simd_col_floats(s) + simd_dpad_floats(s) + wpart_floats(s);
}

static int simd_threads(const fs_conv2d_shape *s)
{
    int t = fs__threads();
    return t < s->N ? t : s->N;
}

size_t fs_conv2d_workspace(const fs_conv2d_shape *s)
{
    if (is_depthwise(s))
        return 0;
    if (fs_conv2d_get_impl() != FS_CONV_IMPL_BLAS)
        return (size_t)simd_threads(s) * simd_thread_floats(s);
    size_t col = fs_align_up(col_floats(s), 16);
    int t = fs__threads();
    if (t <= 1)
        return col;
    /* Room for the per-image parallel mode, whichever mode is taken at call time. */
    size_t tt = (size_t)(t < s->N ? t : s->N);
    size_t par = tt * (col + wpart_floats(s));
    return par > col ? par : col;
}

/* ---- im2col / col2im for one image and one group ------------------------------------------ */

/* Valid output-column range [lo, hi) for kernel column kw: 0 <= ow*stride - pad + kw < W. */
static inline void valid_range(int kw, int stride, int pad, int W, int OW, int *lo, int *hi)
{
    int a = pad - kw; /* need ow*stride >= a */
    int l = a <= 0 ? 0 : (a + stride - 1) / stride;
    int b = W - 1 + pad - kw; /* need ow*stride <= b */
    int h = b < 0 ? 0 : b / stride + 1;
    if (h > OW)
        h = OW;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

/* col row r = (c*KH + kh)*KW + kw, [OH*OW]: in[c, oh*s - p + kh, ow*s - p + kw] or 0. */
static void im2col_row(float *restrict dst, const float *restrict src, int kh, int kw,
                       const fs_conv2d_shape *s)
{
    const int H = s->H, W = s->W, OH = s->OH, OW = s->OW, st = s->stride, pad = s->pad;
    int lo, hi;
    valid_range(kw, st, pad, W, OW, &lo, &hi);
    for (int oh = 0; oh < OH; oh++) {
        float *d = dst + (size_t)oh * OW;
        int ih = oh * st - pad + kh;
        if (ih < 0 || ih >= H) {
            memset(d, 0, sizeof(float) * (size_t)OW);
            continue;
        }
        const float *srow = src + (size_t)ih * W;
        for (int ow = 0; ow < lo; ow++)
            d[ow] = 0.0f;
        if (st == 1) {
            if (hi > lo)
                memcpy(d + lo, srow + lo - pad + kw, sizeof(float) * (size_t)(hi - lo));
        } else {
            for (int ow = lo; ow < hi; ow++)
                d[ow] = srow[ow * st - pad + kw];
        }
        for (int ow = hi; ow < OW; ow++)
            d[ow] = 0.0f;
    }
}

/* src: Cg input planes of one image; col: [Cg*KH*KW] rows `ld` apart, `width` (>= OH*OW) columns
 * written, those past OH*OW zeroed. nthr > 1: OpenMP over rows. */
static void im2col_w(float *restrict col, const float *restrict src, int Cg,
                     const fs_conv2d_shape *s, size_t ld, size_t width, int nthr)
{
    const int KK = s->KH * s->KW;
    const size_t plane = (size_t)s->H * s->W, ohw = (size_t)s->OH * s->OW;
    const int rows = Cg * KK;
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int r = 0; r < rows; r++) {
        int c = r / KK, k = r % KK;
        float *row = col + (size_t)r * ld;
        im2col_row(row, src + (size_t)c * plane, k / s->KW, k % s->KW, s);
        for (size_t i = ohw; i < width; i++)
            row[i] = 0.0f;
    }
}

static void im2col(float *restrict col, const float *restrict src, int Cg,
                   const fs_conv2d_shape *s, size_t ld, int nthr)
{
    im2col_w(col, src, Cg, s, ld, ld, nthr);
}

/* dst plane += col row (kh, kw) scattered back. */
static void col2im_row(float *restrict dst, const float *restrict row, int kh, int kw,
                       const fs_conv2d_shape *s)
{
    const int H = s->H, W = s->W, OH = s->OH, OW = s->OW, st = s->stride, pad = s->pad;
    int lo, hi;
    valid_range(kw, st, pad, W, OW, &lo, &hi);
    for (int oh = 0; oh < OH; oh++) {
        int ih = oh * st - pad + kh;
        if (ih < 0 || ih >= H)
            continue;
        const float *r = row + (size_t)oh * OW;
        float *drow = dst + (size_t)ih * W - pad + kw;
        if (st == 1) {
#pragma omp simd
            for (int ow = lo; ow < hi; ow++)
                drow[ow] += r[ow];
        } else {
            for (int ow = lo; ow < hi; ow++)
                drow[ow * st] += r[ow];
        }
    }
}

/* dst (Cg planes of one image) += col2im(col), col rows ld apart. Parallel over channels: each
 * plane has one owner. */
static void col2im(float *restrict dst, const float *restrict col, int Cg, const fs_conv2d_shape *s,
                   size_t ld, int nthr)
{
    const int KK = s->KH * s->KW;
    const size_t plane = (size_t)s->H * s->W, ohw = ld;
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int c = 0; c < Cg; c++)
        for (int k = 0; k < KK; k++)
            col2im_row(dst + (size_t)c * plane, col + ((size_t)c * KK + k) * ohw, k / s->KW,
                       k % s->KW, s);
}

/* ---- depthwise: direct loops ---------------------------------------------------------------- */

static void dw_forward(float *restrict out, const float *restrict in, const float *restrict w,
                       const float *restrict bias, const fs_conv2d_shape *s)
{
    const int C = s->C, H = s->H, W = s->W, OH = s->OH, OW = s->OW, KH = s->KH, KW = s->KW;
    const int st = s->stride, pad = s->pad;
    const long planes = (long)s->N * C;
#pragma omp parallel for schedule(static) num_threads(fs__threads()) if (fs__threads() > 1)
    for (long p = 0; p < planes; p++) {
        int c = (int)(p % C);
        const float *src = in + (size_t)p * H * W;
        const float *wc = w + (size_t)c * KH * KW;
        float *dst = out + (size_t)p * OH * OW;
        float b = bias ? bias[c] : 0.0f;
        for (size_t i = 0; i < (size_t)OH * OW; i++)
            dst[i] = b;
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                float wv = wc[kh * KW + kw];
                int lo, hi;
                valid_range(kw, st, pad, W, OW, &lo, &hi);
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * st - pad + kh;
                    if (ih < 0 || ih >= H)
                        continue;
                    const float *srow = src + (size_t)ih * W - pad + kw;
                    float *d = dst + (size_t)oh * OW;
                    for (int ow = lo; ow < hi; ow++)
                        d[ow] += wv * srow[ow * st];
                }
            }
    }
}

static void dw_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                        const fs_conv2d_shape *s)
{
    const int N = s->N, C = s->C, H = s->H, W = s->W, OH = s->OH, OW = s->OW, KH = s->KH,
              KW = s->KW;
    const int st = s->stride, pad = s->pad, nthr = fs__threads();
    if (din) {
        const long planes = (long)N * C;
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
        for (long p = 0; p < planes; p++) {
            int c = (int)(p % C);
            const float *g = dout + (size_t)p * OH * OW;
            const float *wc = w + (size_t)c * KH * KW;
            float *dst = din + (size_t)p * H * W;
            for (int kh = 0; kh < KH; kh++)
                for (int kw = 0; kw < KW; kw++) {
                    float wv = wc[kh * KW + kw];
                    int lo, hi;
                    valid_range(kw, st, pad, W, OW, &lo, &hi);
                    for (int oh = 0; oh < OH; oh++) {
                        int ih = oh * st - pad + kh;
                        if (ih < 0 || ih >= H)
                            continue;
                        float *drow = dst + (size_t)ih * W - pad + kw;
                        const float *grow = g + (size_t)oh * OW;
                        for (int ow = lo; ow < hi; ow++)
                            drow[ow * st] += wv * grow[ow];
                    }
                }
        }
    }
    if (dw) {
        /* Each channel's KH*KW sums belong to one thread; images are added in order (double). */
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
        for (int c = 0; c < C; c++)
            for (int kh = 0; kh < KH; kh++)
                for (int kw = 0; kw < KW; kw++) {
                    int lo, hi;
                    valid_range(kw, st, pad, W, OW, &lo, &hi);
                    double acc = 0.0;
                    for (int n = 0; n < N; n++) {
                        const float *src = in + ((size_t)n * C + c) * H * W;
                        const float *g = dout + ((size_t)n * C + c) * OH * OW;
                        for (int oh = 0; oh < OH; oh++) {
                            int ih = oh * st - pad + kh;
                            if (ih < 0 || ih >= H)
                                continue;
                            const float *srow = src + (size_t)ih * W - pad + kw;
                            const float *grow = g + (size_t)oh * OW;
                            float a = 0.0f;
                            for (int ow = lo; ow < hi; ow++)
                                a += grow[ow] * srow[ow * st];
                            acc += a;
                        }
                    }
                    dw[((size_t)c * KH + kh) * KW + kw] += (float)acc;
                }
    }
}

/* ---- micro-kernel path (conv_simd.c): padded im2col per image, own GEMM tiles ------------ */

static void simd_forward_image(int impl, float *out_n, const float *in_n, const float *w,
                               float *col, const fs_conv2d_shape *s)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G;
    const int kcol = Cg * s->KH * s->KW, ohw = s->OH * s->OW;
    const size_t plane = (size_t)s->H * s->W, ld = simd_ld(s);
    for (int g = 0; g < G; g++) {
        im2col(col, in_n + (size_t)g * Cg * plane, Cg, s, ld, 1);
        fs__ugemm_nn(impl, OCg, ohw, kcol, w + (size_t)g * OCg * kcol, kcol, 1, col,
                     (ptrdiff_t)ld, out_n + (size_t)g * OCg * ohw, ohw, 0);
    }
}

/* Images n0 .. n0+nb-1, all groups. Column blocks of ld per image, rows L = nb·ld long:
 * dpad [OCg, L] (dout, zero-padded), col [kcol, L]. */
static void simd_backward_chunk(int impl, float *din, float *dw_acc, const float *dout,
                                const float *in, const float *w, float *col, float *dpad, int n0,
                                int nb, const fs_conv2d_shape *s)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G;
    const int kcol = Cg * s->KH * s->KW, ohw = s->OH * s->OW;
    const size_t plane = (size_t)s->H * s->W, ld = simd_ld(s), L = ld * (size_t)nb;
    const size_t in_img = (size_t)s->C * plane, out_img = (size_t)s->OC * ohw;
    const int pw = is_pointwise(s);
    for (int g = 0; g < G; g++) {
        const float *wg = w + (size_t)g * OCg * kcol;
        for (int i = 0; i < nb; i++) {
            const float *go = dout + (size_t)(n0 + i) * out_img + (size_t)g * OCg * ohw;
            for (int oc = 0; oc < OCg; oc++) { /* dout rows, zero-padded to ld */
                float *d = dpad + (size_t)oc * L + (size_t)i * ld;
                memcpy(d, go + (size_t)oc * ohw, sizeof(float) * (size_t)ohw);
                for (size_t k = (size_t)ohw; k < ld; k++)
                    d[k] = 0.0f;
            }
        }
        if (dw_acc) { /* dW[OCg, kcol] += dpad · colᵀ over all nb images */
            for (int i = 0; i < nb; i++)
                im2col_w(col + (size_t)i * ld, in + (size_t)(n0 + i) * in_img + (size_t)g * Cg * plane,
                         Cg, s, L, ld, 1);
            fs__ugemm_dot(impl, OCg, kcol, (int)L, dpad, (ptrdiff_t)L, col, (ptrdiff_t)L,
                          dw_acc + (size_t)g * OCg * kcol, kcol);
        }
        if (din) {
            if (pw) { /* din += Wᵀ · dout directly */
                for (int i = 0; i < nb; i++)
                    fs__ugemm_nn(impl, kcol, ohw, OCg, wg, 1, kcol, dpad + (size_t)i * ld,
                                 (ptrdiff_t)L, din + (size_t)(n0 + i) * in_img + (size_t)g * Cg * plane,
                                 ohw, 1);
            } else { /* dcol[kcol, L] = Wᵀ · dpad, then col2im per image */
                fs__ugemm_nn(impl, kcol, (int)L, OCg, wg, 1, kcol, dpad, (ptrdiff_t)L, col,
                             (ptrdiff_t)L, 0);
                for (int i = 0; i < nb; i++)
                    col2im(din + (size_t)(n0 + i) * in_img + (size_t)g * Cg * plane,
                           col + (size_t)i * ld, Cg, s, L, 1);
            }
        }
    }
}

static void simd_forward(int impl, float *out, const float *in, const float *w, float *work,
                         const fs_conv2d_shape *s)
{
    const size_t in_img = (size_t)s->C * s->H * s->W, out_img = (size_t)s->OC * s->OH * s->OW;
    const int nt = simd_threads(s);
    const size_t per = simd_thread_floats(s);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *col = work + (size_t)omp_get_thread_num() * per;
#pragma omp for schedule(static)
        for (int n = 0; n < s->N; n++)
            simd_forward_image(impl, out + n * out_img, in + n * in_img, w, col, s);
    }
}

static void simd_backward(int impl, float *din, float *dw, const float *dout, const float *in,
                          const float *w, float *work, const fs_conv2d_shape *s)
{
    const size_t wn = (size_t)s->OC * (s->C / s->groups) * s->KH * s->KW;
    const int nt = simd_threads(s), nb = simd_chunk(s), nchunks = (s->N + nb - 1) / nb;
    const size_t per = simd_thread_floats(s), colf = simd_col_floats(s);
    const size_t dpadf = simd_dpad_floats(s);
    if (nt <= 1) {
        for (int c = 0; c < nchunks; c++) {
            int n0 = c * nb, cnt = s->N - n0 < nb ? s->N - n0 : nb;
            simd_backward_chunk(impl, din, dw, dout, in, w, work, work + colf, n0, cnt, s);
        }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        float *col = work + (size_t)omp_get_thread_num() * per;
        float *dpad = col + colf, *mydw = dw ? dpad + dpadf : NULL;
        if (mydw)
            memset(mydw, 0, sizeof(float) * wn);
#pragma omp for schedule(static)
        for (int c = 0; c < nchunks; c++) {
            int n0 = c * nb, cnt = s->N - n0 < nb ? s->N - n0 : nb;
            simd_backward_chunk(impl, din, mydw, dout, in, w, col, dpad, n0, cnt, s);
        }
        if (dw) {
            /* Partials added in thread order: element i belongs to one thread. */
#pragma omp for schedule(static)
            for (size_t i = 0; i < wn; i++) {
                float a = dw[i];
                for (int t = 0; t < nt; t++)
                    a += work[(size_t)t * per + colf + dpadf + i];
                dw[i] = a;
            }
        }
    }
}

/* ---- forward ------------------------------------------------------------------------------ */

/* One image, all groups. col: this caller's column buffer; nthr: team for im2col. */
static void forward_image(float *restrict out_n, const float *restrict in_n,
                          const float *restrict w, float *restrict col, const fs_conv2d_shape *s,
                          int nthr)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G;
    const int kcol = Cg * s->KH * s->KW, ohw = s->OH * s->OW;
    const size_t plane = (size_t)s->H * s->W;
    for (int g = 0; g < G; g++) {
        const float *src = in_n + (size_t)g * Cg * plane;
        const float *b = src;
        if (!is_pointwise(s)) {
            im2col(col, src, Cg, s, (size_t)ohw, nthr);
            b = col;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OCg, ohw, kcol, 1.0f,
                    w + (size_t)g * OCg * kcol, kcol, b, ohw, 0.0f,
                    out_n + (size_t)g * OCg * ohw, ohw);
    }
}

static void add_bias(float *out, const float *bias, const fs_conv2d_shape *s)
{
    const size_t ohw = (size_t)s->OH * s->OW;
    const long planes = (long)s->N * s->OC;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (long p = 0; p < planes; p++) {
        float b = bias[p % s->OC];
        float *o = out + (size_t)p * ohw;
#pragma omp simd
        for (size_t i = 0; i < ohw; i++)
            o[i] += b;
    }
}

void fs_conv2d_forward(float *restrict out, const float *restrict in, const float *restrict w,
                       const float *restrict bias, float *restrict work, const fs_conv2d_shape *s)
{
    if (is_depthwise(s)) {
        dw_forward(out, in, w, bias, s);
        return;
    }
    const int impl = fs_conv2d_get_impl();
    if (impl != FS_CONV_IMPL_BLAS) {
        simd_forward(impl, out, in, w, work, s);
        if (bias)
            add_bias(out, bias, s);
        return;
    }
    const size_t in_img = (size_t)s->C * s->H * s->W, out_img = (size_t)s->OC * s->OH * s->OW;
    const size_t col = fs_align_up(col_floats(s), 16);
    const int it = image_threads(s);
    if (it > 1) {
#pragma omp parallel num_threads(it)
        {
            float *mycol = work + (size_t)omp_get_thread_num() * (col + wpart_floats(s));
#pragma omp for schedule(static)
            for (int n = 0; n < s->N; n++)
                forward_image(out + n * out_img, in + n * in_img, w, mycol, s, 1);
        }
    } else {
        const int nthr = fs__threads();
        for (int n = 0; n < s->N; n++)
            forward_image(out + n * out_img, in + n * in_img, w, work, s, nthr);
    }
    if (bias)
        add_bias(out, bias, s);
}

/* ---- backward ----------------------------------------------------------------------------- */

/* One image, all groups: dw_acc += dout_n · colᵀ; din_n += col2im(Wᵀ · dout_n). */
static void backward_image(float *din_n, float *dw_acc, const float *dout_n, const float *in_n,
                           const float *w, float *col, const fs_conv2d_shape *s, int nthr)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G;
    const int kcol = Cg * s->KH * s->KW, ohw = s->OH * s->OW;
    const size_t plane = (size_t)s->H * s->W;
    const int pw = is_pointwise(s);
    for (int g = 0; g < G; g++) {
        const float *src = in_n + (size_t)g * Cg * plane;
        const float *go = dout_n + (size_t)g * OCg * ohw;
        const float *wg = w + (size_t)g * OCg * kcol;
        if (dw_acc) {
            const float *b = src;
            if (!pw) {
                im2col(col, src, Cg, s, (size_t)ohw, nthr);
                b = col;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OCg, kcol, ohw, 1.0f, go, ohw, b,
                        ohw, 1.0f, dw_acc + (size_t)g * OCg * kcol, kcol);
        }
        if (din_n) {
            float *dst = din_n + (size_t)g * Cg * plane;
            if (pw) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kcol, ohw, OCg, 1.0f, wg,
                            kcol, go, ohw, 1.0f, dst, ohw);
            } else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kcol, ohw, OCg, 1.0f, wg,
                            kcol, go, ohw, 0.0f, col, ohw);
                col2im(dst, col, Cg, s, (size_t)ohw, nthr);
            }
        }
    }
}

static void bias_backward(float *dbias, const float *dout, const fs_conv2d_shape *s)
{
    const size_t ohw = (size_t)s->OH * s->OW;
    const int nthr = fs__threads();
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int oc = 0; oc < s->OC; oc++) {
        double acc = 0.0;
        for (int n = 0; n < s->N; n++) {
            const float *g = dout + ((size_t)n * s->OC + oc) * ohw;
            float a = 0.0f;
            for (size_t i = 0; i < ohw; i++)
                a += g[i];
            acc += a;
        }
        dbias[oc] += (float)acc;
    }
}

void fs_conv2d_backward(float *din, float *dw, float *dbias, const float *dout, const float *in,
                        const float *w, float *work, const fs_conv2d_shape *s)
{
    if (dbias)
        bias_backward(dbias, dout, s);
    if (!din && !dw)
        return;
    if (is_depthwise(s)) {
        dw_backward(din, dw, dout, in, w, s);
        return;
    }
    const int impl = fs_conv2d_get_impl();
    if (impl != FS_CONV_IMPL_BLAS) {
        simd_backward(impl, din, dw, dout, in, w, work, s);
        return;
    }
    const size_t in_img = (size_t)s->C * s->H * s->W, out_img = (size_t)s->OC * s->OH * s->OW;
    const size_t col = fs_align_up(col_floats(s), 16), wp = wpart_floats(s);
    const size_t wn = (size_t)s->OC * (s->C / s->groups) * s->KH * s->KW;
    const int it = image_threads(s);
    if (it > 1) {
#pragma omp parallel num_threads(it)
        {
            float *mycol = work + (size_t)omp_get_thread_num() * (col + wp);
            float *mydw = dw ? mycol + col : NULL;
            if (mydw)
                memset(mydw, 0, sizeof(float) * wn);
#pragma omp for schedule(static)
            for (int n = 0; n < s->N; n++)
                backward_image(din ? din + n * in_img : NULL, mydw, dout + n * out_img,
                               in + n * in_img, w, mycol, s, 1);
            if (dw) {
                /* Partials added in thread order: element i belongs to one thread. */
#pragma omp for schedule(static)
                for (size_t i = 0; i < wn; i++) {
                    float a = dw[i];
                    for (int t = 0; t < it; t++)
                        a += work[(size_t)t * (col + wp) + col + i];
                    dw[i] = a;
                }
            }
        }
    } else {
        const int nthr = fs__threads();
        for (int n = 0; n < s->N; n++)
            backward_image(din ? din + n * in_img : NULL, dw, dout + n * out_img, in + n * in_img,
                           w, work, s, nthr);
    }
}
