/*
 * fs_daemon.h — what a fedslim daemon needs from its environment, whatever it computes:
 * where log lines go (journal or stderr), the systemd notify protocol and watchdog, signals as
 * readable bytes on a pipe (for zmq_poll), and a deadline helper for the main loop.
 * Configuration loading is in fs_config.h. This library knows nothing of models, kernels or
 * the wire protocol (SYSTEMS.md §a).
 *
 * Thread rules: everything here belongs to the main thread (the one that runs the event loop).
 * Only the main process may notify systemd (never a forked child). The watchdog is pinged only
 * from the loop that does the work, so a wedged loop really gets killed.
 */
#ifndef FS_DAEMON_H
#define FS_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fs_log.h"
#include "fs_util.h"

/* ------------------------------------------------------------------------------- logging */

/* Decides once, at start-up, where log lines go, and installs that sink with fs_log_set_sink:
 * the journal (native, structured fields) if stderr is the journal stream, else the readable
 * stderr sink. `ident` is the SYSLOG_IDENTIFIER ("fedslim-coordinator"; copied, at most 63
 * characters). Sets the level filter to `max_level` (FS_LOG_*). Returns true if the journal sink
 * was chosen. Call before any other thread logs. */
bool fs_log_setup(const char *ident, int max_level);

/* True if $JOURNAL_STREAM ("DEV:INODE") names the file open on `fd` (systemd.exec(5): compare
 * device and inode, mere presence of the variable is not enough). */
bool fs_log_fd_is_journal(int fd);

/* A journal field name is valid if it has 1..64 characters from A-Z, 0-9 and '_', and starts
 * with neither '_' (trusted fields) nor a digit. */
bool fs_journal_field_name_valid(const char *name);

#define FS_JOURNAL_MAX_FIELDS 24
#define FS_JOURNAL_BUF 8192

/* One journal entry as the iovec array sd_journal_sendv takes. Plain data, no ownership. */
typedef struct {
    struct iovec iov[FS_JOURNAL_MAX_FIELDS];
    int n;
    size_t used;
    char buf[FS_JOURNAL_BUF];
} fs_journal_record;

/* Builds the record for one log call: MESSAGE (msg followed by the pairs as KEY=value, so plain
 * `journalctl` shows them too), PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC of
 * the call site, then one field per pair whose name is valid and not one of those. Pairs with an
 * invalid name appear in MESSAGE only. Over-long values are cut to fit FS_JOURNAL_BUF. */
void fs_journal_record_build(fs_journal_record *r, const char *ident, int level, const char *file,
                             int line, const char *func, const char *msg, const char *const *kv);

/* The journal sink (fs_log_sink); `ud` is the identifier string (NULL: "fedslim"). */
void fs_log_journal_sink(int level, const char *file, int line, const char *func, const char *msg,
                         const char *const *kv, void *ud);

/* ------------------------------------------------------------------------------- notify */

/* Each returns 1 if the message was delivered, 0 if NOTIFY_SOCKET is unset (not under systemd),
 * FS_ESYS if sending failed (logged once per process). Status texts are one line: newlines and
 * other control characters become spaces, at most 200 characters are sent. */
int fs_notify_ready(const char *status); /* READY=1 + STATUS= */
int fs_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* STATUS= */
int fs_notify_reloading(void);                        /* RELOADING=1 + MONOTONIC_USEC= + STATUS= */
int fs_notify_stopping(const char *status);           /* STOPPING=1 + STATUS= */
int fs_notify_extend_timeout(uint64_t usec);          /* EXTEND_TIMEOUT_USEC= */
int fs_notify_failed(int errnum, const char *status); /* STATUS=failed: ... + ERRNO= */

/* The watchdog, driven by the main loop: init once, then each time round the loop
 * `if (fs_watchdog_due(&w, now)) fs_watchdog_ping(&w, now);` and include fs_watchdog_deadline(&w)
 * in the poll timeout. Plain data owned by the loop. */
typedef struct {
    bool enabled;
    uint64_t interval_usec; /* WATCHDOG_USEC / 2 */
    uint64_t next_usec;     /* fs_now_usec() time of the next ping */
} fs_watchdog;

/* Reads WATCHDOG_USEC (and WATCHDOG_PID) via sd_watchdog_enabled. The first ping is due at
 * once. Returns w->enabled. */
bool fs_watchdog_init(fs_watchdog *w, uint64_t now_usec);
bool fs_watchdog_due(const fs_watchdog *w, uint64_t now_usec);
/* Sends WATCHDOG=1 and schedules the next ping at now + interval. Returns as fs_notify_*. */
int fs_watchdog_ping(fs_watchdog *w, uint64_t now_usec);
/* For long work ON the loop thread (between chunks of an aggregation): pings if due. Returns 1
 * if a ping was sent, 0 if none was due (or no watchdog), FS_ESYS as fs_notify_*. */
int fs_watchdog_maybe(fs_watchdog *w);
/* The loop knows it is wedged: WATCHDOG=trigger (systemd then acts as on a missed ping). */
int fs_watchdog_trigger(void);
/* Time of the next ping (µs, fs_now_usec clock), 0 if the watchdog is off. */
uint64_t fs_watchdog_deadline(const fs_watchdog *w);

/* ------------------------------------------------------------------------------- signals */

/* Installs a handler for SIGTERM, SIGINT and SIGHUP that writes the signal number as one byte
 * to a pipe (O_CLOEXEC | O_NONBLOCK; bytes are dropped if the pipe is full), and ignores
 * SIGPIPE. Works whatever threads libraries started before main (pthread OpenBLAS workers do
 * not block signals, so a signalfd would not: SYSTEMS.md §a2). Idempotent.
 * 0 or FS_ESYS with d set. Process-wide state: the main thread calls it once. */
FS_MUST_CHECK int fs_signals_install(fs_diag *d);
/* The pipe's read end, for zmq_poll / poll (POLLIN); -1 before fs_signals_install. */
int fs_signal_fd(void);
/* Next pending signal number, or 0 if none is pending. Never blocks. */
int fs_signal_next(void);
/* Restores the default dispositions and closes the pipe (tests, or before exec). */
void fs_signals_uninstall(void);

/* ------------------------------------------------------------------------------- main loop */

/* Poll timeout in ms until the earliest of `n` deadlines (µs, fs_now_usec clock; entries equal
 * to 0 are ignored): -1 if there is none, 0 if one has passed, else rounded UP so the loop does
 * not spin for the last fraction of a millisecond; capped at INT32_MAX. */
long fs_loop_timeout_ms(uint64_t now_usec, const uint64_t *deadlines_usec, size_t n);

#endif
