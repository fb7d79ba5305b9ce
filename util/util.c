/*
 * util.c — error text, diagnostics, panic, aligned allocation, clocks and whole-file I/O.
 */
#include "fs_util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *fs_strerror(int code)
{
    switch (code) {
    case FS_OK: return "success";
    case FS_ENOMEM: return "out of memory";
    case FS_EINVAL: return "invalid argument";
    case FS_EIO: return "input/output error";
    case FS_EFORMAT: return "malformed data";
    case FS_EPROTO: return "protocol error";
    case FS_EAUTH: return "authentication failed";
    case FS_ETIMEDOUT: return "timed out";
    case FS_ECANCELED: return "canceled";
    case FS_ESYS: return "system error";
    case FS_ENOTFOUND: return "not found";
    case FS_EUNSUPPORTED: return "unsupported";
    case FS_EAGAIN: return "try again";
    case FS_EDIVERGED: return "training diverged";
    default: return "unknown error";
    }
}

int fs_diag_set(fs_diag *d, int code, const char *fmt, ...)
{
    if (d) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->msg, sizeof d->msg, fmt, ap);
        va_end(ap);
        d->code = code;
    }
    return code;
}

int fs_diag_errno(fs_diag *d, int code, const char *fmt, ...)
{
    int saved = errno;
    if (d) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(d->msg, sizeof d->msg, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof d->msg)
            snprintf(d->msg + n, sizeof d->msg - (size_t)n, ": %s", strerror(saved));
        d->code = code;
    }
    errno = saved;
    return code;
}

int fs_diag_prefix(fs_diag *d, const char *fmt, ...)
{
    if (!d)
        return 0;
    char head[256];
    char old[sizeof d->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, d->msg, sizeof old);
    /* truncation of an over-long message is acceptable: keep the head, cut the tail */
    size_t hl = strnlen(head, sizeof head);
    size_t pos = 0;
    for (size_t i = 0; i < hl && pos + 1 < sizeof d->msg; i++)
        d->msg[pos++] = head[i];
    for (const char *s = ": "; *s && pos + 1 < sizeof d->msg; s++)
        d->msg[pos++] = *s;
    for (size_t i = 0; old[i] && pos + 1 < sizeof d->msg; i++)
        d->msg[pos++] = old[i];
    d->msg[pos] = '\0';
    return d->code;
}

const char *fs_diag_text(const fs_diag *d, int code)
{
    return (d && d->msg[0]) ? d->msg : fs_strerror(code);
}

void fs_panic(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fedslim: internal error at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *fs_alloc(size_t bytes)
{
    size_t n;
    if (bytes == 0)
        bytes = 64;
    if (fs_add_size(bytes, 63, &n))
        return NULL;
    n = n / 64 * 64;
    void *p = aligned_alloc(64, n);
    if (p)
        memset(p, 0, n);
    return p;
}

void *fs_alloc_uninit(size_t bytes)
{
    size_t n;
    if (bytes == 0)
        bytes = 64;
    if (fs_add_size(bytes, 63, &n))
        return NULL;
    return aligned_alloc(64, n / 64 * 64);
}

void fs_free(void *p)
{
    free(p);
}

uint64_t fs_now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double fs_now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int fs_read_file(const char *path, size_t limit, uint8_t **out, size_t *len, fs_diag *d)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fs_diag_errno(d, FS_EIO, "%s: cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fs_diag_set(d, FS_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > limit) {
        close(fd);
        return fs_diag_set(d, FS_EFORMAT, "%s: %lld bytes, more than the limit of %zu", path,
                           (long long)st.st_size, limit);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return fs_diag_set(d, FS_ENOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return r < 0 ? fs_diag_errno(d, FS_EIO, "%s: read failed", path)
                         : fs_diag_set(d, FS_EIO, "%s: file shrank while reading", path);
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = n;
    return 0;
}

int fs_write_file_atomic(const char *path, const void *data, size_t len, fs_diag *d)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return fs_diag_set(d, FS_EINVAL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return fs_diag_errno(d, FS_EIO, "%s: cannot create", tmp);
    const uint8_t *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fs_diag_errno(d, FS_EIO, "%s: write failed", tmp);
            close(fd);
            unlink(tmp);
            return FS_EIO;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fs_diag_errno(d, FS_EIO, "%s: fsync/close failed", tmp);
        unlink(tmp);
        return FS_EIO;
    }
    if (rename(tmp, path) != 0) {
        fs_diag_errno(d, FS_EIO, "%s: rename to %s failed", tmp, path);
        unlink(tmp);
        return FS_EIO;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}
