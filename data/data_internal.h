/*
 * data_internal.h — pieces of fs_data shared between its files and exposed to tests and fuzzers
 * (parsers working on buffers). Never included from another folder's library code.
 */
#ifndef FS_DATA_INTERNAL_H
#define FS_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fs_data.h"

/* ---- gzip / IDX (idx.c) ---- */

/* True if buf starts with the gzip magic (1f 8b). */
int fs_data_is_gzip(const uint8_t *buf, size_t len);

/*
 * Inflates a whole gzip file (one or more members) held in memory into a new malloc'd buffer
 * (returns owned, free()). limit caps the output size. name is used in messages only.
 * FS_EFORMAT: corrupt or truncated stream, trailing garbage, output over limit; FS_ENOMEM.
 */
FS_MUST_CHECK int fs_data_gunzip(uint8_t **out, size_t *out_len, const uint8_t *in, size_t in_len,
                                 size_t limit, const char *name, fs_diag *d);

/* A parsed IDX file: a view into the caller's buffer (does not own data). */
typedef struct {
    int ndim;            /* 1..4 */
    uint32_t dims[4];
    size_t count;        /* product of dims (elements) */
    const uint8_t *data; /* count bytes of ubyte data */
} fs_idx_view;

/*
 * Parses an IDX buffer (already inflated): magic 00 00 08 ndim, ndim big-endian uint32 dims, then
 * exactly prod(dims) unsigned bytes. want_ndim: required ndim (1 labels, 3 images) or 0 for any.
 * Checks: magic, dtype (only 0x08 unsigned byte), ndim, zero or absurd dims, overflow, and that the
 * data size equals the file size (neither short nor trailing bytes). name: for messages.
 */
FS_MUST_CHECK int fs_idx_parse(fs_idx_view *out, const uint8_t *buf, size_t len, int want_ndim,
                               const char *name, fs_diag *d);

/* ---- images (image.c) ---- */

/* A decoded image: h x w x c interleaved uint8 (HWC), c = 1 (grey) or 3 (RGB). */
typedef struct {
    int w, h, c;
    uint8_t *px;  /* malloc'd, free() */
} fs_image;

/*
 * Decodes a PNG or JPEG held in memory (format decided by the signature) into 8-bit grey or RGB:
 * palettes are expanded, alpha dropped, 16-bit samples cut to their high byte, interlacing handled; JPEG warnings
 * (truncated or corrupt data) are errors. max_pixels caps w*h before any pixel is allocated.
 * FS_EFORMAT corrupt data or over limit; FS_EUNSUPPORTED other formats (named if recognised) and
 * CMYK JPEG; FS_ENOMEM. libpng/libjpeg errors longjmp back here; nothing calls exit() or prints.
 * name: for messages.
 */
FS_MUST_CHECK int fs_image_decode(fs_image *out, const uint8_t *buf, size_t len,
                                  size_t max_pixels, const char *name, fs_diag *d);
void fs_image_release(fs_image *im);

/* Converts an interleaved image to c_out channels in place semantics (new buffer). PIL rules. */
FS_MUST_CHECK int fs_image_convert(fs_image *im, int c_out);

/*
 * Pillow BILINEAR resize of an interleaved uint8 image [h, w, c] to [oh, ow, c]. dst must not
 * alias src. Returns FS_ENOMEM (scratch) or 0.
 */
FS_MUST_CHECK int fs_image_resize_bilinear(uint8_t *dst, int oh, int ow, const uint8_t *src,
                                           int h, int w, int c);

#endif
