/*
 * log.c — the logging facade: collects "KEY","value" pairs and hands them to the current sink.
 */
#include "fs_log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static fs_log_sink g_sink = fs_log_stderr_sink;
static void *g_ud;
static int g_level = FS_LOG_INFO;

void fs_log_set_sink(fs_log_sink sink, void *ud)
{
    g_sink = sink ? sink : fs_log_stderr_sink;
    g_ud = ud;
}

void fs_log_set_level(int max_level)
{
    g_level = max_level;
}

int fs_log_level(void)
{
    return g_level;
}

void fs_log_at(int level, const char *file, int line, const char *func, const char *msg, ...)
{
    if (level > g_level)
        return;
    const char *kv[33];
    int n = 0;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k || n >= 32)
            break;
        const char *v = va_arg(ap, const char *);
        kv[n++] = k;
        kv[n++] = v ? v : "";
    }
    va_end(ap);
    kv[n] = NULL;
    g_sink(level, file, line, func, msg, kv, g_ud);
}

static const char *level_name(int level)
{
    switch (level) {
    case FS_LOG_ERR: return "error";
    case FS_LOG_WARNING: return "warn";
    case FS_LOG_NOTICE: return "notice";
    case FS_LOG_INFO: return "info";
    default: return "debug";
    }
}

void fs_log_stderr_sink(int level, const char *file, int line, const char *func, const char *msg,
                        const char *const *kv, void *ud)
{
    (void)file;
    (void)line;
    (void)func;
    (void)ud;
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char buf[2048];
    int pos = snprintf(buf, sizeof buf, "%s %s %s", ts, level_name(level), msg);
    for (; kv && kv[0] && kv[1] && pos < (int)sizeof buf; kv += 2) {
        int quote = strpbrk(kv[1], " \"=") != NULL || kv[1][0] == '\0';
        pos += snprintf(buf + pos, sizeof buf - (size_t)pos, quote ? " %s=\"%s\"" : " %s=%s", kv[0],
                        kv[1]);
    }
    if (pos >= (int)sizeof buf)
        pos = (int)sizeof buf - 1;
    buf[pos] = '\n';
    fwrite(buf, 1, (size_t)pos + 1, stderr);
}
