/*
 * notify.c — the systemd notify protocol (SYSTEMS.md §a1) and the watchdog helper. Thin
 * wrappers over sd_notify: they add MONOTONIC_USEC to RELOADING=1, keep STATUS to one line (a
 * status built from a peer's name must not be able to smuggle in "\nREADY=1"), and log a failed
 * send once instead of at every call. Not under systemd (NOTIFY_SOCKET unset) they do nothing.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "fs_daemon.h"

#define STATUS_MAX 200

static bool g_warned; /* one warning per process for a broken NOTIFY_SOCKET */

static int send_state(const char *state) {
    int rc = sd_notify(0, state);
    if (rc > 0)
        return 1;
    if (rc == 0)
        return 0;
    if (!g_warned) {
        g_warned = true;
        char err[64];
        snprintf(err, sizeof err, "%s", strerror(-rc));
        fs_log_kv(FS_LOG_WARNING, "cannot notify systemd", "REASON", err, NULL);
    }
    return FS_ESYS;
}

/* Copies `in` as one line of at most STATUS_MAX characters. */
static void one_line(char *out, size_t cap, const char *in) {
    size_t n = 0;
    for (; in && in[n] && n + 1 < cap && n < STATUS_MAX; n++) {
        unsigned char c = (unsigned char)in[n];
        out[n] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[n] = '\0';
}

int fs_notify_ready(const char *status) {
    char line[STATUS_MAX + 1];
    char msg[STATUS_MAX + 32];
    one_line(line, sizeof line, status);
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", line);
    return send_state(msg);
}

int fs_notify_status(const char *fmt, ...) {
    char text[STATUS_MAX + 1];
    char line[STATUS_MAX + 1];
    char msg[STATUS_MAX + 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    one_line(line, sizeof line, text);
    snprintf(msg, sizeof msg, "STATUS=%s", line);
    return send_state(msg);
}

int fs_notify_reloading(void) {
    /* MONOTONIC_USEC is CLOCK_MONOTONIC in µs: systemd >= 253 wants it, 252 ignores it */
    char msg[128];
    snprintf(msg, sizeof msg,
             "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading configuration",
             fs_now_usec());
    return send_state(msg);
}

int fs_notify_stopping(const char *status) {
    char line[STATUS_MAX + 1];
    char msg[STATUS_MAX + 32];
    one_line(line, sizeof line, status);
    snprintf(msg, sizeof msg, "STOPPING=1\nSTATUS=%s", line);
    return send_state(msg);
}

int fs_notify_extend_timeout(uint64_t usec) {
    char msg[64];
    snprintf(msg, sizeof msg, "EXTEND_TIMEOUT_USEC=%" PRIu64, usec);
    return send_state(msg);
}

int fs_notify_failed(int errnum, const char *status) {
    char line[STATUS_MAX + 1];
    char msg[STATUS_MAX + 64];
    one_line(line, sizeof line, status);
    if (errnum > 0)
        snprintf(msg, sizeof msg, "STATUS=failed: %s\nERRNO=%d", line, errnum);
    else
        snprintf(msg, sizeof msg, "STATUS=failed: %s", line);
    return send_state(msg);
}

bool fs_watchdog_init(fs_watchdog *w, uint64_t now_usec) {
    uint64_t usec = 0;
    memset(w, 0, sizeof *w);
    /* > 0 only if WATCHDOG_USEC is set and WATCHDOG_PID (if set) is this process */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec >= 2) {
        w->enabled = true;
        w->interval_usec = usec / 2;
        w->next_usec = now_usec;
    }
    return w->enabled;
}

bool fs_watchdog_due(const fs_watchdog *w, uint64_t now_usec) {
    return w->enabled && now_usec >= w->next_usec;
}

int fs_watchdog_ping(fs_watchdog *w, uint64_t now_usec) {
    if (!w->enabled)
        return 0;
    w->next_usec = now_usec + w->interval_usec;
    return send_state("WATCHDOG=1");
}

int fs_watchdog_maybe(fs_watchdog *w) {
    uint64_t now = fs_now_usec();
    if (!fs_watchdog_due(w, now))
        return 0;
    return fs_watchdog_ping(w, now);
}

int fs_watchdog_trigger(void) { return send_state("WATCHDOG=trigger"); }

uint64_t fs_watchdog_deadline(const fs_watchdog *w) {
    return w->enabled ? (w->next_usec ? w->next_usec : 1) : 0;
}
