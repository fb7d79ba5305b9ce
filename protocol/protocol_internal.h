/*
 * protocol_internal.h — helpers shared by the files of protocol/ only; never included from
 * another folder (STYLE C1).
 */
#ifndef FS_PROTOCOL_INTERNAL_H
#define FS_PROTOCOL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_wire.h"

/* Bookkeeping of a decoded message: every block it owns, plus an optional release hook the link
 * layer uses to keep the received ZeroMQ frames alive as long as the message. */
struct fs_wire_owned {
    void **blocks;
    size_t n, cap;
    void (*release)(void *arg);
    void *release_arg;
};

/* Sets the hook fs_wire_msg_free calls (once) after freeing the message's own blocks. */
void fs_wire_msg_set_release(fs_wire_msg *m, void (*release)(void *), void *arg);

/* A buffer the caller overwrites completely: 64-byte aligned, NOT zeroed, freed with fs_free;
 * >= 8 MiB: 2 MiB aligned and advised as transparent huge pages (decode copy 2-3x faster). */
void *fs_wire_alloc_big(size_t bytes);

/* [A-Za-z0-9._-], 1..max chars. */
bool fs_wire_name_ok(const char *s, size_t len, size_t max);

/* Up to max_out-1 bytes of `data` as a printable sample: printable ASCII kept, others as \xNN. */
void fs_wire_sample(const void *data, size_t len, size_t max_bytes, char *out, size_t out_len);

/* ---- ZAP handler (zap.c) ---- */
struct fs_allowlist;
typedef struct fs_zap fs_zap;
/* Starts the ZAP thread on zctx and returns only once its REP socket is bound at
 * inproc://zeromq.zap.01 (or failed). `al` is borrowed and must outlive the handler. */
int fs_zap_start(fs_zap **out, void *zctx, struct fs_allowlist *al, unsigned log_burst,
                 fs_diag *d);
void fs_zap_stop(fs_zap *z); /* NULL-safe; joins the thread */

/* A log rate limiter: at most `burst` lines per 60 s window. */
typedef struct {
    unsigned burst;
    uint64_t window_start_usec;
    unsigned used;
    uint64_t suppressed;
} fs_ratelimit;
/* true: log now; *suppressed (may be NULL) receives lines dropped since the last allowed one. */
bool fs_ratelimit_ok(fs_ratelimit *r, uint64_t *suppressed);

#endif
