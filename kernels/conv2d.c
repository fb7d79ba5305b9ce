/*
 * conv2d.c — 2-D convolution (torch.nn.functional.conv2d semantics), forward and backward.
 *
 * Three implementations (fs_conv2d_get_impl; docs/kernels.md):
 *  - micro-kernels (AVX-512 / AVX2, conv_simd.c) with implicit GEMM over zero-padded phase
 *    planes: forward and weight gradient of every non-depthwise convolution, data gradient of
 *    stride-1 "same" convolutions (section "implicit-GEMM path" below);
 *  - micro-kernels with im2col per image (or per chunk of images) into row-padded column buffers:
 *    the remaining data gradients (section "micro-kernel path");
 *  - BLAS: im2col PER IMAGE (the column buffer [C/g·KH·KW, OH·OW] stays in L2) followed by
 *    cblas_sgemm with the weight seen as a row-major [OC/g, C/g·KH·KW] matrix (SYSTEMS.md d4);
 *    1x1 stride-1 unpadded convolutions use the input plane directly as the GEMM operand.
 * Depthwise convolutions (groups == C == OC) use direct loops (a GEMM with M = 1 is wasteful).
 *
 * Threading (SYSTEMS.md d3): the micro-kernel paths distribute chunks of images over the OpenMP
 * team (schedule(static)), each thread with its own buffers and weight-gradient partial, the
 * partials added in thread order. BLAS path: when BLAS may be called inside a parallel region
 * (fs__blas_in_parallel_ok) and more than one thread is configured, the same per-image split with
 * cblas_sgemm inside; otherwise images are processed one after another, im2col/col2im are OpenMP
 * loops and every GEMM is a serial call that uses the BLAS pool. Results are bitwise reproducible
 * for a fixed thread count and implementation.
 */
#include <cblas.h>
#include <limits.h>
#include <stdint.h>
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

/* Images per chunk, at most `want`, such that the chunks split evenly over the team: with
 * k = ceil(N / (T·want)) chunks per thread, nb = ceil(N / (T·k)). */
static int balanced_chunk(int N, size_t want)
{
    size_t t = (size_t)fs__threads(), n = (size_t)N;
    if (want < 1)
        want = 1;
    size_t k = (n + t * want - 1) / (t * want);
    size_t nb = (n + t * k - 1) / (t * k);
    return nb < 1 ? 1 : (int)nb;
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
    return balanced_chunk(s->N, nb);
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

static int implicit_ok(const fs_conv2d_shape *s);
static int same_conv(const fs_conv2d_shape *s);
static size_t implicit_workspace(const fs_conv2d_shape *s);

size_t fs_conv2d_workspace(const fs_conv2d_shape *s)
{
    if (is_depthwise(s))
        return 0;
    if (fs_conv2d_get_impl() != FS_CONV_IMPL_BLAS) {
        size_t simd = (size_t)simd_threads(s) * simd_thread_floats(s);
        if (!implicit_ok(s))
            return simd;
        size_t imp = implicit_workspace(s);
        /* other than "same" convolutions take the im2col path for the data gradient */
        return same_conv(s) || imp > simd ? imp : simd;
    }
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
                im2col_w(col + (size_t)i * ld,
                         in + (size_t)(n0 + i) * in_img + (size_t)g * Cg * plane, Cg, s, L, ld, 1);
            fs__ugemm_dot(impl, OCg, kcol, (int)L, dpad, (ptrdiff_t)L, col, (ptrdiff_t)L,
                          dw_acc + (size_t)g * OCg * kcol, kcol);
        }
        if (din) { /* dcol[kcol, L] = Wᵀ · dpad, then col2im per image */
            fs__ugemm_nn(impl, kcol, (int)L, OCg, wg, 1, kcol, dpad, (ptrdiff_t)L, col,
                         (ptrdiff_t)L, 0);
            for (int i = 0; i < nb; i++)
                col2im(din + (size_t)(n0 + i) * in_img + (size_t)g * Cg * plane,
                       col + (size_t)i * ld, Cg, s, L, 1);
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
        /* The runtime may give fewer threads than asked (nested regions): use the real team. */
        const int team = omp_get_num_threads();
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
                for (int t = 0; t < team; t++)
                    a += work[(size_t)t * per + colf + dpadf + i];
                dw[i] = a;
            }
        }
    }
}

/* ---- implicit-GEMM path (micro-kernels): no im2col --------------------------------------------
 *
 * With stride s, input row s·oh + kh − p lies in phase a = (kh − p) mod s of the rows, at phase
 * row oh + dy with dy = floor((kh − p) / s); the same for columns (phase b, shift dx). A chunk of
 * nb images is copied once into zero-padded phase planes ("regions", one per channel and used
 * phase (a, b); s = 1: the plane itself), laid out per region as: a head of F + T0·Wr zeros, then
 * per image Hr rows of Wr floats holding the Hq x Wq phase plane followed by zeros. Rows and images
 * share their zero borders (Wr >= Wq − dxmin, Hr >= Hq − dymin). Row (c, kh, kw) of the virtual
 * column matrix is then the region of (c, a, b) shifted by dy·Wr + dx (an offset table), and
 * outputs are computed on the grid n = i·S + oh·Wr + ow (S = Hr·Wr), the valid part copied out.
 * The weight gradient takes dot products of dout laid out on the same grid (zeros elsewhere)
 * with the shifted regions. The data gradient uses this path for stride-1 "same" convolutions
 * (KH = KW = 2p + 1): the grid of dout is then dout zero-padded by p, and the data gradient is
 * the same computation with the flipped, transposed weight; other shapes take the im2col path. */

#define IMP_MAX_STRIDE 4
#define IMP_TARGET_FWD 512  /* grid columns per chunk, forward */
#define IMP_TARGET_BWD 1536 /* backward: longer dot products for the weight gradient */

typedef struct {
    int st, Hq, Wq, Wr, Hr, T0, F, S, nb, KK, nph;
    int phase[IMP_MAX_STRIDE][IMP_MAX_STRIDE]; /* region index of used phases, or -1 */
    size_t nbS, head, cs, slack, xp, dp, tmp, wpart, per; /* floats; cs: region stride */
    size_t tabx, tabd, wt, shared;                        /* floats of the shared area */
} implicit_geom;

static int implicit_ok(const fs_conv2d_shape *s)
{
    /* (grid sizes are ints in the micro-kernel calls: keep planes far below 2^31) */
    return !is_depthwise(s) && s->stride <= IMP_MAX_STRIDE && s->pad <= 16 &&
           (long long)(s->H + s->KH + s->pad) * (s->W + s->KW + s->pad) < (1LL << 26);
}

static int same_conv(const fs_conv2d_shape *s)
{
    return s->stride == 1 && s->KH == s->KW && s->KH == 2 * s->pad + 1;
}

static int fdiv(int t, int s) /* floor(t / s), s > 0 */
{
    return t >= 0 ? t / s : -((-t + s - 1) / s);
}

static int imax(int a, int b)
{
    return a > b ? a : b;
}

/* target: grid columns per chunk (long dot products help the weight gradient; the forward
 * GEMM gains nothing from more than a few hundred). */
static implicit_geom implicit_geometry(const fs_conv2d_shape *s, size_t target)
{
    implicit_geom g;
    const int p = s->pad, st = s->stride, Cg = s->C / s->groups, OCg = s->OC / s->groups;
    g.st = st;
    g.Hq = (s->H + st - 1) / st;
    g.Wq = (s->W + st - 1) / st;
    const int dymin = fdiv(-p, st), dymax = fdiv(s->KH - 1 - p, st);
    const int dxmin = fdiv(-p, st), dxmax = fdiv(s->KW - 1 - p, st);
    g.Wr = imax(imax(s->OW, s->OW + dxmax), g.Wq - dxmin);
    g.Hr = imax(imax(s->OH, s->OH + dymax), g.Hq - dymin);
    g.T0 = -dymin;
    g.F = 16; /* >= -dxmin since p <= 16 */
    g.S = g.Hr * g.Wr;
    g.KK = s->KH * s->KW;
    g.nph = 0;
    for (int a = 0; a < IMP_MAX_STRIDE; a++)
        for (int b = 0; b < IMP_MAX_STRIDE; b++)
            g.phase[a][b] = -1;
    for (int kh = 0; kh < s->KH; kh++)
        for (int kw = 0; kw < s->KW; kw++) {
            int a = kh - p - st * fdiv(kh - p, st), b = kw - p - st * fdiv(kw - p, st);
            if (g.phase[a][b] < 0)
                g.phase[a][b] = 0; /* used; numbered below in (a, b) order */
        }
    for (int a = 0; a < st; a++)
        for (int b = 0; b < st; b++)
            if (g.phase[a][b] == 0 || g.phase[a][b] > 0)
                g.phase[a][b] = g.nph++;
    size_t nb = (target + (size_t)g.S - 1) / (size_t)g.S;
    size_t mx = (size_t)(s->C > s->OC ? s->C : s->OC);
    size_t budget = (size_t)(target <= 512 ? 262144 : 524288) /
                    (((size_t)s->C * g.nph + s->OC + mx) * (size_t)g.S);
    if (nb > budget)
        nb = budget;
    g.nb = balanced_chunk(s->N, nb);
    g.nbS = (size_t)g.nb * g.S;
    g.head = (size_t)g.F + (size_t)g.T0 * g.Wr;
    /* + 16 zeros: the weight gradient reads dout rows up to 15 floats past the grid. */
    g.cs = fs_align_up(g.head + g.nbS + 16, 16);
    g.slack = fs_align_up((size_t)(s->KH + 1) * (size_t)(g.Wr + 1) + 64, 16);
    g.xp = (size_t)s->C * g.nph * g.cs + g.slack;
    g.dp = (size_t)s->OC * g.cs + g.slack;
    g.tmp = fs_align_up(mx * g.nbS, 16);
    g.wpart = wpart_floats(s);
    g.per = g.xp + g.dp + g.tmp + g.wpart;
    g.tabx = fs_align_up((size_t)Cg * g.KK * 2, 16); /* ptrdiff_t entries, 2 floats each */
    g.tabd = fs_align_up((size_t)OCg * g.KK * 2, 16);
    g.wt = same_conv(s) ? fs_align_up((size_t)s->OC * Cg * g.KK, 16) : 0;
    g.shared = g.tabx + g.tabd + g.wt;
    return g;
}

/* One region (layout above) from nb images of one [H][W] plane (img_stride floats apart): phase
 * (a, b) of stride st, Hq x Wq values per image, zeros elsewhere. */
static void fill_region(float *d, const float *src, size_t img_stride, int nb, int H, int W,
                        int st, int a, int b, int Hq, int Wq, const implicit_geom *g)
{
    float *end = d + g->cs;
    const int Wr = g->Wr;
    memset(d, 0, sizeof(float) * g->head);
    d += g->head;
    for (int i = 0; i < nb; i++) {
        const float *sp = src + (size_t)i * img_stride;
        for (int y = 0; y < g->Hr; y++, d += Wr) {
            int x = 0;
            if (y < Hq && st * y + a < H) {
                const float *row = sp + (size_t)(st * y + a) * W;
                if (st == 1) {
                    memcpy(d, row, sizeof(float) * (size_t)Wq);
                    x = Wq;
                } else {
                    for (; x < Wq; x++) {
                        int ix = st * x + b;
                        d[x] = ix < W ? row[ix] : 0.0f;
                    }
                }
            }
            for (; x < Wr; x++)
                d[x] = 0.0f;
        }
    }
    memset(d, 0, sizeof(float) * (size_t)(end - d));
}

/* All used phase regions of channels [0, C) of images n0 .. n0+nb-1: xp[(c·nph + phase)·cs]. */
static void fill_input(float *xp, const float *in, int n0, int nb, const fs_conv2d_shape *s,
                       const implicit_geom *g)
{
    const size_t in_img = (size_t)s->C * s->H * s->W;
    for (int c = 0; c < s->C; c++)
        for (int a = 0; a < g->st; a++)
            for (int b = 0; b < g->st; b++)
                if (g->phase[a][b] >= 0)
                    fill_region(xp + ((size_t)c * g->nph + (size_t)g->phase[a][b]) * g->cs,
                                in + (size_t)n0 * in_img + (size_t)c * s->H * s->W, in_img, nb,
                                s->H, s->W, g->st, a, b, g->Hq, g->Wq, g);
    memset(xp + (size_t)s->C * g->nph * g->cs, 0, sizeof(float) * g->slack);
}

/* dout of images n0 .. n0+nb-1 on the output grid: dp[oc·cs]. */
static void fill_dout(float *dp, const float *dout, int n0, int nb, const fs_conv2d_shape *s,
                      const implicit_geom *g)
{
    const size_t out_img = (size_t)s->OC * s->OH * s->OW;
    for (int oc = 0; oc < s->OC; oc++)
        fill_region(dp + (size_t)oc * g->cs,
                    dout + (size_t)n0 * out_img + (size_t)oc * s->OH * s->OW, out_img, nb, s->OH,
                    s->OW, 1, 0, 0, s->OH, s->OW, g);
    memset(dp + (size_t)s->OC * g->cs, 0, sizeof(float) * g->slack);
}

static void implicit_tables(ptrdiff_t *tabx, ptrdiff_t *tabd, float *wt, const float *w,
                            const fs_conv2d_shape *s, const implicit_geom *g, int need_wt)
{
    const int Cg = s->C / s->groups, OCg = s->OC / s->groups, KH = s->KH, KW = s->KW;
    const int KK = g->KK, p = s->pad, st = g->st;
    for (int c = 0; c < Cg; c++)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                int dy = fdiv(kh - p, st), dx = fdiv(kw - p, st);
                int a = kh - p - st * dy, b = kw - p - st * dx;
                tabx[c * KK + kh * KW + kw] =
                    (ptrdiff_t)((size_t)c * g->nph + (size_t)g->phase[a][b]) * (ptrdiff_t)g->cs +
                    (ptrdiff_t)g->head + (ptrdiff_t)dy * g->Wr + dx;
            }
    if (!need_wt)
        return;
    /* same_conv only: dout padded by p; wt[g][c][oc][kh][kw] = w[g·OCg + oc][c][K-1-kh][K-1-kw] */
    for (int oc = 0; oc < OCg; oc++)
        for (int k = 0; k < KK; k++)
            tabd[oc * KK + k] = (ptrdiff_t)oc * (ptrdiff_t)g->cs + (ptrdiff_t)g->head +
                                (ptrdiff_t)(k / KW - p) * g->Wr + (k % KW - p);
    for (int gi = 0; gi < s->groups; gi++)
        for (int c = 0; c < Cg; c++)
            for (int oc = 0; oc < OCg; oc++)
                for (int k = 0; k < KK; k++)
                    wt[(((size_t)gi * Cg + c) * OCg + oc) * KK + k] =
                        w[(((size_t)gi * OCg + oc) * Cg + c) * KK + (KK - 1 - k)];
}

static void implicit_forward_chunk(int impl, float *out, const float *in, const float *w,
                                   float *buf, const ptrdiff_t *tabx, int n0, int nb,
                                   const fs_conv2d_shape *s, const implicit_geom *g)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G, KK = g->KK;
    const size_t ohw = (size_t)s->OH * s->OW;
    float *xp = buf, *tmp = buf + g->xp + g->dp;
    fill_input(xp, in, n0, nb, s, g);
    const int N = (int)((size_t)nb * g->S);
    for (int gi = 0; gi < G; gi++) {
        fs__ugemm_nn_tab(impl, OCg, N, Cg * KK, w + (size_t)gi * OCg * Cg * KK, Cg * KK, 1,
                         xp + (size_t)gi * Cg * g->nph * g->cs, tabx, tmp, (ptrdiff_t)g->nbS, 0);
        for (int oc = 0; oc < OCg; oc++)
            for (int i = 0; i < nb; i++) {
                const float *t = tmp + (size_t)oc * g->nbS + (size_t)i * g->S;
                float *o = out + (size_t)(n0 + i) * s->OC * ohw + (size_t)(gi * OCg + oc) * ohw;
                for (int oh = 0; oh < s->OH; oh++)
                    memcpy(o + (size_t)oh * s->OW, t + (size_t)oh * g->Wr,
                           sizeof(float) * (size_t)s->OW);
            }
    }
}

static void implicit_backward_chunk(int impl, float *din, float *dw_acc, const float *dout,
                                    const float *in, const float *wt, float *buf,
                                    const ptrdiff_t *tabx, const ptrdiff_t *tabd, int n0, int nb,
                                    const fs_conv2d_shape *s, const implicit_geom *g)
{
    const int G = s->groups, Cg = s->C / G, OCg = s->OC / G, KK = g->KK;
    const size_t in_img = (size_t)s->C * s->H * s->W, plane = (size_t)s->H * s->W;
    float *xp = buf, *dp = buf + g->xp, *tmp = buf + g->xp + g->dp;
    fill_dout(dp, dout, n0, nb, s, g);
    const int N = (int)((size_t)nb * g->S);
    if (dw_acc) {
        fill_input(xp, in, n0, nb, s, g);
        const int L = (int)fs_align_up((size_t)N, 16);
        for (int gi = 0; gi < G; gi++)
            fs__ugemm_dot_tab(impl, OCg, Cg * KK, L, dp + (size_t)gi * OCg * g->cs + g->head,
                              (ptrdiff_t)g->cs, xp + (size_t)gi * Cg * g->nph * g->cs, tabx,
                              dw_acc + (size_t)gi * OCg * Cg * KK, Cg * KK);
    }
    if (din) { /* same_conv only (checked by the caller) */
        for (int gi = 0; gi < G; gi++) {
            fs__ugemm_nn_tab(impl, Cg, N, OCg * KK, wt + (size_t)gi * Cg * OCg * KK, OCg * KK, 1,
                             dp + (size_t)gi * OCg * g->cs, tabd, tmp, (ptrdiff_t)g->nbS, 0);
            for (int c = 0; c < Cg; c++)
                for (int i = 0; i < nb; i++) {
                    const float *t = tmp + (size_t)c * g->nbS + (size_t)i * g->S;
                    float *d = din + (size_t)(n0 + i) * in_img + (size_t)(gi * Cg + c) * plane;
                    for (int h = 0; h < s->H; h++) {
                        float *dr = d + (size_t)h * s->W;
                        const float *tr = t + (size_t)h * g->Wr;
#pragma omp simd
                        for (int x = 0; x < s->W; x++)
                            dr[x] += tr[x];
                    }
                }
        }
    }
}

static void implicit_run(int impl, int backward, float *out, float *din, float *dw,
                         const float *dout, const float *in, const float *w, float *work,
                         const fs_conv2d_shape *s)
{
    const implicit_geom g = implicit_geometry(s, backward ? IMP_TARGET_BWD : IMP_TARGET_FWD);
    /* The offset tables need 8-byte alignment; callers' work may start at any float. */
    work = (float *)(void *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    ptrdiff_t *tabx = (ptrdiff_t *)(void *)work;
    ptrdiff_t *tabd = (ptrdiff_t *)(void *)(work + g.tabx);
    float *wt = work + g.tabx + g.tabd;
    float *bufs = work + g.shared;
    FS_ASSERT(!din || same_conv(s));
    implicit_tables(tabx, tabd, wt, w, s, &g, backward && din);
    const size_t wn = (size_t)s->OC * (s->C / s->groups) * g.KK;
    const int nchunks = (s->N + g.nb - 1) / g.nb;
    int nt = fs__threads();
    if (nt > nchunks)
        nt = nchunks;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        /* The runtime may give fewer threads than asked (nested regions): use the real team. */
        const int tid = omp_get_thread_num(), team = omp_get_num_threads();
        float *buf = bufs + (size_t)tid * g.per;
        float *mydw = !dw ? NULL : team > 1 ? buf + g.xp + g.dp + g.tmp : dw;
        if (mydw && team > 1)
            memset(mydw, 0, sizeof(float) * wn);
#pragma omp for schedule(static)
        for (int c = 0; c < nchunks; c++) {
            int n0 = c * g.nb, cnt = s->N - n0 < g.nb ? s->N - n0 : g.nb;
            if (backward)
                implicit_backward_chunk(impl, din, mydw, dout, in, wt, buf, tabx, tabd, n0, cnt, s,
                                        &g);
            else
                implicit_forward_chunk(impl, out, in, w, buf, tabx, n0, cnt, s, &g);
        }
        if (dw && team > 1) {
            /* Partials added in thread order: element i belongs to one thread. */
#pragma omp for schedule(static)
            for (size_t i = 0; i < wn; i++) {
                float a = dw[i];
                for (int t = 0; t < team; t++)
                    a += bufs[(size_t)t * g.per + g.xp + g.dp + g.tmp + i];
                dw[i] = a;
            }
        }
    }
}

static size_t implicit_workspace_for(const fs_conv2d_shape *s, size_t target)
{
    const implicit_geom g = implicit_geometry(s, target);
    int nt = fs__threads();
    int nchunks = (s->N + g.nb - 1) / g.nb;
    if (nt > nchunks)
        nt = nchunks;
    return 16 + g.shared + (size_t)nt * g.per; /* 16: room to align the start */
}

static size_t implicit_workspace(const fs_conv2d_shape *s)
{
    size_t f = implicit_workspace_for(s, IMP_TARGET_FWD);
    size_t b = implicit_workspace_for(s, IMP_TARGET_BWD);
    return f > b ? f : b;
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
        if (implicit_ok(s))
            implicit_run(impl, 0, out, NULL, NULL, NULL, in, w, work, s);
        else
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
            float lane[16] = {0}; /* independent lanes: vectorisable, fixed order */
            size_t i = 0;
            for (; i + 16 <= ohw; i += 16)
#pragma omp simd
                for (int l = 0; l < 16; l++)
                    lane[l] += g[i + l];
            for (int l = 0; l < 16; l++)
                acc += lane[l];
            for (; i < ohw; i++)
                acc += g[i];
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
        if (implicit_ok(s) && same_conv(s)) {
            implicit_run(impl, 1, NULL, din, dw, dout, in, w, work, s);
        } else if (implicit_ok(s)) {
            if (dw)
                implicit_run(impl, 1, NULL, NULL, dw, dout, in, w, work, s);
            if (din)
                simd_backward(impl, din, NULL, dout, in, w, work, s);
        } else {
            simd_backward(impl, din, dw, dout, in, w, work, s);
        }
        return;
    }
    const size_t in_img = (size_t)s->C * s->H * s->W, out_img = (size_t)s->OC * s->OH * s->OW;
    const size_t col = fs_align_up(col_floats(s), 16), wp = wpart_floats(s);
    const size_t wn = (size_t)s->OC * (s->C / s->groups) * s->KH * s->KW;
    const int it = image_threads(s);
    if (it > 1) {
#pragma omp parallel num_threads(it)
        {
            const int team = omp_get_num_threads(); /* may be fewer than asked */
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
                    for (int t = 0; t < team; t++)
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
