/*
 * control.c — server side of the control socket (protocol v1, docs/control.md): a Unix stream
 * socket, one JSON request per line in, one JSON response per line out. Everything is
 * non-blocking and bounded (request line size, number of clients, unsent output, stalled
 * peers), so a misbehaving local client can be answered or dropped but never stall or crash the
 * coordinator loop. The meaning of commands belongs to the caller's handler.
 */
#include "fs_control.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs_log.h"

/* A client that neither sends nor receives anything for this long is closed (frees its slot). */
#define IDLE_MS 600000
/* After accept() fails for lack of descriptors, the listener is not polled for this long:
 * otherwise it stays readable and the loop would spin. */
#define ACCEPT_PAUSE_MS 1000
#define READ_CHUNK 65536
/* Buffers larger than this are released once empty (after a big fetch response). */
#define KEEP_BUFFER 65536

typedef struct {
    int fd;
    unsigned serial; /* for log lines */
    long uid;        /* SO_PEERCRED, -1 if unknown */
    char *in;        /* received bytes not yet consumed */
    size_t in_len;
    size_t in_cap;
    size_t in_start;   /* in[in_start..in_len) is unconsumed; earlier bytes are answered */
    size_t in_scanned; /* in[in_start..in_scanned) holds no '\n' */
    char *out;         /* queued response bytes: out[out_off..out_len) unsent */
    size_t out_len;
    size_t out_off;
    size_t out_cap;
    size_t max_out;           /* response size limit (fs_control.max_response) */
    bool overflow;            /* the response being serialised exceeded max_out */
    bool eof;                 /* the peer shut down its sending side */
    bool more;                /* work left over at the end of fs_control_service (fairness cap) */
    const char *close_reason; /* set: close once the output is sent (protocol error) */
    uint64_t last_output;     /* usec: output queued or progressed */
    uint64_t last_active;     /* usec: any byte in or out */
} client;

struct fs_control {
    int lfd;
    char *path;
    dev_t dev; /* identity of our socket file, so close unlinks only ours */
    ino_t ino;
    client *clients[FS_CONTROL_MAX_CLIENTS];
    int n_clients;
    unsigned next_serial;
    uint64_t stall_usec;
    size_t max_response;
    uint64_t accept_paused_until;
    long current_uid;
};

/* ---- small helpers ------------------------------------------------------------------------- */

/* Makes text one line of printable characters: control bytes (and DEL) become spaces; the text
 * is cut at `max` bytes on a UTF-8 boundary. */
static void one_line(char *s, size_t max) {
    size_t n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
            n--;
        }
        s[n] = '\0';
    }
    for (char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7F) {
            *p = ' ';
        }
    }
}

json_t *fs_control_error(const char *fmt, ...) {
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    one_line(msg, 1000);
    json_t *text = json_string(msg);
    if (!text) {
        /* Not valid UTF-8 (a byte excerpt from a file, say): keep the ASCII, mark the rest. */
        for (char *p = msg; *p; p++) {
            if ((unsigned char)*p >= 0x80) {
                *p = '?';
            }
        }
        text = json_string(msg);
    }
    if (!text) {
        return NULL;
    }
    json_t *r = json_pack("{s:b, s:o}", "ok", 0, "error", text);
    return r;
}

json_t *fs_control_ok(void) { return json_pack("{s:b}", "ok", 1); }

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) {
        memcpy(p, s, n);
    }
    return p;
}

/* ---- open / close -------------------------------------------------------------------------- */

static int fill_addr(struct sockaddr_un *sa, const char *path, fs_diag *d) {
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0) {
        return fs_diag_set(d, FS_EINVAL, "control socket: empty path");
    }
    if (n >= sizeof sa->sun_path) {
        return fs_diag_set(d, FS_EINVAL,
                           "control socket %s: path too long (%zu bytes, at most %zu)", path, n,
                           sizeof sa->sun_path - 1);
    }
    memcpy(sa->sun_path, path, n + 1);
    return 0;
}

/* An existing file at the path: remove it only if it is a socket nobody listens on. */
static int remove_stale(const char *path, const struct sockaddr_un *sa, fs_diag *d) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) {
            return 0;
        }
        return fs_diag_errno(d, FS_ESYS, "control socket %s: cannot inspect the existing file",
                             path);
    }
    if (!S_ISSOCK(st.st_mode)) {
        return fs_diag_set(d, FS_EINVAL,
                           "control socket %s: a file that is not a socket is in the way; "
                           "refusing to replace it",
                           path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return fs_diag_errno(d, FS_ESYS, "control socket %s: socket()", path);
    }
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
        return fs_diag_set(d, FS_EINVAL,
                           "control socket %s: another process is listening on it "
                           "(is another fedslim-coordinator running?)",
                           path);
    }
    if (err != ECONNREFUSED) {
        errno = err;
        return fs_diag_errno(d, FS_ESYS, "control socket %s: cannot test the existing socket",
                             path);
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        return fs_diag_errno(d, FS_ESYS, "control socket %s: cannot remove the stale socket", path);
    }
    fs_log_kv(FS_LOG_INFO, "removed a stale control socket", "PATH", path, NULL);
    return 0;
}

static void apply_group(const char *path, const char *group) {
    if (!group || !*group) {
        return;
    }
    struct group gr;
    struct group *res = NULL;
    char buf[16384];
    int e = getgrnam_r(group, &gr, buf, sizeof buf, &res);
    char have[32];
    snprintf(have, sizeof have, "%u", (unsigned)getegid());
    if (e != 0 || !res) {
        fs_log_kv(FS_LOG_WARNING,
                  "control group does not exist; the control socket keeps the "
                  "process's group",
                  "PATH", path, "GROUP", group, "GID", have, "REASON",
                  e ? strerror(e) : "no such group", NULL);
        return;
    }
    if (res->gr_gid == getegid()) {
        return;
    }
    if (chown(path, (uid_t)-1, res->gr_gid) != 0) {
        /* Expected under the hardened unit (SystemCallFilter=~@privileged) and for non-root:
         * the socket then belongs to the process's primary group (Group= in the unit). */
        fs_log_kv(FS_LOG_WARNING,
                  "cannot give the control socket to its group; it keeps the "
                  "process's group",
                  "PATH", path, "GROUP", group, "GID", have, "REASON", strerror(errno), NULL);
    }
}

int fs_control_open(fs_control **out, const char *path, const char *group, fs_diag *d) {
    FS_ASSERT(out && path);
    *out = NULL;
    struct sockaddr_un sa;
    int rc = fill_addr(&sa, path, d);
    if (rc != 0) {
        return rc;
    }
    fs_control *c = calloc(1, sizeof *c);
    if (!c) {
        return fs_diag_set(d, FS_ENOMEM, "control socket %s: out of memory", path);
    }
    c->lfd = -1;
    c->stall_usec = (uint64_t)FS_CONTROL_STALL_MS * 1000u;
    c->max_response = FS_CONTROL_MAX_RESPONSE;
    c->current_uid = -1;
    c->path = dup_str(path);
    if (!c->path) {
        rc = fs_diag_set(d, FS_ENOMEM, "control socket %s: out of memory", path);
        goto fail;
    }
    if ((rc = remove_stale(path, &sa, d)) != 0) {
        goto fail;
    }
    c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->lfd < 0) {
        rc = fs_diag_errno(d, FS_ESYS, "control socket %s: socket()", path);
        goto fail;
    }
    if (bind(c->lfd, (const struct sockaddr *)&sa, sizeof sa) != 0) {
        rc = fs_diag_errno(d, FS_ESYS, "control socket %s: cannot bind", path);
        goto fail;
    }
    struct stat st;
    if (lstat(path, &st) != 0) {
        rc = fs_diag_errno(d, FS_ESYS, "control socket %s: cannot stat after bind", path);
        unlink(path);
        goto fail;
    }
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    /* UMask=0077 in the unit leaves the socket 0600; the group needs rw to connect. */
    if (chmod(path, 0660) != 0) {
        rc = fs_diag_errno(d, FS_ESYS, "control socket %s: cannot chmod 0660", path);
        unlink(path);
        goto fail;
    }
    apply_group(path, group);
    if (listen(c->lfd, 64) != 0) {
        rc = fs_diag_errno(d, FS_ESYS, "control socket %s: cannot listen", path);
        unlink(path);
        goto fail;
    }
    fs_log_kv(FS_LOG_INFO, "control socket listening", "PATH", path, NULL);
    *out = c;
    return 0;
fail:
    if (c->lfd >= 0) {
        close(c->lfd);
    }
    free(c->path);
    free(c);
    return rc;
}

static void client_free(client *cl) {
    if (!cl) {
        return;
    }
    if (cl->fd >= 0) {
        close(cl->fd);
    }
    free(cl->in);
    free(cl->out);
    free(cl);
}

static void drop_client(fs_control *c, int i, int level, const char *why) {
    client *cl = c->clients[i];
    char serial[16];
    snprintf(serial, sizeof serial, "%u", cl->serial);
    fs_log_kv(level, "control client closed", "CLIENT", serial, "REASON", why, NULL);
    client_free(cl);
    c->clients[i] = c->clients[c->n_clients - 1];
    c->clients[c->n_clients - 1] = NULL;
    c->n_clients--;
}

void fs_control_close(fs_control *c) {
    if (!c) {
        return;
    }
    for (int i = 0; i < c->n_clients; i++) {
        client_free(c->clients[i]);
        c->clients[i] = NULL;
    }
    c->n_clients = 0;
    if (c->lfd >= 0) {
        close(c->lfd);
        /* Unlink only the file we created: a successor may already have replaced it. */
        struct stat st;
        if (c->path && lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino) {
            unlink(c->path);
        }
    }
    free(c->path);
    free(c);
}

const char *fs_control_path(const fs_control *c) { return c->path; }

int fs_control_client_count(const fs_control *c) { return c->n_clients; }

void fs_control_set_limits(fs_control *c, int stall_ms, size_t max_response) {
    if (stall_ms > 0) {
        c->stall_usec = (uint64_t)stall_ms * 1000u;
    }
    if (max_response > 0) {
        c->max_response =
            max_response < FS_CONTROL_MAX_RESPONSE ? max_response : FS_CONTROL_MAX_RESPONSE;
    }
    for (int i = 0; i < c->n_clients; i++) {
        c->clients[i]->max_out = c->max_response;
    }
}

long fs_control_peer_uid(const fs_control *c) { return c->current_uid; }

/* ---- polling --------------------------------------------------------------------------------- */

static bool wants_output(const client *cl) { return cl->out_off < cl->out_len; }

static bool listener_active(const fs_control *c, uint64_t now) {
    return c->accept_paused_until == 0 || now >= c->accept_paused_until;
}

int fs_control_fill_pollfd(const fs_control *c, struct pollfd *pfd, int max) {
    int n = 0;
    if (n < max && listener_active(c, fs_now_usec())) {
        pfd[n].fd = c->lfd;
        pfd[n].events = POLLIN;
        pfd[n].revents = 0;
        n++;
    }
    for (int i = 0; i < c->n_clients && n < max; i++) {
        const client *cl = c->clients[i];
        pfd[n].fd = cl->fd;
        pfd[n].events = wants_output(cl) ? POLLOUT : POLLIN;
        pfd[n].revents = 0;
        n++;
    }
    return n;
}

int fs_control_fill_zmq(const fs_control *c, zmq_pollitem_t *items, int max) {
    int n = 0;
    if (n < max && listener_active(c, fs_now_usec())) {
        items[n] = (zmq_pollitem_t){.socket = NULL, .fd = c->lfd, .events = ZMQ_POLLIN};
        n++;
    }
    for (int i = 0; i < c->n_clients && n < max; i++) {
        const client *cl = c->clients[i];
        items[n] = (zmq_pollitem_t){
            .socket = NULL, .fd = cl->fd, .events = wants_output(cl) ? ZMQ_POLLOUT : ZMQ_POLLIN};
        n++;
    }
    return n;
}

static uint64_t min_deadline(uint64_t a, uint64_t b) {
    if (a == 0) {
        return b;
    }
    if (b == 0) {
        return a;
    }
    return a < b ? a : b;
}

uint64_t fs_control_deadline(const fs_control *c) {
    uint64_t dl = 0;
    if (c->accept_paused_until) {
        dl = c->accept_paused_until;
    }
    for (int i = 0; i < c->n_clients; i++) {
        const client *cl = c->clients[i];
        if (wants_output(cl)) {
            dl = min_deadline(dl, cl->last_output + c->stall_usec);
        }
        dl = min_deadline(dl, cl->last_active + (uint64_t)IDLE_MS * 1000u);
        if (cl->more) {
            dl = min_deadline(dl, 1); /* already due: work was left over */
        }
    }
    return dl;
}

/* ---- output ---------------------------------------------------------------------------------- */

static int out_reserve(client *cl, size_t more) {
    size_t need;
    if (fs_add_size(cl->out_len, more, &need) != 0 || need > cl->max_out + 1) {
        return FS_EFORMAT; /* over the response limit (+1: the '\n') */
    }
    if (need <= cl->out_cap) {
        return 0;
    }
    size_t cap = cl->out_cap ? cl->out_cap : 4096;
    while (cap < need) {
        cap = cap > (cl->max_out + 1) / 2 ? cl->max_out + 1 : cap * 2;
    }
    char *p = realloc(cl->out, cap);
    if (!p) {
        return FS_ENOMEM;
    }
    cl->out = p;
    cl->out_cap = cap;
    return 0;
}

static int dump_cb(const char *buf, size_t size, void *data) {
    client *cl = data;
    if (cl->overflow) {
        return -1;
    }
    int rc = out_reserve(cl, size);
    if (rc != 0) {
        cl->overflow = rc == FS_EFORMAT;
        return -1;
    }
    memcpy(cl->out + cl->out_len, buf, size);
    cl->out_len += size;
    return 0;
}

/* Serialises `resp` (borrowed) as one line into the client's output. */
static void queue_json(client *cl, const json_t *resp, const char *cmd) {
    FS_ASSERT(!wants_output(cl));
    cl->out_len = 0;
    cl->out_off = 0;
    cl->overflow = false;
    int rc = json_dump_callback(resp, dump_cb, cl, JSON_COMPACT);
    if (rc == 0 && out_reserve(cl, 1) == 0) {
        cl->out[cl->out_len++] = '\n';
    } else {
        bool too_big = cl->overflow;
        cl->out_len = 0;
        cl->overflow = false;
        json_t *e =
            too_big ? fs_control_error("response to '%s' is too large (more than %zu bytes)", cmd,
                                       cl->max_out)
                    : fs_control_error("internal error: cannot encode the response to '%s'", cmd);
        if (e && json_dump_callback(e, dump_cb, cl, JSON_COMPACT) == 0 && out_reserve(cl, 1) == 0) {
            cl->out[cl->out_len++] = '\n';
        } else {
            cl->out_len = 0;
            cl->close_reason = "out of memory"; /* the client sees EOF */
        }
        json_decref(e);
    }
    if (cl->out_len > 0) {
        cl->last_output = fs_now_usec();
    }
}

/* Sends what it can. Returns false if the client must be closed (peer gone). */
static bool flush_out(client *cl, uint64_t now) {
    while (wants_output(cl)) {
        ssize_t w = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            cl->out_off += (size_t)w;
            cl->last_output = now;
            cl->last_active = now;
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;
        }
        return false;
    }
    cl->out_len = 0;
    cl->out_off = 0;
    if (cl->out_cap > KEEP_BUFFER) {
        free(cl->out);
        cl->out = NULL;
        cl->out_cap = 0;
    }
    return true;
}

/* ---- requests -------------------------------------------------------------------------------- */

/* Checks the envelope of one request line and runs the handler. Returns the response (owned);
 * sets *close_after (a reason) for lines that are not JSON at all: the stream cannot be trusted
 * then. Well-formed JSON with a wrong envelope gets an error and the connection stays open. */
static json_t *answer(fs_control *c, client *cl, const char *line, size_t len,
                      fs_control_handler handler, void *ud, char *cmd_out, size_t cmd_cap,
                      const char **close_after) {
    snprintf(cmd_out, cmd_cap, "?");
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req) {
        *close_after = "request is not JSON";
        return fs_control_error("request is not valid JSON: %s (line 1, column %d)", jerr.text,
                                jerr.column);
    }
    json_t *resp = NULL;
    if (!json_is_object(req)) {
        resp = fs_control_error("request must be a JSON object");
        goto done;
    }
    json_t *v = json_object_get(req, "v");
    if (!json_is_integer(v)) {
        resp = fs_control_error("request has no integer \"v\" (the control protocol version, 1)");
        goto done;
    }
    if (json_integer_value(v) != FS_CONTROL_PROTOCOL_VERSION) {
        resp = fs_control_error("unsupported control protocol version %lld (this coordinator "
                                "speaks version %d)",
                                (long long)json_integer_value(v), FS_CONTROL_PROTOCOL_VERSION);
        goto done;
    }
    json_t *cmd = json_object_get(req, "cmd");
    if (!json_is_string(cmd) || json_string_length(cmd) == 0) {
        resp = fs_control_error("request has no string \"cmd\"");
        goto done;
    }
    snprintf(cmd_out, cmd_cap, "%s", json_string_value(cmd));
    one_line(cmd_out, 64);
    c->current_uid = cl->uid;
    resp = handler(ud, req);
    c->current_uid = -1;
    if (resp && !json_is_object(resp)) {
        json_decref(resp);
        resp = NULL;
    }
    if (!resp) {
        resp = fs_control_error("internal error: no response to '%s'", cmd_out);
    }
done:
    json_decref(req);
    return resp;
}

/* Answers complete lines while no output is pending (one response in flight per client).
 * Consumed lines only advance in_start (no copying per line: a client may pipeline many small
 * requests in one write); read_some compacts the buffer before it reads. */
static void process_lines(fs_control *c, client *cl, fs_control_handler handler, void *ud) {
    while (!wants_output(cl) && !cl->close_reason) {
        char *nl = NULL;
        if (cl->in_scanned < cl->in_start) {
            cl->in_scanned = cl->in_start;
        }
        if (cl->in_len > cl->in_scanned) {
            nl = memchr(cl->in + cl->in_scanned, '\n', cl->in_len - cl->in_scanned);
        }
        if (!nl) {
            cl->in_scanned = cl->in_len;
            if (cl->in_len - cl->in_start > FS_CONTROL_MAX_REQUEST) {
                json_t *e =
                    fs_control_error("request line longer than %u bytes", FS_CONTROL_MAX_REQUEST);
                if (e) {
                    queue_json(cl, e, "?");
                }
                json_decref(e);
                cl->close_reason = "request line too long";
                cl->in_len = cl->in_start = cl->in_scanned = 0;
            }
            return;
        }
        const char *line = cl->in + cl->in_start;
        size_t line_len = (size_t)(nl - line);
        if (line_len > 0 && line[line_len - 1] == '\r') {
            line_len--;
        }
        if (line_len > 0) {
            char cmd[80];
            const char *close_after = NULL;
            json_t *resp =
                answer(c, cl, line, line_len, handler, ud, cmd, sizeof cmd, &close_after);
            if (resp) {
                queue_json(cl, resp, cmd);
                json_decref(resp);
            } else {
                close_after = "out of memory";
            }
            if (close_after) {
                cl->close_reason = close_after;
            }
        }
        cl->in_start = (size_t)(nl - cl->in) + 1;
        if (cl->in_start == cl->in_len) {
            cl->in_len = cl->in_start = cl->in_scanned = 0;
            if (cl->in_cap > KEEP_BUFFER) {
                free(cl->in);
                cl->in = NULL;
                cl->in_cap = 0;
            }
        }
    }
}

/* Reads what is available (bounded by the line limit). Returns 1 if bytes arrived, 0 if none
 * are available now, -1 on a read error. EOF sets cl->eof and returns 0. */
static int read_some(client *cl, uint64_t now) {
    const size_t limit = (size_t)FS_CONTROL_MAX_REQUEST + 1; /* a full line plus its '\n' */
    if (cl->in_start > 0) {
        /* only a partial line is left (complete ones are answered before reading) */
        memmove(cl->in, cl->in + cl->in_start, cl->in_len - cl->in_start);
        cl->in_len -= cl->in_start;
        cl->in_scanned = cl->in_scanned > cl->in_start ? cl->in_scanned - cl->in_start : 0;
        cl->in_start = 0;
    }
    if (cl->in_len >= limit) {
        return 0; /* process_lines reports the over-long line */
    }
    if (cl->in_cap - cl->in_len < READ_CHUNK && cl->in_cap < limit) {
        size_t cap = cl->in_cap ? cl->in_cap * 2 : READ_CHUNK;
        if (cap > limit) {
            cap = limit;
        }
        char *p = realloc(cl->in, cap);
        if (!p) {
            return -1;
        }
        cl->in = p;
        cl->in_cap = cap;
    }
    for (;;) {
        ssize_t r = recv(cl->fd, cl->in + cl->in_len, cl->in_cap - cl->in_len, MSG_DONTWAIT);
        if (r > 0) {
            cl->in_len += (size_t)r;
            cl->last_active = now;
            return 1;
        }
        if (r == 0) {
            cl->eof = true; /* peer finished sending: answer its complete lines, then close */
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
}

/* Everything for one client. Returns a reason if it must be closed now, else NULL. */
static const char *service_client(fs_control *c, client *cl, fs_control_handler handler, void *ud,
                                  uint64_t now) {
    cl->more = false;
    /* Fairness: a bounded number of steps per client per call; if work remains, cl->more makes
     * fs_control_deadline ask for an immediate new call. */
    for (int step = 0;; step++) {
        if (!flush_out(cl, now)) {
            return "peer gone";
        }
        if (wants_output(cl)) {
            break; /* socket full: wait for POLLOUT */
        }
        if (cl->close_reason) {
            return cl->close_reason; /* the error response is sent */
        }
        if (step >= 64) {
            cl->more = true;
            break;
        }
        process_lines(c, cl, handler, ud);
        if (wants_output(cl) || cl->close_reason) {
            continue;
        }
        if (cl->eof) {
            return "done"; /* every complete line answered; a trailing partial line is dropped */
        }
        int r = read_some(cl, now);
        if (r < 0) {
            return "read error";
        }
        if (r == 0 && !cl->eof) {
            break; /* nothing more now */
        }
    }
    /* (last_output may be a little later than `now`: queue_json stamps it with a fresh clock) */
    if (wants_output(cl) && now > cl->last_output && now - cl->last_output > c->stall_usec) {
        return "not reading its responses";
    }
    if (now > cl->last_active && now - cl->last_active > (uint64_t)IDLE_MS * 1000u) {
        return "idle";
    }
    return NULL;
}

static void refuse(int fd, const char *why) {
    json_t *e = fs_control_error("%s", why);
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    if (s) {
        size_t n = strlen(s);
        s[n] = '\n'; /* json_dumps leaves room only for the NUL: replace it, send n + 1 bytes */
        (void)!send(fd, s, n + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        s[n] = '\0';
    }
    free(s);
    json_decref(e);
    close(fd);
}

static void service_range(fs_control *c, int from, fs_control_handler handler, void *ud);

static void accept_clients(fs_control *c, uint64_t now, fs_control_handler handler, void *ud) {
    int first_new = c->n_clients;
    if (!listener_active(c, now)) {
        return;
    }
    c->accept_paused_until = 0;
    for (;;) {
        int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                fs_log_kv(FS_LOG_WARNING, "control socket: cannot accept a client; pausing",
                          "REASON", strerror(errno), NULL);
                c->accept_paused_until = now + (uint64_t)ACCEPT_PAUSE_MS * 1000u;
            }
            return; /* EAGAIN and anything else: try again at the next poll */
        }
        if (c->n_clients >= FS_CONTROL_MAX_CLIENTS) {
            /* Full: serve the clients accepted in this call first; short-lived ones (a request,
             * an answer, a close) free their slots at once. */
            service_range(c, first_new, handler, ud);
            first_new = c->n_clients;
        }
        if (c->n_clients >= FS_CONTROL_MAX_CLIENTS) {
            char why[96];
            snprintf(why, sizeof why, "too many control connections (at most %d); try again later",
                     FS_CONTROL_MAX_CLIENTS);
            fs_log_kv(FS_LOG_WARNING, "control socket: client refused", "REASON", why, NULL);
            refuse(fd, why);
            continue;
        }
        client *cl = calloc(1, sizeof *cl);
        if (!cl) {
            close(fd);
            continue;
        }
        cl->fd = fd;
        cl->serial = ++c->next_serial;
        cl->uid = -1;
        cl->max_out = c->max_response;
        cl->last_active = now;
        cl->last_output = now;
        struct ucred cred;
        socklen_t clen = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
            cl->uid = (long)cred.uid;
        }
        char serial[16];
        char uid[24];
        snprintf(serial, sizeof serial, "%u", cl->serial);
        snprintf(uid, sizeof uid, "%ld", cl->uid);
        fs_log_kv(FS_LOG_DEBUG, "control client connected", "CLIENT", serial, "UID", uid, NULL);
        c->clients[c->n_clients++] = cl;
    }
}

static void service_range(fs_control *c, int from, fs_control_handler handler, void *ud) {
    for (int i = from; i < c->n_clients;) {
        const char *why = service_client(c, c->clients[i], handler, ud, fs_now_usec());
        if (why) {
            bool bad = strcmp(why, "done") != 0 && strcmp(why, "peer gone") != 0 &&
                       strcmp(why, "idle") != 0;
            drop_client(c, i, bad ? FS_LOG_WARNING : FS_LOG_DEBUG, why);
            continue; /* slot i now holds the former last client */
        }
        i++;
    }
}

void fs_control_service(fs_control *c, fs_control_handler handler, void *ud) {
    FS_ASSERT(c && handler);
    /* Existing clients first, so slots of clients that hung up are free before accepting; then
     * the new ones (a request often arrives together with the connection). */
    service_range(c, 0, handler, ud);
    int before = c->n_clients;
    accept_clients(c, fs_now_usec(), handler, ud);
    service_range(c, before, handler, ud);
}
