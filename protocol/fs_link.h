/*
 * fs_link.h — the secure transport between coordinator and agents (docs/protocol.md §Transport).
 *
 * Coordinator: one ROUTER socket with a CURVE server key; a ZAP handler thread on the same ZeroMQ
 * context, bound and confirmed BEFORE the ROUTER binds (otherwise libzmq 4.3 admits every key),
 * admits only public keys in the allow-list and sets User-Id = the allow-list name. Every received
 * message's User-Id is checked against the CURRENT list, so a removed key loses access at once;
 * fs_link_server_reload re-creates the ROUTER when keys were removed, which cuts their connections
 * (agents' DEALERs reconnect and re-handshake through ZAP). A socket monitor logs handshake
 * failures; the ZAP handler logs rejected keys (Z85) with the peer address. Both are rate-limited.
 *
 * Agent: one DEALER with a pinned server key, its own key pair, ZMQ_IMMEDIATE, reconnect backoff.
 *
 * Both: ZMTP heartbeats, ZMQ_MAXMSGSIZE = limits.max_chunk_bytes + 64 KiB per frame, and
 * application caps on frames and bytes per message (received frame by frame; an over-limit message
 * is drained and rejected). Outgoing seq numbers are assigned by the link (per peer).
 *
 * Thread rules: a link's sockets belong to the thread that opened it; every fs_link_* call on a
 * link must come from that thread (libzmq sockets are not thread-safe). The ZAP handler runs on its
 * own thread and only reads the allow-list through its rwlock. At most one server per ZeroMQ
 * context (the ZAP endpoint is per context). Close links before zmq_ctx_term.
 */
#ifndef FS_LINK_H
#define FS_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_keys.h"
#include "fs_util.h"
#include "fs_wire.h"

typedef struct {
    size_t chunk_bytes;      /* raw frame size when sending tensors (FS_WIRE_CHUNK_DEFAULT) */
    fs_wire_limits limits;   /* decoder limits (fs_wire_limits_default) */
    int heartbeat_ivl_ms;    /* ZMQ_HEARTBEAT_IVL (5000) */
    int heartbeat_timeout_ms;/* ZMQ_HEARTBEAT_TIMEOUT (15000) */
    int heartbeat_ttl_ms;    /* ZMQ_HEARTBEAT_TTL (30000) */
    int sndhwm;              /* messages (16) */
    int rcvhwm;              /* messages (64) */
    int linger_ms;           /* ZMQ_LINGER (2000; tests use 0) */
    int handshake_ivl_ms;    /* ZMQ_HANDSHAKE_IVL (10000) */
    int reconnect_ivl_ms;    /* agent: ZMQ_RECONNECT_IVL (1000) */
    int reconnect_ivl_max_ms;/* agent: ZMQ_RECONNECT_IVL_MAX (30000) */
    int send_timeout_ms;     /* agent: ZMQ_SNDTIMEO (5000); the server never blocks (DONTWAIT) */
    unsigned max_garbage;    /* undecodable messages before a peer is quarantined (16) */
    unsigned auth_log_burst; /* auth-failure log lines per minute before suppression (10) */
    bool rebind_on_removal;  /* reload re-creates the ROUTER when entries were removed (true) */
} fs_link_options;
fs_link_options fs_link_options_default(void);

/* An authenticated peer as seen by the server. */
typedef struct {
    char name[65];     /* the ZAP User-Id = allow-list name (never taken from the payload) */
    uint8_t rid[256];  /* ROUTER routing id of the latest message from it (changes on reconnect) */
    size_t rid_len;
    char address[64];  /* the peer's IP address as the ROUTER saw it ("" if libzmq did not say) */
} fs_link_peer;

/* Counters (monotonic) for tests and status lines. */
typedef struct {
    uint64_t received;       /* messages returned to the caller */
    uint64_t garbage;        /* undecodable / over-limit messages */
    uint64_t rejected;       /* wrong job/round/step, version errors */
    uint64_t replays;        /* dropped duplicate seq */
    uint64_t unauthorized;   /* no User-Id, or User-Id no longer in the allow-list */
    uint64_t quarantined;    /* messages dropped from quarantined peers */
    uint64_t auth_failures;  /* ZMQ_EVENT_HANDSHAKE_FAILED_AUTH seen by the monitor */
    uint64_t rebinds;
} fs_link_stats;

/* ---- coordinator side ---------------------------------------------------------------------- */

typedef struct fs_link_server fs_link_server;

/* Starts the ZAP thread on `zctx`, waits until it is bound, loads the allow-list, then creates and
 * binds the ROUTER on `endpoint` (e.g. "tcp://127.0.0.1:*"). `server_secret` is borrowed (copied;
 * the caller wipes its copy). returns owned: fs_link_server_close. */
FS_MUST_CHECK int fs_link_server_open(fs_link_server **out, void *zctx, const char *endpoint,
                                      const fs_key server_secret, const char *allowlist_path,
                                      const fs_link_options *opt, fs_diag *d);
/* The resolved endpoint (ZMQ_LAST_ENDPOINT), e.g. "tcp://127.0.0.1:40123". */
const char *fs_link_server_endpoint(const fs_link_server *s);
/* Sockets to put in the caller's zmq_poll (ZMQ_POLLIN): the ROUTER and the monitor PAIR. Both
 * change when the ROUTER is re-created (reload/rebind): fetch them again after those calls. */
void *fs_link_server_socket(fs_link_server *s);
void *fs_link_server_monitor_socket(fs_link_server *s);
/* Drains and logs pending monitor events (never blocks). */
void fs_link_server_service_monitor(fs_link_server *s);
/* After fs_link_server_service_monitor (or a rebind): true and `name` filled, once per loss, for
 * each peer whose latest connection has closed since (a reset, the ZMTP heartbeat timing out, the
 * agent's process ending). The peer may already be reconnecting; its next message says so. */
bool fs_link_server_take_lost(fs_link_server *s, char *name, size_t cap);

/* Receives at most one message, waiting up to timeout_ms (-1: forever, 0: poll).
 *   0            *msg = decoded, authenticated, session-checked message (returns owned:
 *                fs_wire_msg_free); *peer filled.
 *   FS_ETIMEDOUT nothing arrived.
 *   FS_EAGAIN    a message arrived and was dropped or rejected (logged with the peer and reason;
 *                d says why; *peer filled when known). Version mismatches were answered with
 *                ERROR{code:"version"}, wrong job/round/step with ERROR{code:"stale"}.
 *   other        socket failure. */
int fs_link_server_recv(fs_link_server *s, fs_link_peer *peer, fs_wire_msg **msg, int timeout_ms,
                        fs_diag *d);

/* Sends `msg` (borrowed; its seq is set by the link) to `peer` without blocking. Tensor bytes are
 * copied into ZeroMQ frames. 0, FS_EAGAIN (peer's queue full: retry later), FS_ENOTFOUND (peer
 * not connected), FS_EINVAL (not encodable). */
int fs_link_server_send(fs_link_server *s, const fs_link_peer *peer, const fs_wire_msg *msg,
                        fs_diag *d);
/* Same, without copying tensor / chunk bytes: `release(arg)` is called exactly once, possibly on a
 * ZeroMQ I/O thread, when none of the memory referenced by `msg` is needed any more (also on
 * failure, before this returns). The memory must not change until then. */
int fs_link_server_send_zc(fs_link_server *s, const fs_link_peer *peer, const fs_wire_msg *msg,
                           void (*release)(void *arg), void *arg, fs_diag *d);

/* Per-peer session (expected job/round/step, seq, counters) by allow-list name; created on first
 * use. NULL if `name` is not in the allow-list. Valid until fs_link_server_close. */
fs_wire_session *fs_link_server_session(fs_link_server *s, const char *name);
/* Sets the expected job/round/step of every peer's session, including peers first seen later. */
void fs_link_server_expect_all(fs_link_server *s, const char *job, uint32_t round, uint32_t step);
/* true if the peer crossed the garbage threshold; its messages are dropped until unquarantined. */
bool fs_link_server_quarantined(fs_link_server *s, const char *name);
void fs_link_server_unquarantine(fs_link_server *s, const char *name);

/* Re-reads the allow-list (SIGHUP). On error the old list stays and the error is returned. The
 * new list applies to the next received message at once (User-Id check). If entries were removed
 * and opt.rebind_on_removal is set, the ROUTER is re-created to cut their connections (rebind). */
int fs_link_server_reload(fs_link_server *s, fs_diag *d);
/* Closes and re-creates the ROUTER on the same resolved endpoint: every connection drops and the
 * agents reconnect through ZAP (removed keys cannot). Queued outgoing messages are lost. */
int fs_link_server_rebind(fs_link_server *s, fs_diag *d);

fs_link_stats fs_link_server_stats(const fs_link_server *s);
void fs_link_server_close(fs_link_server *s); /* NULL-safe; stops the ZAP thread */

/* ---- agent side ---------------------------------------------------------------------------- */

typedef struct fs_link_client fs_link_client;

/* Connects a DEALER to `endpoint` with the pinned `server_public` key and its own key pair (all
 * borrowed, copied into the socket; the caller wipes its secret). Returns at once (the connection
 * is made in the background). returns owned: fs_link_client_close. */
FS_MUST_CHECK int fs_link_client_open(fs_link_client **out, void *zctx, const char *endpoint,
                                      const fs_key server_public, const fs_key client_public,
                                      const fs_key client_secret, const fs_link_options *opt,
                                      fs_diag *d);
void *fs_link_client_socket(fs_link_client *c);
/* Sends `msg` (borrowed; seq set by the link). Blocks up to send_timeout_ms while no connection is
 * up (ZMQ_IMMEDIATE). 0, FS_ETIMEDOUT, FS_EINVAL. */
int fs_link_client_send(fs_link_client *c, const fs_wire_msg *msg, fs_diag *d);
int fs_link_client_send_zc(fs_link_client *c, const fs_wire_msg *msg, void (*release)(void *),
                           void *arg, fs_diag *d);
/* Sends pre-encoded frames as they are (tests and tools: malformed input, other versions). */
int fs_link_client_send_raw(fs_link_client *c, const fs_wire_buf *frames, size_t n, fs_diag *d);
/* Same contract as fs_link_server_recv, without a peer (the peer is the pinned server). */
int fs_link_client_recv(fs_link_client *c, fs_wire_msg **msg, int timeout_ms, fs_diag *d);
fs_wire_session *fs_link_client_session(fs_link_client *c);
fs_link_stats fs_link_client_stats(const fs_link_client *c);
void fs_link_client_close(fs_link_client *c); /* NULL-safe */

#endif
