/*
 * fs_util.h — error codes, diagnostics, assertions and checked size arithmetic shared by every
 * fedslim library. Nothing here does I/O except fs_panic (stderr, then abort).
 */
#ifndef FS_UTIL_H
#define FS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Return codes: 0 or one of these negative values (STYLE C3). Values are stable: append only. */
enum {
    FS_OK = 0,
    FS_ENOMEM = -1,
    FS_EINVAL = -2,
    FS_EIO = -3,
    FS_EFORMAT = -4,
    FS_EPROTO = -5,
    FS_EAUTH = -6,
    FS_ETIMEDOUT = -7,
    FS_ECANCELED = -8,
    FS_ESYS = -9,
    FS_ENOTFOUND = -10,
    FS_EUNSUPPORTED = -11,
    FS_EAGAIN = -12,
    FS_EDIVERGED = -13,    /* a training loss became non-finite */
};

#define FS_MUST_CHECK __attribute__((warn_unused_result))

/* Text for a return code ("out of memory", ...). Never NULL. */
const char *fs_strerror(int code);

/* Human-readable context for an error: the function that detects a problem writes one sentence
 * naming the file/field/peer and the problem; callers may prefix context (fs_diag_prefix). */
typedef struct {
    int code;
    char msg[512];
} fs_diag;

/* Sets d->code and d->msg (d may be NULL). Returns `code`, so `return fs_diag_set(...)` works. */
int fs_diag_set(fs_diag *d, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Same, and appends ": strerror(errno)" for the current errno. Returns `code`. */
int fs_diag_errno(fs_diag *d, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to d->msg (keeps the code). Returns d->code (0 if d is NULL). */
int fs_diag_prefix(fs_diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* d->msg if set, else fs_strerror(code). */
const char *fs_diag_text(const fs_diag *d, int code);

/* Our bugs only (STYLE C11): always on, never used for external input. */
_Noreturn void fs_panic(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define FS_ASSERT(x)                                                                       \
    do {                                                                                   \
        if (!(x))                                                                          \
            fs_panic(__FILE__, __LINE__, "assertion failed: %s", #x);                      \
    } while (0)

/* Checked size arithmetic for sizes read from files or peers (STYLE C10). 0 or FS_EFORMAT. */
static inline int fs_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? FS_EFORMAT : 0;
}
static inline int fs_add_size(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out) ? FS_EFORMAT : 0;
}
static inline size_t fs_align_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

/* 64-byte aligned allocation (zeroed). Returns NULL on failure or size 0 overflow. Free with fs_free. */
void *fs_alloc(size_t bytes);
/* Same alignment, NOT zeroed: for buffers the caller overwrites completely (e.g. received tensors),
 * where zeroing would cost a full extra pass. Free with fs_free. */
void *fs_alloc_uninit(size_t bytes);
void fs_free(void *p);

/* Monotonic clock in microseconds / seconds. */
uint64_t fs_now_usec(void);
double fs_now_sec(void);

/* Reads a whole file into a malloc'd buffer (owned by the caller, free()); limit caps the size. */
int fs_read_file(const char *path, size_t limit, uint8_t **out, size_t *len, fs_diag *d);
/* Writes a file atomically: PATH.tmp, fsync, rename, fsync of the directory. */
int fs_write_file_atomic(const char *path, const void *data, size_t len, fs_diag *d);

#endif
