/*
 * log_journal.c — the journal sink of the logging facade, and the start-up choice between it and
 * the readable stderr sink (SYSTEMS.md §a3). Journal entries carry MESSAGE, PRIORITY,
 * SYSLOG_IDENTIFIER, the caller's CODE_FILE/LINE/FUNC (the header macros would record this file
 * instead, hence SD_JOURNAL_SUPPRESS_LOCATION) and one field per key/value pair (JOB, ROUND,
 * AGENT, PHASE, REASON, ...). Field names are checked here because journald silently drops
 * invalid ones.
 */
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_daemon.h"

static char g_ident[64] = "fedslim";

bool fs_journal_field_name_valid(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64 || name[0] == '_' || (name[0] >= '0' && name[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* Fields the sink sets itself: a pair with one of these names would add a second value. */
static bool reserved(const char *name) {
    static const char *const own[] = {"MESSAGE",   "PRIORITY",  "SYSLOG_IDENTIFIER",
                                      "CODE_FILE", "CODE_LINE", "CODE_FUNC"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        if (strcmp(name, own[i]) == 0)
            return true;
    }
    return false;
}

/* Appends formatted text to the arena without letting r->used pass `stop` (<= the arena size);
 * returns false (after appending what fits) when it is full. */
static bool append(fs_journal_record *r, size_t stop, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool append(fs_journal_record *r, size_t stop, size_t *len, const char *fmt, ...) {
    if (stop > sizeof r->buf)
        stop = sizeof r->buf;
    if (r->used + 1 >= stop)
        return false;
    size_t room = stop - r->used;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(r->buf + r->used, room, fmt, ap);
    va_end(ap);
    if (k < 0)
        return false;
    size_t got = (size_t)k < room ? (size_t)k : room - 1;
    r->used += got;
    *len += got;
    return (size_t)k < room;
}

static void begin(fs_journal_record *r, size_t *len) {
    r->iov[r->n].iov_base = r->buf + r->used;
    *len = 0;
}

static void end(fs_journal_record *r, size_t len) {
    r->iov[r->n].iov_len = len;
    r->n++;
    if (r->used < sizeof r->buf)
        r->used++; /* keep a NUL between fields: the buffer stays printable for tests */
}

void fs_journal_record_build(fs_journal_record *r, const char *ident, int level, const char *file,
                             int line, const char *func, const char *msg, const char *const *kv) {
    size_t len;
    r->n = 0;
    r->used = 0;
    memset(r->buf, 0, sizeof r->buf);
    /* MESSAGE: the text plus the pairs, as the stderr sink writes them, within half the arena
     * so the other fields always have room */
    const size_t half = sizeof r->buf / 2;
    const size_t all = sizeof r->buf;
    begin(r, &len);
    append(r, half, &len, "MESSAGE=%s", msg ? msg : "");
    for (const char *const *p = kv; p && p[0] && p[1]; p += 2) {
        bool quote = strpbrk(p[1], " \"=") != NULL || p[1][0] == '\0';
        if (!append(r, half, &len, quote ? " %s=\"%s\"" : " %s=%s", p[0], p[1]))
            break;
    }
    end(r, len);
    begin(r, &len);
    append(r, all, &len, "PRIORITY=%d", level < 0 ? 0 : level > 7 ? 7 : level);
    end(r, len);
    begin(r, &len);
    append(r, all, &len, "SYSLOG_IDENTIFIER=%s", ident && ident[0] ? ident : "fedslim");
    end(r, len);
    if (file) {
        begin(r, &len);
        append(r, all, &len, "CODE_FILE=%s", file);
        end(r, len);
        begin(r, &len);
        append(r, all, &len, "CODE_LINE=%d", line);
        end(r, len);
    }
    if (func) {
        begin(r, &len);
        append(r, all, &len, "CODE_FUNC=%s", func);
        end(r, len);
    }
    for (const char *const *p = kv; p && p[0] && p[1]; p += 2) {
        if (r->n >= FS_JOURNAL_MAX_FIELDS || r->used + 2 >= sizeof r->buf)
            break;
        if (!fs_journal_field_name_valid(p[0]) || reserved(p[0]))
            continue; /* already in MESSAGE; journald would drop or double it */
        begin(r, &len);
        append(r, all, &len, "%s=%s", p[0], p[1]);
        end(r, len);
    }
}

void fs_log_journal_sink(int level, const char *file, int line, const char *func, const char *msg,
                         const char *const *kv, void *ud) {
    /* 8 KiB arena: static would not be reentrant across threads; the stack is fine here */
    fs_journal_record r;
    fs_journal_record_build(&r, ud ? (const char *)ud : "fedslim", level, file, line, func, msg,
                            kv);
    if (sd_journal_sendv(r.iov, r.n) < 0) {
        /* journald gone (or stopped): do not lose the line */
        fs_log_stderr_sink(level, file, line, func, msg, kv, NULL);
    }
}

bool fs_log_fd_is_journal(int fd) {
    const char *e = getenv("JOURNAL_STREAM");
    if (!e || !e[0])
        return false;
    char *end = NULL;
    errno = 0;
    uintmax_t dev = strtoumax(e, &end, 10);
    if (errno || end == e || *end != ':')
        return false;
    const char *p = end + 1;
    uintmax_t ino = strtoumax(p, &end, 10);
    if (errno || end == p || *end != '\0')
        return false;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return false;
    return (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino;
}

bool fs_log_setup(const char *ident, int max_level) {
    snprintf(g_ident, sizeof g_ident, "%s", ident && ident[0] ? ident : "fedslim");
    fs_log_set_level(max_level);
    if (fs_log_fd_is_journal(STDERR_FILENO)) {
        fs_log_set_sink(fs_log_journal_sink, g_ident);
        return true;
    }
    fs_log_set_sink(fs_log_stderr_sink, NULL);
    return false;
}
