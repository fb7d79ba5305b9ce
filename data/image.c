/*
 * image.c — decode PNG (libpng) and JPEG (libjpeg-turbo) from memory into 8-bit grey or RGB, convert
 * channels with PIL's rules and resize with Pillow's BILINEAR filter, so images come out as
 * torchvision's PIL pipeline would produce them. Both libraries report errors by longjmp back into
 * the decode functions below; neither may print or exit. Not a general image library: no other
 * formats, no colour management (PIL ignores gAMA/iCCP too).
 */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "data_internal.h"

void fs_image_release(fs_image *im)
{
    if (im) {
        free(im->px);
        im->px = NULL;
    }
}

/* Checked w*h*c for a decoded image, against the caller's pixel cap. */
static int image_bytes(size_t w, size_t h, size_t c, size_t max_pixels, size_t *bytes)
{
    size_t px;
    if (w == 0 || h == 0 || w > FS_DATA_MAX_SIDE || h > FS_DATA_MAX_SIDE)
        return FS_EFORMAT;
    if (fs_mul_size(w, h, &px) || px > max_pixels || fs_mul_size(px, c, bytes))
        return FS_EFORMAT;
    return 0;
}

/* ---------------------------------------------------------------- PNG */

struct png_ctx {
    const uint8_t *buf;
    size_t len, pos;
    char err[200];
    uint8_t *px;           /* owned until handed to the caller */
    png_bytep *rows;
    int limit_hit;         /* 1: the error is our size cap, not corrupt data */
};

static void png_read_mem(png_structp png, png_bytep out, size_t n)
{
    struct png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos)
        png_error(png, "unexpected end of file (truncated PNG)");
    memcpy(out, c->buf + c->pos, n);
    c->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    struct png_ctx *c = png_get_error_ptr(png);
    snprintf(c->err, sizeof c->err, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png; /* libraries never print (STYLE C15); ancillary-chunk problems are not fatal */
    (void)msg;
}

static int decode_png(fs_image *out, const uint8_t *buf, size_t len, size_t max_pixels,
                      const char *name, fs_diag *d)
{
    struct png_ctx ctx = {.buf = buf, .len = len};
    struct png_ctx *c = &ctx;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!png)
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot create PNG decoder", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot create PNG decoder", name);
    }
    /* Everything mutated after setjmp lives in *c (memory), so it survives the longjmp. */
    if (setjmp(png_jmpbuf(png))) {
        fs_diag_set(d, FS_EFORMAT, c->limit_hit ? "%s: PNG: %s" : "%s: corrupt PNG: %s", name,
                    c->err);
        free(c->px);
        free(c->rows);
        png_destroy_read_struct(&png, &info, NULL);
        return FS_EFORMAT;
    }
    png_set_read_fn(png, c, png_read_mem);
    png_set_user_limits(png, FS_DATA_MAX_SIDE, FS_DATA_MAX_SIDE);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info);
    png_uint_32 h = png_get_image_height(png, info);
    int bit_depth = png_get_bit_depth(png, info);
    int color = png_get_color_type(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && bit_depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (bit_depth == 16)
        png_set_strip_16(png);          /* high byte, as PIL does for 16-bit RGB */
    /* convert("RGB"/"L") drops alpha, no compositing; a tRNS chunk becomes alpha when the
     * palette is expanded, so it is stripped too */
    if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_strip_alpha(png);
    (void)png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int ch = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || (ch != 1 && ch != 3)) {
        snprintf(c->err, sizeof c->err, "unsupported layout after conversion (%d channels, %d bits)",
                 ch, png_get_bit_depth(png, info));
        png_longjmp(png, 1);
    }
    size_t bytes;
    if (image_bytes(w, h, (size_t)ch, max_pixels, &bytes)) {
        c->limit_hit = 1;
        snprintf(c->err, sizeof c->err, "%ux%u image is over the size limit (%d per side, %zu pixels)",
                 (unsigned)w, (unsigned)h, FS_DATA_MAX_SIDE, max_pixels);
        png_longjmp(png, 1);
    }
    size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes != (size_t)w * (size_t)ch) {
        snprintf(c->err, sizeof c->err, "unexpected row size %zu", rowbytes);
        png_longjmp(png, 1);
    }
    c->px = malloc(bytes);
    c->rows = malloc(sizeof(png_bytep) * h);
    if (!c->px || !c->rows) {
        snprintf(c->err, sizeof c->err, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        png_longjmp(png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = c->px + (size_t)y * rowbytes;
    png_read_image(png, c->rows);
    /* png_read_end is not called: PIL does not require a valid tail after the image data either. */

    free(c->rows);
    png_destroy_read_struct(&png, &info, NULL);
    out->w = (int)w;
    out->h = (int)h;
    out->c = ch;
    out->px = c->px;
    return 0;
}

/* ---------------------------------------------------------------- JPEG */

_Static_assert(sizeof(unsigned long) >= sizeof(size_t), "jpeg_mem_src takes an unsigned long size");

#define JPEG_MAX_SCANS 256 /* progressive files with thousands of scans are a CPU-time attack */

struct jpeg_ctx {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char err[JMSG_LENGTH_MAX + 64];
    uint8_t *px;
};

static void jpeg_on_error(j_common_ptr ci)
{
    struct jpeg_ctx *c = (struct jpeg_ctx *)ci->err;
    (*ci->err->format_message)(ci, c->err);
    longjmp(c->jb, 1);
}

/* Warnings (msg_level < 0) mean corrupt or truncated data that libjpeg would paper over with grey:
 * treated as errors so that a damaged file is never silently used. Trace messages are dropped. */
static void jpeg_on_message(j_common_ptr ci, int msg_level)
{
    if (msg_level < 0)
        jpeg_on_error(ci);
}

static void jpeg_on_output(j_common_ptr ci)
{
    (void)ci;
}

static void jpeg_progress(j_common_ptr ci)
{
    j_decompress_ptr di = (j_decompress_ptr)ci;
    if (di->input_scan_number > JPEG_MAX_SCANS) {
        struct jpeg_ctx *c = (struct jpeg_ctx *)ci->err;
        snprintf(c->err, sizeof c->err, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(c->jb, 1);
    }
}

static int decode_jpeg(fs_image *out, const uint8_t *buf, size_t len, size_t max_pixels,
                       const char *name, fs_diag *d)
{
    struct jpeg_decompress_struct ci;
    struct jpeg_ctx ctx;
    struct jpeg_ctx *c = &ctx;
    struct jpeg_progress_mgr prog = {.progress_monitor = jpeg_progress};
    memset(c, 0, sizeof *c);
    ci.err = jpeg_std_error(&c->pub);
    c->pub.error_exit = jpeg_on_error;
    c->pub.emit_message = jpeg_on_message;
    c->pub.output_message = jpeg_on_output;
    if (setjmp(c->jb)) {
        fs_diag_set(d, FS_EFORMAT, "%s: corrupt JPEG: %s", name, c->err);
        free(c->px);
        jpeg_destroy_decompress(&ci);
        return FS_EFORMAT;
    }
    jpeg_create_decompress(&ci);
    ci.progress = &prog;
    ci.mem->max_memory_to_use = 512L << 20;
    jpeg_mem_src(&ci, buf, (unsigned long)len);
    (void)jpeg_read_header(&ci, TRUE);

    switch (ci.jpeg_color_space) {
    case JCS_GRAYSCALE:
        ci.out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        ci.out_color_space = JCS_RGB;
        break;
    default: {
        int cs = (int)ci.jpeg_color_space;
        jpeg_destroy_decompress(&ci);
        return fs_diag_set(d, FS_EUNSUPPORTED,
                           "%s: unsupported JPEG colour space %d (%s); fedslim reads grey and RGB",
                           name, cs, cs == JCS_CMYK || cs == JCS_YCCK ? "CMYK" : "other");
    }
    }
    size_t bytes;
    int ch = ci.out_color_space == JCS_GRAYSCALE ? 1 : 3;
    if (image_bytes(ci.image_width, ci.image_height, (size_t)ch, max_pixels, &bytes)) {
        unsigned iw = ci.image_width, ih = ci.image_height;
        jpeg_destroy_decompress(&ci);
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: %ux%u JPEG is over the size limit (%d per side, %zu pixels)", name,
                           iw, ih, FS_DATA_MAX_SIDE, max_pixels);
    }
    (void)jpeg_start_decompress(&ci);
    if ((int)ci.output_components != ch || ci.output_width != ci.image_width ||
        ci.output_height != ci.image_height) {
        snprintf(c->err, sizeof c->err, "unexpected output layout");
        longjmp(c->jb, 1);
    }
    c->px = malloc(bytes);
    if (!c->px) {
        snprintf(c->err, sizeof c->err, "out of memory");
        longjmp(c->jb, 1);
    }
    size_t stride = (size_t)ci.output_width * (size_t)ch;
    while (ci.output_scanline < ci.output_height) {
        JSAMPROW row = c->px + (size_t)ci.output_scanline * stride;
        if (jpeg_read_scanlines(&ci, &row, 1) != 1) {
            snprintf(c->err, sizeof c->err, "decoder returned no scanline");
            longjmp(c->jb, 1);
        }
    }
    (void)jpeg_finish_decompress(&ci);
    out->w = (int)ci.output_width;
    out->h = (int)ci.output_height;
    out->c = ch;
    out->px = c->px;
    jpeg_destroy_decompress(&ci);
    return 0;
}

/* ---------------------------------------------------------------- dispatch */

static const char *sniff_other(const uint8_t *b, size_t n)
{
    if (n >= 2 && b[0] == 'B' && b[1] == 'M')
        return "BMP";
    if (n >= 4 && memcmp(b, "GIF8", 4) == 0)
        return "GIF";
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return "WebP";
    if (n >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0))
        return "TIFF";
    if (n >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6')
        return "PNM";
    return NULL;
}

int fs_image_decode(fs_image *out, const uint8_t *buf, size_t len, size_t max_pixels,
                    const char *name, fs_diag *d)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    fs_image im = {0};
    int rc;
    if (len >= 8 && memcmp(buf, png_sig, 8) == 0) {
        rc = decode_png(&im, buf, len, max_pixels, name, d);
    } else if (len >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff) {
        rc = decode_jpeg(&im, buf, len, max_pixels, name, d);
    } else {
        const char *other = sniff_other(buf, len);
        if (other)
            return fs_diag_set(d, FS_EUNSUPPORTED,
                               "%s: %s image; fedslim reads PNG and JPEG only", name, other);
        char hex[3 * 8 + 1] = "";
        for (size_t i = 0; i < len && i < 8; i++)
            snprintf(hex + 3 * i, sizeof hex - 3 * i, "%02x ", buf[i]);
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: not a PNG or JPEG file (%zu bytes, starting %s)", name, len,
                           len ? hex : "with nothing");
    }
    if (rc == 0)
        *out = im;
    return rc;
}

/* ---------------------------------------------------------------- conversion */

int fs_image_convert(fs_image *im, int c_out)
{
    FS_ASSERT(c_out == 1 || c_out == 3);
    FS_ASSERT(im->c == 1 || im->c == 3);
    if (im->c == c_out)
        return 0;
    size_t npx = (size_t)im->w * (size_t)im->h;
    uint8_t *dst = malloc(npx * (size_t)c_out);
    if (!dst)
        return FS_ENOMEM;
    const uint8_t *s = im->px;
    if (c_out == 3) {                   /* "L" -> "RGB": replicate */
        for (size_t i = 0; i < npx; i++)
            dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = s[i];
    } else {                            /* "RGB" -> "L": ITU-R 601-2 luma in PIL's fixed point */
        for (size_t i = 0; i < npx; i++) {
            uint32_t v = (uint32_t)s[3 * i] * 19595u + (uint32_t)s[3 * i + 1] * 38470u +
                         (uint32_t)s[3 * i + 2] * 7471u + 0x8000u;
            dst[i] = (uint8_t)(v >> 16);
        }
    }
    free(im->px);
    im->px = dst;
    im->c = c_out;
    return 0;
}

/* ---------------------------------------------------------------- resize */

/*
 * Pillow's resampling with the BILINEAR filter (triangle, support 1): for output index o, the
 * filter is centred at (o + 0.5) * scale in input coordinates and widened by max(scale, 1), the
 * weights are normalised to sum 1 and converted to 22-bit fixed point rounded half away from zero;
 * each output is (sum + 2^21) >> 22 clamped to [0, 255]. Horizontal pass first into an 8-bit
 * intermediate, then vertical; a pass whose size does not change is skipped (it would be exact).
 */
#define RS_BITS 22

typedef struct {
    int ksize;
    int *lo, *cnt;   /* [out] first input index and number of taps */
    int32_t *k;      /* [out * ksize] */
} rs_coeffs;

static void rs_free(rs_coeffs *r)
{
    free(r->lo);
    free(r->cnt);
    free(r->k);
}

static double tri(double x)
{
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static int rs_compute(rs_coeffs *r, int in, int out)
{
    double scale = (double)in / out;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * fscale;
    r->ksize = (int)ceil(support) * 2 + 1;
    r->lo = malloc(sizeof(int) * (size_t)out);
    r->cnt = malloc(sizeof(int) * (size_t)out);
    r->k = calloc((size_t)out * (size_t)r->ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * (size_t)r->ksize);
    if (!r->lo || !r->cnt || !r->k || !w) {
        free(w);
        rs_free(r);
        return FS_ENOMEM;
    }
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        int xmax = (int)(center + support + 0.5);
        if (xmin < 0)
            xmin = 0;
        if (xmax > in)
            xmax = in;
        int n = xmax - xmin;
        FS_ASSERT(n >= 0 && n <= r->ksize);
        double sum = 0.0;
        for (int x = 0; x < n; x++) {
            w[x] = tri((x + xmin - center + 0.5) / fscale);
            sum += w[x];
        }
        for (int x = 0; x < n; x++) {
            double v = sum != 0.0 ? w[x] / sum : w[x];
            double f = v * (double)(1 << RS_BITS);
            r->k[(size_t)o * r->ksize + x] = (int32_t)(v < 0 ? f - 0.5 : f + 0.5);
        }
        r->lo[o] = xmin;
        r->cnt[o] = n;
    }
    free(w);
    return 0;
}

static inline uint8_t rs_clip(int32_t acc)
{
    int32_t v = acc >> RS_BITS; /* arithmetic shift, as Pillow's table lookup */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int fs_image_resize_bilinear(uint8_t *dst, int oh, int ow, const uint8_t *src, int h, int w, int c)
{
    FS_ASSERT(oh > 0 && ow > 0 && h > 0 && w > 0 && (c == 1 || c == 3));
    uint8_t *tmp = NULL;
    const uint8_t *cur = src;
    int cw = w;
    if (ow != w) {
        rs_coeffs r;
        if (rs_compute(&r, w, ow))
            return FS_ENOMEM;
        uint8_t *o = (oh == h) ? dst : (tmp = malloc((size_t)h * (size_t)ow * (size_t)c));
        if (!o) {
            rs_free(&r);
            return FS_ENOMEM;
        }
        for (int y = 0; y < h; y++) {
            const uint8_t *row = src + (size_t)y * (size_t)w * (size_t)c;
            uint8_t *orow = o + (size_t)y * (size_t)ow * (size_t)c;
            for (int x = 0; x < ow; x++) {
                const int32_t *k = r.k + (size_t)x * r.ksize;
                const uint8_t *p = row + (size_t)r.lo[x] * (size_t)c;
                for (int ch = 0; ch < c; ch++) {
                    int32_t acc = 1 << (RS_BITS - 1);
                    for (int t = 0; t < r.cnt[x]; t++)
                        acc += (int32_t)p[(size_t)t * c + ch] * k[t];
                    orow[(size_t)x * c + ch] = rs_clip(acc);
                }
            }
        }
        rs_free(&r);
        cur = o;
        cw = ow;
    }
    if (oh != h) {
        rs_coeffs r;
        if (rs_compute(&r, h, oh)) {
            free(tmp);
            return FS_ENOMEM;
        }
        size_t stride = (size_t)cw * (size_t)c;
        for (int y = 0; y < oh; y++) {
            const int32_t *k = r.k + (size_t)y * r.ksize;
            const uint8_t *base = cur + (size_t)r.lo[y] * stride;
            uint8_t *orow = dst + (size_t)y * stride;
            for (size_t i = 0; i < stride; i++) {
                int32_t acc = 1 << (RS_BITS - 1);
                for (int t = 0; t < r.cnt[y]; t++)
                    acc += (int32_t)base[(size_t)t * stride + i] * k[t];
                orow[i] = rs_clip(acc);
            }
        }
        rs_free(&r);
    }
    if (ow == w && oh == h)
        memcpy(dst, src, (size_t)h * (size_t)w * (size_t)c);
    free(tmp);
    return 0;
}
