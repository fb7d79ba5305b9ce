/*
 * idx.c — the IDX format of MNIST / Fashion-MNIST (magic 00 00 <dtype> <ndim>, big-endian uint32
 * dims, raw data), plain or gzip-compressed, parsed from memory so that the fuzzer sees exactly
 * what the reader sees. Only unsigned-byte data (dtype 0x08) is accepted: that is what image and
 * label files use; other dtypes get a clear "unsupported" error.
 */
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "data_internal.h"

int fs_data_is_gzip(const uint8_t *buf, size_t len)
{
    return len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b;
}

int fs_data_gunzip(uint8_t **out, size_t *out_len, const uint8_t *in, size_t in_len, size_t limit,
                   const char *name, fs_diag *d)
{
    /* Initial capacity from the ISIZE trailer (uncompressed size mod 2^32, last member only) when
     * it is plausible, so the common single-member file inflates without a realloc. Untrusted:
     * capped by the limit and by a ratio to the input, and the buffer still grows if it lies. */
    size_t cap = 1 << 16;
    if (in_len >= 18) {
        const uint8_t *t = in + in_len - 4;
        size_t isize = (size_t)t[0] | (size_t)t[1] << 8 | (size_t)t[2] << 16 | (size_t)t[3] << 24;
        if (isize > cap && isize <= limit && isize / 1032 <= in_len)
            cap = isize + 1; /* +1: reaching the end with room left proves there is no more */
    }
    if (cap > limit + 1)
        cap = limit + 1;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot allocate %zu bytes to inflate", name, cap);

    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) {
        free(buf);
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot initialise zlib", name);
    }
    size_t used = 0, consumed = 0;
    int rc = 0;
    for (;;) {
        /* zlib counts in uInt: feed at most 1 GiB at a time */
        size_t in_chunk = in_len - consumed;
        if (in_chunk > (1u << 30))
            in_chunk = 1u << 30;
        size_t out_chunk = cap - used;
        if (out_chunk > (1u << 30))
            out_chunk = 1u << 30;
        z.next_in = (Bytef *)(uintptr_t)(in + consumed);
        z.avail_in = (uInt)in_chunk;
        z.next_out = buf + used;
        z.avail_out = (uInt)out_chunk;
        int zr = inflate(&z, Z_NO_FLUSH);
        size_t took = in_chunk - z.avail_in, gave = out_chunk - z.avail_out;
        consumed += took;
        used += gave;
        if (used > limit) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: inflates to more than the limit of %zu bytes",
                             name, limit);
            break;
        }
        if (zr == Z_STREAM_END) {
            if (consumed == in_len)
                break;
            /* another gzip member follows (as `cat a.gz b.gz` makes), or trailing garbage */
            if (!fs_data_is_gzip(in + consumed, in_len - consumed)) {
                rc = fs_diag_set(d, FS_EFORMAT,
                                 "%s: %zu bytes of trailing garbage after the gzip stream", name,
                                 in_len - consumed);
                break;
            }
            inflateReset(&z);
            continue;
        }
        if (zr == Z_NEED_DICT || zr == Z_DATA_ERROR || zr == Z_STREAM_ERROR) {
            rc = fs_diag_set(d, FS_EFORMAT, "%s: corrupt gzip data at compressed byte %zu: %s",
                             name, consumed, z.msg ? z.msg : "invalid stream");
            break;
        }
        if (zr == Z_MEM_ERROR) {
            rc = fs_diag_set(d, FS_ENOMEM, "%s: zlib out of memory", name);
            break;
        }
        if (used == cap) {
            /* output full: grow (doubling, up to limit + 1 so that "over limit" is detectable) */
            size_t ncap = cap > (limit + 1) / 2 ? limit + 1 : cap * 2;
            if (ncap <= cap) {
                rc = fs_diag_set(d, FS_EFORMAT, "%s: inflates to more than the limit of %zu bytes",
                                 name, limit);
                break;
            }
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                rc = fs_diag_set(d, FS_ENOMEM, "%s: cannot allocate %zu bytes to inflate", name,
                                 ncap);
                break;
            }
            buf = nb;
            cap = ncap;
            continue;
        }
        if (consumed == in_len) {
            /* input exhausted with output room left and no end of stream */
            rc = fs_diag_set(d, FS_EFORMAT,
                             "%s: truncated gzip file (stream ends after %zu compressed bytes, "
                             "%zu bytes inflated)", name, in_len, used);
            break;
        }
        if (took == 0 && gave == 0) {
            /* no progress with input and room left: zlib gave up (should not happen) */
            rc = fs_diag_set(d, FS_EFORMAT, "%s: gzip stream stalled at compressed byte %zu",
                             name, consumed);
            break;
        }
        /* Z_OK with both input and room left: go round (chunked feed) */
    }
    inflateEnd(&z);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = used;
    return 0;
}

static const char *idx_dtype_name(uint8_t t)
{
    switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return NULL;
    }
}

int fs_idx_parse(fs_idx_view *out, const uint8_t *buf, size_t len, int want_ndim, const char *name,
                 fs_diag *d)
{
    if (len < 4)
        return fs_diag_set(d, FS_EFORMAT, "%s: %zu bytes, too short for an IDX header", name, len);
    if (buf[0] != 0 || buf[1] != 0 || !idx_dtype_name(buf[2]) || buf[3] < 1 || buf[3] > 4)
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: bad IDX magic %02x %02x %02x %02x (want 00 00 08 %02x)", name,
                           buf[0], buf[1], buf[2], buf[3], want_ndim > 0 ? want_ndim : 3);
    if (buf[2] != 0x08)
        return fs_diag_set(d, FS_EUNSUPPORTED,
                           "%s: IDX data type 0x%02x (%s) unsupported; only unsigned byte", name,
                           buf[2], idx_dtype_name(buf[2]));
    int ndim = buf[3];
    if (want_ndim > 0 && ndim != want_ndim)
        return fs_diag_set(d, FS_EFORMAT, "%s: IDX file has %d dimensions, expected %d", name,
                           ndim, want_ndim);
    size_t hdr = 4 + 4 * (size_t)ndim;
    if (len < hdr)
        return fs_diag_set(d, FS_EFORMAT, "%s: truncated IDX header (%zu of %zu bytes)", name, len,
                           hdr);
    fs_idx_view v = {.ndim = ndim};
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        const uint8_t *p = buf + 4 + 4 * i;
        v.dims[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (v.dims[i] == 0)
            return fs_diag_set(d, FS_EFORMAT, "%s: IDX dimension %d has size 0", name, i);
        if (fs_mul_size(count, v.dims[i], &count))
            return fs_diag_set(d, FS_EFORMAT, "%s: IDX dimensions overflow", name);
    }
    size_t have = len - hdr;
    if (count != have)
        return fs_diag_set(d, FS_EFORMAT,
                           "%s: IDX dimensions give %zu bytes of data but the file has %zu (%s)",
                           name, count, have,
                           count > have ? "truncated" : "trailing bytes");
    v.count = count;
    v.data = buf + hdr;
    *out = v;
    return 0;
}
