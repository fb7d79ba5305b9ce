/*
 * fs_control.h — the coordinator's local control socket (server side of control protocol v1,
 * docs/control.md). A Unix stream socket carrying one JSON request per line and one JSON response
 * per line; fedslimctl is the client. This module does the socket, the framing, the limits and
 * the non-blocking I/O; what a command means is the caller's handler.
 *
 * Thread: every function here belongs to the coordinator loop thread (the one that called
 * fs_control_open). Nothing blocks: all descriptors are non-blocking.
 *
 * Integration with a zmq_poll loop:
 *
 *     zmq_pollitem_t items[1 + FS_CONTROL_MAX_FDS];
 *     int n = 1 + fs_control_fill_zmq(ctl, items + 1, FS_CONTROL_MAX_FDS);
 *     ... include fs_control_deadline(ctl) in the timeout (fs_loop_timeout_ms) ...
 *     zmq_poll(items, n, timeout_ms);
 *     fs_control_service(ctl, handler, ud);   // cheap when nothing is ready; call every iteration
 */
#ifndef FS_CONTROL_H
#define FS_CONTROL_H

#include <jansson.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "fs_util.h"

#define FS_CONTROL_PROTOCOL_VERSION 1
#define FS_CONTROL_DEFAULT_SOCKET "/run/fedslim/control.sock"
/* A request line (without its '\n') may be at most this long; longer gets an error and a close. */
#define FS_CONTROL_MAX_REQUEST (16u * 1024u * 1024u)
/* Clients connected at the same time; one more gets {"ok":false,...} and is closed at once. */
#define FS_CONTROL_MAX_CLIENTS 32
/* Descriptors fs_control_fill_* may write: the listening socket plus one per client. */
#define FS_CONTROL_MAX_FDS (1 + FS_CONTROL_MAX_CLIENTS)
/* A serialised response larger than this (without its '\n') is replaced by an error response
 * (a fetch of huge files). */
#define FS_CONTROL_MAX_RESPONSE ((size_t)1 << 31)
/* A client with unsent output that accepts no byte for this long is dropped (default). */
#define FS_CONTROL_STALL_MS 30000

typedef struct fs_control fs_control;

/* The caller's command handler. `request` (borrowed, valid only during the call) is a JSON
 * object already checked to have "v": 1 and a string "cmd"; everything else is the handler's to
 * check. Returns owned: the complete response object (the module adds nothing and frees it).
 * Returning NULL or a non-object makes the module answer {"ok":false,"error":"internal error:
 * ..."}. Called only from fs_control_service, on the loop thread; it should not block for long,
 * since the whole coordinator loop waits for it. */
typedef json_t *(*fs_control_handler)(void *ud, const json_t *request);

/* Creates the control socket at `path` (borrowed) and listens on it.
 *  - An existing file at `path` is removed only if it is a socket nobody listens on (a connect
 *    test); a live socket or a non-socket file is an error (FS_EINVAL) that names the path.
 *  - After bind the socket file is chmod 0660 (the unit's UMask=0077 would leave 0600).
 *  - If `group` (borrowed, may be NULL or "") names a group other than the process's group, the
 *    file's group is changed with chown(path, -1, gid); if that is not permitted (not root, or
 *    SystemCallFilter=~@privileged) or the group does not exist, a warning is logged and the socket
 *    keeps the process's group (which is what the hardened unit gives: Group=fedslim).
 * Returns owned in *out (free with fs_control_close) on 0; FS_EINVAL / FS_ESYS / FS_ENOMEM with d
 * set otherwise (*out = NULL). */
FS_MUST_CHECK int fs_control_open(fs_control **out, const char *path, const char *group,
                                  fs_diag *d);

/* Closes every client and the listening socket and unlinks the socket file. NULL-safe. */
void fs_control_close(fs_control *c);

/* The socket path (owned by c). */
const char *fs_control_path(const fs_control *c);

/* Descriptors to poll: fills at most `max` entries and returns how many it wrote (at most
 * FS_CONTROL_MAX_FDS). Events are POLLIN for the listener and for clients waiting for a request,
 * POLLOUT for clients with unsent output. Entries are valid until the next fs_control_service. */
int fs_control_fill_pollfd(const fs_control *c, struct pollfd *pfd, int max);
/* The same as zmq_pollitem_t entries (socket = NULL, fd, ZMQ_POLLIN / ZMQ_POLLOUT). */
int fs_control_fill_zmq(const fs_control *c, zmq_pollitem_t *items, int max);

/* Does all the work that can be done without blocking: accepts new clients, reads, answers every
 * complete request line through `handler` (one at a time per client: the next request of a client
 * is read only once its previous response is sent), writes pending output, drops stalled clients.
 * Call it after every poll (whether or not a control fd was reported; it is cheap). Never fails:
 * problems with a client close that client and are logged at debug/warning level. */
void fs_control_service(fs_control *c, fs_control_handler handler, void *ud);

/* Monotonic time (fs_now_usec) by which fs_control_service must be called again to drop stalled
 * clients, or 0 if there is no such deadline. */
uint64_t fs_control_deadline(const fs_control *c);

/* Number of connected clients. */
int fs_control_client_count(const fs_control *c);

/* The user id of the client whose request the handler is answering (SO_PEERCRED), for audit
 * log lines ("job canceled by uid 1000"); -1 outside a handler call or if unknown. */
long fs_control_peer_uid(const fs_control *c);

/* Changes limits, for tests and tuning: the stall limit in ms (default FS_CONTROL_STALL_MS) and
 * the largest serialised response in bytes (default and maximum FS_CONTROL_MAX_RESPONSE). A value
 * <= 0 / 0 keeps the current setting. */
void fs_control_set_limits(fs_control *c, int stall_ms, size_t max_response);

/* Returns owned: {"ok": false, "error": <text>} built with printf-style formatting. The text is
 * made one line (control characters become spaces) and cut at 1000 bytes. NULL only when out of
 * memory. */
json_t *fs_control_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Returns owned: {"ok": true}. NULL only when out of memory. */
json_t *fs_control_ok(void);

#endif
