/*
 * fs_safetensors.h — read and write safetensors files (the Hugging Face format): an 8-byte
 * little-endian header length N, N bytes of JSON header, then the raw little-endian tensor data.
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
 * to the first byte after the header) and may hold "__metadata__": {string: string}.
 *
 * The reader treats every file as hostile: it checks the header length, the JSON, every field's
 * type, dtypes, shapes (checked multiplication), offsets against the data section, and that the
 * tensors tile the data section exactly (sorted by offset, no overlap, no gap, no trailing bytes),
 * as the reference implementation requires. docs/model-format.md lists every rule. Every error
 * message names the file and, where one is involved, the tensor.
 *
 * Thread-safety: an fs_safetensors is immutable after open/parse; any number of threads may read
 * it concurrently. A writer belongs to one thread.
 */
#ifndef FS_SAFETENSORS_H
#define FS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fs_util.h"

/* Element types. Values are stable (append only, C14); the text names are the format's. */
typedef enum {
    FS_ST_F32 = 0,
    FS_ST_F16 = 1,
    FS_ST_BF16 = 2,
    FS_ST_I8 = 3,
    FS_ST_U8 = 4,
    FS_ST_I32 = 5,
    FS_ST_I64 = 6,
} fs_st_dtype;
#define FS_ST_NDTYPES 7

#define FS_ST_MAX_DIMS 8
#define FS_ST_MAX_FILE_BYTES ((size_t)4 << 30)        /* fs_safetensors_open refuses larger files */
#define FS_ST_MAX_HEADER_BYTES ((size_t)100000000)   /* as the reference implementation */
#define FS_ST_MAX_NAME 1024                           /* bytes in a tensor name or metadata key */
#define FS_ST_MAX_JSON_DEPTH 32                       /* nesting depth accepted in the header */

/* "F32", "F16", ... Never NULL ("?" for an invalid value). */
const char *fs_st_dtype_name(fs_st_dtype t);
/* Bytes per element (0 for an invalid value). */
size_t fs_st_dtype_size(fs_st_dtype t);
/* 0 and *out set, or FS_ENOTFOUND if `name` is not one of the supported dtype names. */
int fs_st_dtype_parse(const char *name, fs_st_dtype *out);

/* One tensor of an open file. Plain data, owned by the fs_safetensors (valid until its free). */
typedef struct {
    const char *name;               /* NUL-terminated UTF-8 */
    fs_st_dtype dtype;
    int ndim;                       /* 0 .. FS_ST_MAX_DIMS (0: a scalar, one element) */
    int64_t shape[FS_ST_MAX_DIMS];  /* row-major, PyTorch order; dims may be 0 (empty tensor) */
    size_t numel;                   /* product of shape (1 for a scalar) */
    size_t offset;                  /* byte offset of the data, relative to the data section */
    size_t nbytes;                  /* numel * fs_st_dtype_size(dtype) */
} fs_st_tensor;

typedef struct fs_safetensors fs_safetensors;   /* opaque, immutable once made */

/* Reads and validates the whole file at `path` (refuses files over FS_ST_MAX_FILE_BYTES).
 * returns owned: *out on 0, free with fs_safetensors_free; *out = NULL on error. */
FS_MUST_CHECK int fs_safetensors_open(fs_safetensors **out, const char *path, fs_diag *d);

/* Same, on the `len` bytes at `buf`. `name` is used only in error messages and by
 * fs_safetensors_name. borrows `buf` and `name`: the result holds its own copy of both.
 * This is the fuzzers' entry point. */
FS_MUST_CHECK int fs_safetensors_parse(fs_safetensors **out, const uint8_t *buf, size_t len,
                                       const char *name, fs_diag *d);

/* NULL-safe. */
void fs_safetensors_free(fs_safetensors *st);

/* The path or name it was opened with. */
const char *fs_safetensors_name(const fs_safetensors *st);
/* Number of tensors, and the i-th (0 <= i < count) in data order (ascending offset). */
size_t fs_safetensors_count(const fs_safetensors *st);
const fs_st_tensor *fs_safetensors_tensor(const fs_safetensors *st, size_t i);
/* The tensor named `name`, or NULL. O(log n). */
const fs_st_tensor *fs_safetensors_find(const fs_safetensors *st, const char *name);

/* Converts tensor `t` (F32, F16 or BF16; IEEE semantics incl. subnormals, inf, NaN) into `n`
 * floats at `dst`. n must equal t->numel. FS_EFORMAT (naming the tensor) for other dtypes,
 * FS_EINVAL if n differs. `t` must come from `st`. */
FS_MUST_CHECK int fs_safetensors_read_f32(const fs_safetensors *st, const fs_st_tensor *t,
                                          float *dst, size_t n, fs_diag *d);
/* Copies the raw little-endian bytes of `t` (any dtype) to `dst`; nbytes must equal t->nbytes. */
FS_MUST_CHECK int fs_safetensors_read_raw(const fs_safetensors *st, const fs_st_tensor *t,
                                          void *dst, size_t nbytes, fs_diag *d);
/* The raw bytes of `t` inside the file image (t->nbytes of them). Borrowed, valid until free.
 * Not necessarily aligned for the element type: use memcpy or the read functions. */
const uint8_t *fs_safetensors_data(const fs_safetensors *st, const fs_st_tensor *t);

/* __metadata__: the value for `key`, or NULL. Borrowed, valid until free. */
const char *fs_safetensors_meta(const fs_safetensors *st, const char *key);
/* Number of metadata pairs, and the i-th (in key order). */
size_t fs_safetensors_meta_count(const fs_safetensors *st);
void fs_safetensors_meta_at(const fs_safetensors *st, size_t i, const char **key,
                            const char **value);

/* ---- writer ---------------------------------------------------------------------------------
 * Collects tensors and metadata, then writes a file whose tensors are stored in the order added,
 * tightly packed, with the JSON header padded with spaces to a multiple of 8 bytes (so the data
 * section starts 8-byte aligned, as the Hugging Face writer does) and __metadata__ first. */
typedef struct fs_safetensors_writer fs_safetensors_writer;

/* returns owned: free with fs_safetensors_writer_free. */
FS_MUST_CHECK int fs_safetensors_writer_new(fs_safetensors_writer **out, fs_diag *d);
void fs_safetensors_writer_free(fs_safetensors_writer *w);   /* NULL-safe */

/* Adds a tensor. Copies `name` and `shape`; borrows `data` (numel * dtype-size bytes of little-
 * endian values) until the writer is freed. FS_EINVAL for a duplicate or invalid name, a bad
 * dtype, ndim outside 0..FS_ST_MAX_DIMS, negative or overflowing dims. */
FS_MUST_CHECK int fs_safetensors_writer_add(fs_safetensors_writer *w, const char *name,
                                            fs_st_dtype dtype, int ndim, const int64_t *shape,
                                            const void *data, fs_diag *d);
/* Sets __metadata__[key] = value (copies both; a second call with the same key replaces). */
FS_MUST_CHECK int fs_safetensors_writer_meta(fs_safetensors_writer *w, const char *key,
                                             const char *value, fs_diag *d);
/* Writes the file atomically: PATH.tmp.PID, fsync, rename over PATH, fsync of the directory. */
FS_MUST_CHECK int fs_safetensors_writer_write(fs_safetensors_writer *w, const char *path,
                                              fs_diag *d);
/* The same bytes in memory. returns owned: *out is malloc'd (free()), *len its size. */
FS_MUST_CHECK int fs_safetensors_writer_to_buffer(fs_safetensors_writer *w, uint8_t **out,
                                                  size_t *len, fs_diag *d);

#endif
