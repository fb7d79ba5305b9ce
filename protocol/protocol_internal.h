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
    struct fs_wire_layout *layout; /* fs_wire_decode_placed only, during the decode */
};

/* Sets the hook fs_wire_msg_free calls (once) after freeing the message's own blocks. */
void fs_wire_msg_set_release(fs_wire_msg *m, void (*release)(void *), void *arg);

/* A buffer the caller overwrites completely: 64-byte aligned, NOT zeroed, freed with fs_free;
 * >= 8 MiB: 2 MiB aligned and advised as transparent huge pages (decode copy 2-3x faster). */
void *fs_wire_alloc_big(size_t bytes);

/* ---- placed decoding: raw frames copied into their tensors while the message arrives ----
 * The link receives a message frame by frame. With a layout planned from the header (frame 0),
 * each raw frame is copied straight to its place in its tensor's final buffer as soon as it
 * arrives (while libzmq's I/O thread has just written it, so it is still in cache) and the frame
 * is freed at once, instead of holding every frame of a 64 MiB message and copying at the end.
 * Nothing in a layout is trusted: fs_wire_decode_placed runs the full decoder over the frames as
 * received (placed frames now point into the layout's buffers) and adopts a buffer as a tensor's
 * data only if every chunk of that tensor is exactly where its descriptor says, which proves that
 * the buffer is the tensor, fully written; any other case copies as fs_wire_decode does. So the
 * payload is copied once either way, and accepted/rejected messages are the same as without a
 * layout. Memory: a tensor's buffer is allocated at its first arriving chunk, sized from
 * descriptors that were checked against the limits; big buffers are mmap'd, so only pages that
 * received bytes are ever committed. */
typedef struct fs_wire_layout fs_wire_layout;
/* A layout for the raw frames announced by `header`, or NULL if it announces no tensors, if
 * anything in its tensor descriptors would make the decoder reject the message (the caller then
 * keeps the frames as they are) or out of memory. Returns owned: fs_wire_layout_free. */
fs_wire_layout *fs_wire_layout_plan(const void *header, size_t len, const fs_wire_limits *lim);
/* Where raw frame `frame` (1-based) of `len` bytes should be copied, or NULL (unknown frame, a
 * length other than the descriptor's, out of memory: keep the frame). */
void *fs_wire_layout_place(fs_wire_layout *l, size_t frame, size_t len);
/* Frees the buffers that no message adopted, and the layout (NULL-safe). */
void fs_wire_layout_free(fs_wire_layout *l);
/* fs_wire_decode, adopting the buffers of `l` (may be NULL) as described above. */
FS_MUST_CHECK int fs_wire_decode_placed(const fs_wire_buf *frames, size_t n,
                                        const fs_wire_limits *lim, fs_wire_layout *l,
                                        fs_wire_msg **out, uint64_t *peer_version, fs_diag *d);

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
