/*
 * fedslimctl.c — the admin CLI: talks to a running fedslim-coordinator over its local control
 * socket (protocol v1, docs/control.md) and prints the answers as tables, a status block, a live
 * progress line (watch) or raw JSON (--json). Result files from `fetch` are written only under
 * the directory the user names, with names checked first. Everything the coordinator sends is
 * treated as untrusted text: types are checked, control characters never reach the terminal.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fs_util.h"

#ifndef FS_VERSION
#define FS_VERSION "unknown"
#endif

#define DEFAULT_SOCKET "/run/fedslim/control.sock"
#define PROTOCOL_VERSION 1
#define JOB_FILE_MAX (1u << 20)        /* submit: a job file is small text */
#define RESPONSE_MAX ((size_t)1 << 32) /* fetch responses carry whole model files (base64) */
#define RESPONSE_TIMEOUT_MS 120000     /* no byte from the coordinator for this long: give up */
#define WATCH_INTERVAL_MS 500
#define WATCH_RETRY_S 60.0 /* watch keeps retrying a lost coordinator this long */

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

typedef struct {
    const char *path;
    bool json;
    int fd;
    char *buf; /* received bytes not yet consumed */
    size_t len;
    size_t cap;
} conn;

/* ---- messages ------------------------------------------------------------------------------ */

static void fail_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_msg(const char *fmt, ...) {
    va_list ap;
    fputs("fedslimctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *f) {
    fputs("usage: fedslimctl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "\n"
          "commands:\n"
          "  agents              list the agents: connection, data, last contact, job\n"
          "  submit JOB.ini      check and queue a job file; prints the job id\n"
          "  jobs                list the jobs\n"
          "  status JOB          one job in detail\n"
          "  watch JOB           follow a job until it ends (exit 0 done, 1 failed/canceled)\n"
          "  cancel JOB          stop a queued or running job\n"
          "  fetch JOB -o DIR    write the job's result files into DIR (created if missing)\n"
          "  reload [--wait]     re-read the coordinator's configuration and allow-list\n"
          "\n"
          "options:\n"
          "  --socket PATH       control socket (default $FEDSLIM_CONTROL_SOCKET or " DEFAULT_SOCKET
          ")\n"
          "  --json              print the coordinator's JSON response (one line per update for "
          "watch)\n"
          "  --help, --version\n",
          f);
}

/* Copies untrusted text for the terminal: control characters become '?', at most cap-1 bytes,
 * cut on a UTF-8 boundary. */
static const char *clean(char *dst, size_t cap, const char *src) {
    size_t n = 0;
    if (!src) {
        src = "-";
    }
    for (; *src && n + 1 < cap; src++) {
        unsigned char ch = (unsigned char)*src;
        dst[n++] = (ch < 0x20 || ch == 0x7F) ? '?' : (char)ch;
    }
    if (*src) {
        /* Cut: drop a possibly incomplete last character (its continuation bytes and lead). */
        while (n > 0 && ((unsigned char)dst[n - 1] & 0xC0) == 0x80) {
            n--;
        }
        if (n > 0 && ((unsigned char)dst[n - 1] & 0x80)) {
            n--;
        }
    }
    dst[n] = '\0';
    return dst;
}

/* Appends formatted text to the NUL-terminated buf (cut at cap). */
static void append(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...) {
    size_t n = strlen(buf);
    if (n + 1 >= cap) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

/* Display width of UTF-8 text: code points (good enough for names and numbers). */
static size_t text_width(const char *s) {
    size_t w = 0;
    for (; *s; s++) {
        if (((unsigned char)*s & 0xC0) != 0x80) {
            w++;
        }
    }
    return w;
}

/* ---- the connection ---------------------------------------------------------------------- */

static int conn_open(conn *c, bool quiet, char *why, size_t why_cap) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(c->path);
    if (n == 0 || n >= sizeof sa.sun_path) {
        snprintf(why, why_cap, "cannot reach the coordinator at %s: socket path %s", c->path,
                 n == 0 ? "is empty" : "is too long");
        if (!quiet) {
            fail_msg("%s", why);
        }
        return EXIT_FAIL;
    }
    memcpy(sa.sun_path, c->path, n + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, why_cap, "socket: %s", strerror(errno));
        if (!quiet) {
            fail_msg("%s", why);
        }
        return EXIT_FAIL;
    }
    if (connect(fd, (const struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        if (e == ENOENT || e == ECONNREFUSED) {
            snprintf(why, why_cap,
                     "cannot reach the coordinator at %s: is fedslim-coordinator running? (%s)",
                     c->path, strerror(e));
        } else if (e == EACCES || e == EPERM) {
            snprintf(why, why_cap,
                     "cannot reach the coordinator at %s: permission denied: add yourself to "
                     "group fedslim or use sudo",
                     c->path);
        } else {
            snprintf(why, why_cap, "cannot reach the coordinator at %s: %s", c->path, strerror(e));
        }
        if (!quiet) {
            fail_msg("%s", why);
        }
        return EXIT_FAIL;
    }
    c->fd = fd;
    c->len = 0;
    return EXIT_OK;
}

static void conn_close(conn *c) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->buf);
    c->buf = NULL;
    c->len = 0;
    c->cap = 0;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request, one response. On EXIT_OK *resp is an object with a boolean "ok" (owned). On
 * failure the reason is in why (already printed unless quiet). */
static int conn_call(conn *c, json_t *req, json_t **resp, bool quiet, char *why, size_t why_cap) {
    *resp = NULL;
    char *line = json_dumps(req, JSON_COMPACT);
    if (!line) {
        snprintf(why, why_cap, "out of memory");
        goto fail;
    }
    size_t n = strlen(line);
    int rc = send_all(c->fd, line, n);
    if (rc == 0) {
        rc = send_all(c->fd, "\n", 1);
    }
    free(line);
    if (rc != 0) {
        snprintf(why, why_cap, "lost the connection to the coordinator at %s: %s", c->path,
                 strerror(errno));
        goto fail;
    }
    size_t scanned = 0;
    char *nl = NULL;
    for (;;) {
        if (c->len > scanned) {
            nl = memchr(c->buf + scanned, '\n', c->len - scanned);
        }
        if (nl) {
            break;
        }
        scanned = c->len;
        if (c->len >= RESPONSE_MAX) {
            snprintf(why, why_cap,
                     "malformed response from the coordinator at %s: longer than %zu bytes",
                     c->path, (size_t)RESPONSE_MAX);
            goto fail;
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 65536;
            char *p = realloc(c->buf, cap);
            if (!p) {
                snprintf(why, why_cap, "out of memory reading the response (%zu bytes)", cap);
                goto fail;
            }
            c->buf = p;
            c->cap = cap;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, RESPONSE_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr == 0) {
            snprintf(why, why_cap, "no response from the coordinator at %s within %d s", c->path,
                     RESPONSE_TIMEOUT_MS / 1000);
            goto fail;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            snprintf(why, why_cap, "lost the connection to the coordinator at %s: %s", c->path,
                     strerror(errno));
            goto fail;
        }
        if (r == 0) {
            snprintf(why, why_cap,
                     "the coordinator at %s closed the connection without a complete response",
                     c->path);
            goto fail;
        }
        c->len += (size_t)r;
    }
    size_t line_len = (size_t)(nl - c->buf);
    json_error_t jerr;
    json_t *r = json_loadb(c->buf, line_len, JSON_REJECT_DUPLICATES, &jerr);
    memmove(c->buf, nl + 1, c->len - line_len - 1);
    c->len -= line_len + 1;
    if (!r) {
        char text[200];
        snprintf(why, why_cap, "malformed response from the coordinator at %s: %s", c->path,
                 clean(text, sizeof text, jerr.text));
        goto fail;
    }
    if (!json_is_object(r) || !json_is_boolean(json_object_get(r, "ok"))) {
        json_decref(r);
        snprintf(
            why, why_cap,
            "malformed response from the coordinator at %s: not an object with a boolean \"ok\"",
            c->path);
        goto fail;
    }
    *resp = r;
    return EXIT_OK;
fail:
    if (!quiet) {
        fail_msg("%s", why);
    }
    return EXIT_FAIL;
}

/* ---- reading responses ------------------------------------------------------------------- */

static bool is_ok(const json_t *resp) { return json_is_true(json_object_get(resp, "ok")); }

/* Prints the error of an ok=false response (exit status 1). */
static int print_error(const json_t *resp) {
    const char *e = json_string_value(json_object_get(resp, "error"));
    char text[2048];
    fail_msg("%s",
             e ? clean(text, sizeof text, e) : "the coordinator reported an error without text");
    return EXIT_FAIL;
}

static int malformed(const conn *c, const char *what) {
    fail_msg("malformed response from the coordinator at %s: %s", c->path, what);
    return EXIT_FAIL;
}

static void print_json(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT);
    if (s) {
        puts(s);
        free(s);
    }
    fflush(stdout);
}

/* Typed field getters for untrusted objects: false if present with the wrong type. */
static bool get_str(const json_t *o, const char *k, const char **out, bool nullable) {
    json_t *v = json_object_get(o, k);
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return true;
    }
    if (nullable && (!v || json_is_null(v))) {
        *out = NULL;
        return true;
    }
    return false;
}

/* Integers; a real with an integral value (120.0) is accepted too. */
static bool get_int(const json_t *o, const char *k, long long *out, bool nullable, bool *present) {
    json_t *v = json_object_get(o, k);
    bool ok = false;
    *out = 0;
    if (json_is_integer(v)) {
        *out = (long long)json_integer_value(v);
        ok = true;
    } else if (json_is_real(v)) {
        double x = json_real_value(v);
        if (x > -9e15 && x < 9e15 && x == (double)(long long)x) {
            *out = (long long)x;
            ok = true;
        }
    }
    if (present) {
        *present = ok;
    }
    return ok || (nullable && (!v || json_is_null(v)));
}

static bool get_num(const json_t *o, const char *k, double *out, bool *present) {
    json_t *v = json_object_get(o, k);
    *present = json_is_number(v);
    *out = json_is_number(v) ? json_number_value(v) : 0.0;
    return json_is_number(v) || !v || json_is_null(v);
}

/* ---- tables -------------------------------------------------------------------------------- */

#define MAX_COLS 9
#define CELL 160

typedef struct {
    int ncols;
    const char *head[MAX_COLS];
    bool right[MAX_COLS];
    char (*cells)[MAX_COLS][CELL];
    size_t rows;
    size_t cap;
} table;

static char *table_row(table *t) {
    if (t->rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        void *p = realloc(t->cells, cap * sizeof *t->cells);
        if (!p) {
            return NULL;
        }
        t->cells = p;
        t->cap = cap;
    }
    memset(t->cells[t->rows], 0, sizeof t->cells[t->rows]);
    return t->cells[t->rows++][0];
}

static void table_print(const table *t) {
    size_t w[MAX_COLS];
    for (int j = 0; j < t->ncols; j++) {
        w[j] = text_width(t->head[j]);
        for (size_t i = 0; i < t->rows; i++) {
            size_t cw = text_width(t->cells[i][j]);
            w[j] = cw > w[j] ? cw : w[j];
        }
    }
    /* cells are at most CELL bytes and widths count characters, so a line fits in this */
    char line[MAX_COLS * (CELL + CELL + 2) + 1];
    for (size_t i = 0; i <= t->rows; i++) {
        size_t off = 0;
        for (int j = 0; j < t->ncols; j++) {
            const char *s = i == 0 ? t->head[j] : t->cells[i - 1][j];
            int pad = (int)(w[j] - text_width(s));
            int n = t->right[j] ? snprintf(line + off, sizeof line - off, "%*s%s", pad, "", s)
                                : snprintf(line + off, sizeof line - off, "%s%*s", s, pad, "");
            off += (size_t)n;
            if (j + 1 < t->ncols) {
                off += (size_t)snprintf(line + off, sizeof line - off, "  ");
            }
        }
        while (off > 0 && line[off - 1] == ' ') {
            off--;
        }
        line[off] = '\0';
        puts(line);
    }
}

/* "20,0,3,13" from an array of integers: the agent's sample count per class, in class order
 * (counts are what agents report about their data, never samples). */
static bool format_classes(const json_t *arr, char *out, size_t cap) {
    size_t n = json_array_size(arr);
    out[0] = '\0';
    if (n == 0) {
        snprintf(out, cap, "-");
        return true;
    }
    size_t used = 0;
    size_t i = 0;
    while (i < n) {
        json_t *a = json_array_get(arr, i);
        if (!json_is_integer(a)) {
            return false;
        }
        long long lo = (long long)json_integer_value(a);
        long long hi = lo;
        size_t j = i + 1;
        char part[48];
        if (hi == lo) {
            snprintf(part, sizeof part, "%s%lld", used ? "," : "", lo);
        } else {
            snprintf(part, sizeof part, "%s%lld-%lld", used ? "," : "", lo, hi);
        }
        size_t pl = strlen(part);
        if (used + pl + 4 >= cap) {
            snprintf(out + used, cap - used, ",...");
            return true;
        }
        memcpy(out + used, part, pl + 1);
        used += pl;
        i = j;
    }
    return true;
}

static void format_ago(double s, char *out, size_t cap) {
    if (s < 0) {
        s = 0;
    }
    if (s < 1) {
        snprintf(out, cap, "just now");
    } else if (s < 120) {
        snprintf(out, cap, "%.0fs ago", s);
    } else if (s < 7200) {
        snprintf(out, cap, "%.0fm ago", s / 60);
    } else if (s < 172800) {
        snprintf(out, cap, "%.0fh ago", s / 3600);
    } else {
        snprintf(out, cap, "%.0fd ago", s / 86400);
    }
}

/* A Unix time in seconds (integer or not) as local time. */
static void format_time(double t, bool present, char *out, size_t cap) {
    if (!present) {
        snprintf(out, cap, "-");
        return;
    }
    struct tm tm;
    time_t tt = (time_t)t;
    if (!(t > -1e12 && t < 1e12) || !localtime_r(&tt, &tm) ||
        strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
        snprintf(out, cap, "%.0f", t);
    }
}

static void format_duration(double s, char *out, size_t cap) {
    if (s < 0 || s != s) {
        s = 0;
    }
    if (s > 1e9) {
        snprintf(out, cap, "-");
        return;
    }
    long long t = (long long)(s + 0.5);
    snprintf(out, cap, "%lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
}

/* ---- commands ------------------------------------------------------------------------------- */

static json_t *request(const char *cmd) {
    return json_pack("{s:i, s:s}", "v", PROTOCOL_VERSION, "cmd", cmd);
}

/* Sends one request (owned: freed here) and handles transport errors, ok=false and --json.
 * Returns EXIT_OK with *resp (owned) for the caller to print; any other value is the exit status
 * (message printed). */
static int call(conn *c, json_t *req, json_t **resp) {
    *resp = NULL;
    if (!req) {
        fail_msg("out of memory");
        return EXIT_FAIL;
    }
    char why[1024];
    int rc = conn_open(c, false, why, sizeof why);
    if (rc == EXIT_OK) {
        rc = conn_call(c, req, resp, false, why, sizeof why);
    }
    json_decref(req);
    conn_close(c);
    if (rc != EXIT_OK) {
        return rc;
    }
    if (!is_ok(*resp)) {
        if (c->json) {
            print_json(*resp);
        }
        print_error(*resp);
        json_decref(*resp);
        *resp = NULL;
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

/* Calls a listing command whose answer holds the array `key`. With --json the answer is printed
 * here and *resp is NULL; otherwise *resp (the caller's to free) and *arr are set for a table. */
static int call_list(conn *c, const char *key, json_t **resp, json_t **arr) {
    int rc = call(c, request(key), resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    *arr = json_object_get(*resp, key);
    if (!json_is_array(*arr)) {
        json_decref(*resp);
        *resp = NULL;
        char what[64];
        snprintf(what, sizeof what, "\"%s\" is not an array", key);
        return malformed(c, what);
    }
    if (c->json) {
        print_json(*resp);
        json_decref(*resp);
        *resp = NULL;
    }
    return EXIT_OK;
}

static int cmd_agents(conn *c) {
    json_t *resp;
    json_t *agents;
    int rc = call_list(c, "agents", &resp, &agents);
    if (rc != EXIT_OK || !resp) {
        return rc;
    }
    table t = {
        .ncols = 8,
        .head = {"NAME", "STATE", "ADDRESS", "SAMPLES", "LABELED", "CLASSES", "LAST SEEN", "JOB"},
        .right = {false, false, false, true, true, false, false, false}};
    size_t i;
    json_t *a;
    rc = EXIT_OK;
    json_array_foreach(agents, i, a) {
        const char *name;
        const char *addr;
        const char *job;
        long long ns;
        long long nl;
        double seen;
        bool seen_p;
        json_t *connected = json_object_get(a, "connected");
        json_t *classes = json_object_get(a, "classes");
        if (!json_is_object(a) || !get_str(a, "name", &name, false) ||
            !get_str(a, "address", &addr, true) || !get_str(a, "job", &job, true) ||
            !get_int(a, "n_samples", &ns, true, NULL) ||
            !get_int(a, "n_labeled", &nl, true, NULL) ||
            !get_num(a, "last_seen_s", &seen, &seen_p) || !json_is_boolean(connected) ||
            !(classes == NULL || json_is_null(classes) || json_is_array(classes))) {
            rc = malformed(c, "an agent entry has missing or mistyped fields");
            break;
        }
        char(*row)[CELL] = (char(*)[CELL])table_row(&t);
        if (!row) {
            fail_msg("out of memory");
            rc = EXIT_FAIL;
            break;
        }
        clean(row[0], CELL, name);
        snprintf(row[1], CELL, "%s", json_is_true(connected) ? "connected" : "offline");
        clean(row[2], CELL, addr ? addr : "-");
        snprintf(row[3], CELL, "%lld", ns);
        snprintf(row[4], CELL, "%lld", nl);
        char cls[CELL];
        if (!format_classes(classes, cls, 48)) {
            rc = malformed(c, "an agent's \"classes\" is not a list of integers");
            break;
        }
        snprintf(row[5], CELL, "%s", cls);
        if (seen_p) {
            format_ago(seen, row[6], CELL);
        } else {
            snprintf(row[6], CELL, "never");
        }
        clean(row[7], CELL, job ? job : "-");
    }
    if (rc == EXIT_OK) {
        if (t.rows == 0) {
            puts("no agents (the coordinator's allow-list is empty)");
        } else {
            table_print(&t);
        }
    }
    free(t.cells);
    json_decref(resp);
    return rc;
}

static int cmd_jobs(conn *c) {
    json_t *resp;
    json_t *jobs;
    int rc = call_list(c, "jobs", &resp, &jobs);
    if (rc != EXIT_OK || !resp) {
        return rc;
    }
    table t = {
        .ncols = 8,
        .head = {"ID", "NAME", "STATE", "PHASE", "ROUND", "SUBMITTED", "STARTED", "FINISHED"},
        .right = {false, false, false, false, true, false, false, false}};
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j) {
        const char *id;
        const char *name;
        const char *state;
        const char *phase;
        long long round;
        long long rounds;
        double sub;
        double st;
        double fin;
        bool sub_p;
        bool st_p;
        bool fin_p;
        if (!json_is_object(j) || !get_str(j, "id", &id, false) ||
            !get_str(j, "name", &name, true) || !get_str(j, "state", &state, false) ||
            !get_str(j, "phase", &phase, true) || !get_int(j, "round", &round, true, NULL) ||
            !get_int(j, "rounds", &rounds, true, NULL) || !get_num(j, "submitted", &sub, &sub_p) ||
            !get_num(j, "started", &st, &st_p) || !get_num(j, "finished", &fin, &fin_p)) {
            rc = malformed(c, "a job entry has missing or mistyped fields");
            break;
        }
        char(*row)[CELL] = (char(*)[CELL])table_row(&t);
        if (!row) {
            fail_msg("out of memory");
            rc = EXIT_FAIL;
            break;
        }
        clean(row[0], CELL, id);
        clean(row[1], 41, name ? name : "-");
        clean(row[2], CELL, state);
        clean(row[3], CELL, phase ? phase : "-");
        snprintf(row[4], CELL, "%lld/%lld", round, rounds);
        format_time(sub, sub_p, row[5], CELL);
        format_time(st, st_p, row[6], CELL);
        format_time(fin, fin_p, row[7], CELL);
    }
    if (rc == EXIT_OK) {
        if (t.rows == 0) {
            puts("no jobs");
        } else {
            table_print(&t);
        }
    }
    free(t.cells);
    json_decref(resp);
    return rc;
}

/* The parts of a status response that the human output uses, type-checked. */
typedef struct {
    const char *id;
    const char *name;
    const char *state;
    const char *phase;
    const char *error;
    long long round;
    long long rounds;
    long long reporting;
    long long total;
    double loss;
    bool loss_p;
    double eta;
    bool eta_p;
    const json_t *agents; /* array or NULL */
    const json_t *files;  /* array or NULL */
} job_view;

static bool job_view_read(const json_t *job, job_view *v) {
    memset(v, 0, sizeof *v);
    if (!json_is_object(job) || !get_str(job, "id", &v->id, false) ||
        !get_str(job, "name", &v->name, true) || !get_str(job, "state", &v->state, false) ||
        !get_str(job, "phase", &v->phase, true) || !get_str(job, "error", &v->error, true) ||
        !get_int(job, "round", &v->round, true, NULL) ||
        !get_int(job, "rounds", &v->rounds, true, NULL) ||
        !get_int(job, "agents_reporting", &v->reporting, true, NULL) ||
        !get_int(job, "agents_total", &v->total, true, NULL) ||
        !get_num(job, "loss", &v->loss, &v->loss_p) || !get_num(job, "eta_s", &v->eta, &v->eta_p)) {
        return false;
    }
    json_t *a = json_object_get(job, "agents");
    json_t *f = json_object_get(job, "files");
    if ((a && !json_is_null(a) && !json_is_array(a)) ||
        (f && !json_is_null(f) && !json_is_array(f))) {
        return false;
    }
    v->agents = json_is_array(a) ? a : NULL;
    v->files = json_is_array(f) ? f : NULL;
    return true;
}

static bool state_final(const char *s) {
    return !strcmp(s, "done") || !strcmp(s, "failed") || !strcmp(s, "canceled");
}

static int print_status(const conn *c, const job_view *v) {
    char a[CELL];
    char b[CELL];
    printf("job        %s", clean(a, sizeof a, v->id));
    if (v->name) {
        printf("  (%s)", clean(b, sizeof b, v->name));
    }
    printf("\nstate      %s\n", clean(a, sizeof a, v->state));
    printf("phase      %s", clean(a, sizeof a, v->phase ? v->phase : "-"));
    if (v->rounds > 0) {
        printf("  round %lld/%lld", v->round, v->rounds);
    }
    fputc('\n', stdout);
    if (v->loss_p) {
        printf("loss       %.6g\n", v->loss);
    }
    if (v->eta_p && !state_final(v->state)) {
        format_duration(v->eta, a, sizeof a);
        printf("eta        %s\n", a);
    }
    printf("agents     %lld/%lld reporting\n", v->reporting, v->total);
    if (v->agents) {
        table t = {.ncols = 4,
                   .head = {"  NAME", "STATE", "SAMPLES", "NOTE"},
                   .right = {false, false, true, false}};
        size_t i;
        json_t *ag;
        json_array_foreach(v->agents, i, ag) {
            const char *name;
            const char *st;
            const char *lp;
            long long lr;
            long long samples;
            bool lr_p;
            if (!json_is_object(ag) || !get_str(ag, "name", &name, false) ||
                !get_str(ag, "state", &st, false) || !get_str(ag, "left_phase", &lp, true) ||
                !get_int(ag, "left_round", &lr, true, &lr_p) ||
                !get_int(ag, "samples", &samples, true, NULL)) {
                free(t.cells);
                return malformed(c, "a job's agent entry has missing or mistyped fields");
            }
            char(*row)[CELL] = (char(*)[CELL])table_row(&t);
            if (!row) {
                free(t.cells);
                fail_msg("out of memory");
                return EXIT_FAIL;
            }
            snprintf(row[0], CELL, "  %.120s", clean(a, 120, name));
            clean(row[1], CELL, st);
            snprintf(row[2], CELL, "%lld", samples);
            if (lp || lr_p) {
                append(row[3], CELL, "%s", strcmp(st, "left") ? "at" : "left in");
                if (lp) {
                    append(row[3], CELL, " %s", clean(b, 60, lp));
                }
                if (lr_p) {
                    append(row[3], CELL, " round %lld", lr);
                }
            }
            const char *reason = json_string_value(json_object_get(ag, "reason"));
            if (reason) {
                append(row[3], CELL, "%s%s", row[3][0] ? ": " : "", clean(b, 100, reason));
            }
        }
        if (t.rows > 0) {
            table_print(&t);
        }
        free(t.cells);
    }
    if (v->error) {
        char e[2048];
        printf("error      %s\n", clean(e, sizeof e, v->error));
    }
    if (v->files && json_array_size(v->files) > 0) {
        fputs("files     ", stdout);
        size_t i;
        json_t *f;
        json_array_foreach(v->files, i, f) {
            printf(" %s", json_is_string(f) ? clean(a, sizeof a, json_string_value(f)) : "?");
        }
        fputc('\n', stdout);
    }
    return EXIT_OK;
}

static json_t *job_request(const char *cmd, const char *job) {
    return json_pack("{s:i, s:s, s:s}", "v", PROTOCOL_VERSION, "cmd", cmd, "job", job);
}

static int cmd_status(conn *c, const char *job) {
    json_t *resp;
    int rc = call(c, job_request("status", job), &resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    job_view v;
    if (!job_view_read(json_object_get(resp, "job"), &v)) {
        json_decref(resp);
        return malformed(c, "\"job\" is missing or has mistyped fields");
    }
    if (c->json) {
        print_json(resp);
    } else {
        rc = print_status(c, &v);
    }
    json_decref(resp);
    return rc;
}

static void progress_line(const job_view *v, char *out, size_t cap) {
    char bar[24];
    int width = 20;
    int filled = 0;
    if (v->rounds > 0 && v->round > 0) {
        long long r = v->round > v->rounds ? v->rounds : v->round;
        filled = (int)(r * width / v->rounds);
    }
    if (!strcmp(v->state, "done")) {
        filled = width;
    }
    for (int i = 0; i < width; i++) {
        bar[i] = i < filled ? '#' : '.';
    }
    bar[width] = '\0';
    char phase[64];
    char state[32];
    int off = snprintf(out, cap, "[%s] ", bar);
    if (strcmp(v->state, "running") != 0) {
        off += snprintf(out + off, cap - (size_t)off, "%s ", clean(state, sizeof state, v->state));
    }
    off += snprintf(out + off, cap - (size_t)off, "%s",
                    clean(phase, sizeof phase, v->phase ? v->phase : "-"));
    if (v->rounds > 0) {
        off += snprintf(out + off, cap - (size_t)off, " round %lld/%lld", v->round, v->rounds);
    }
    if (v->loss_p) {
        off += snprintf(out + off, cap - (size_t)off, " loss %.4g", v->loss);
    }
    off += snprintf(out + off, cap - (size_t)off, " %lld/%lld agents", v->reporting, v->total);
    if (v->eta_p && !state_final(v->state)) {
        char eta[32];
        format_duration(v->eta, eta, sizeof eta);
        snprintf(out + off, cap - (size_t)off, " ETA %s", eta);
    }
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int cmd_watch(conn *c, const char *job) {
    bool tty = isatty(STDOUT_FILENO) && !c->json;
    char last[512] = "";
    char *last_json = NULL;
    double lost_since = -1.0;
    char why[1024] = "";
    int rc = EXIT_FAIL;
    bool open = false;
    bool drawn = false;
    for (;;) {
        json_t *resp = NULL;
        int trc = EXIT_OK;
        if (!open) {
            trc = conn_open(c, true, why, sizeof why);
            open = trc == EXIT_OK;
        }
        if (trc == EXIT_OK) {
            json_t *req = job_request("status", job);
            trc = req ? conn_call(c, req, &resp, true, why, sizeof why) : EXIT_FAIL;
            json_decref(req);
        }
        if (trc != EXIT_OK) {
            /* The coordinator may be restarting (jobs resume from their checkpoint): retry a
             * while before giving up. The very first contact must succeed, though. */
            conn_close(c);
            open = false;
            double now = fs_now_sec();
            if (lost_since < 0) {
                lost_since = now;
            }
            if (!drawn || now - lost_since > WATCH_RETRY_S) {
                if (tty && drawn) {
                    fputc('\n', stdout);
                }
                fail_msg("%s", why);
                rc = EXIT_FAIL;
                break;
            }
            sleep_ms(WATCH_INTERVAL_MS);
            continue;
        }
        lost_since = -1.0;
        if (!is_ok(resp)) {
            if (tty && drawn) {
                fputc('\n', stdout);
            }
            if (c->json) {
                print_json(resp);
            }
            rc = print_error(resp);
            json_decref(resp);
            break;
        }
        job_view v;
        if (!job_view_read(json_object_get(resp, "job"), &v)) {
            if (tty && drawn) {
                fputc('\n', stdout);
            }
            rc = malformed(c, "\"job\" is missing or has mistyped fields");
            json_decref(resp);
            break;
        }
        if (c->json) {
            char *s = json_dumps(json_object_get(resp, "job"), JSON_COMPACT | JSON_SORT_KEYS);
            if (s && (!last_json || strcmp(s, last_json) != 0)) {
                print_json(resp);
                free(last_json);
                last_json = s;
            } else {
                free(s);
            }
        } else {
            char line[512];
            progress_line(&v, line, sizeof line);
            if (tty) {
                printf("\r%s\033[K", line);
                fflush(stdout);
            } else if (strcmp(line, last) != 0) {
                puts(line);
                fflush(stdout);
            }
            snprintf(last, sizeof last, "%s", line);
        }
        drawn = true;
        if (state_final(v.state)) {
            if (tty) {
                fputc('\n', stdout);
            }
            char id[CELL];
            char err[2048];
            clean(id, sizeof id, v.id);
            if (!strcmp(v.state, "done")) {
                if (!c->json) {
                    printf("job %s done\n", id);
                }
                rc = EXIT_OK;
            } else {
                if (v.error) {
                    fail_msg("job %s %s: %s", id, v.state, clean(err, sizeof err, v.error));
                } else {
                    fail_msg("job %s %s", id, v.state);
                }
                rc = EXIT_FAIL;
            }
            json_decref(resp);
            break;
        }
        json_decref(resp);
        sleep_ms(WATCH_INTERVAL_MS);
    }
    free(last_json);
    conn_close(c);
    return rc;
}

/* Checks a job file is UTF-8 text without NUL bytes; json_stringn validates the UTF-8. */
static int cmd_submit(conn *c, const char *path) {
    uint8_t *data = NULL;
    size_t len = 0;
    fs_diag d = {0};
    int rc = fs_read_file(path, JOB_FILE_MAX, &data, &len, &d);
    if (rc != 0) {
        fail_msg("%s", fs_diag_text(&d, rc));
        return EXIT_FAIL;
    }
    if (memchr(data, '\0', len)) {
        free(data);
        fail_msg("%s: contains NUL bytes; a job file is INI text", path);
        return EXIT_FAIL;
    }
    json_t *text = json_stringn((const char *)data, len);
    free(data);
    if (!text) {
        fail_msg("%s: not valid UTF-8 text; a job file is INI text", path);
        return EXIT_FAIL;
    }
    char resolved[PATH_MAX];
    const char *source = realpath(path, resolved) ? resolved : path;
    json_t *req = json_pack("{s:i, s:s, s:o, s:s}", "v", PROTOCOL_VERSION, "cmd", "submit",
                            "job_ini", text, "source", source);
    json_t *resp;
    rc = call(c, req, &resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    const char *id;
    if (!get_str(resp, "job", &id, false)) {
        json_decref(resp);
        return malformed(c, "no job id in the answer to submit");
    }
    if (c->json) {
        print_json(resp);
    } else {
        char a[CELL];
        puts(clean(a, sizeof a, id));
    }
    json_decref(resp);
    return EXIT_OK;
}

static int cmd_cancel(conn *c, const char *job) {
    json_t *resp;
    int rc = call(c, job_request("cancel", job), &resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    if (c->json) {
        print_json(resp);
    } else {
        char a[CELL];
        printf("job %s canceled\n", clean(a, sizeof a, job));
    }
    json_decref(resp);
    return EXIT_OK;
}

static int cmd_reload(conn *c) {
    json_t *resp;
    int rc = call(c, request("reload"), &resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    const char *msg;
    if (!get_str(resp, "message", &msg, true)) {
        json_decref(resp);
        return malformed(c, "\"message\" is not a string");
    }
    if (c->json) {
        print_json(resp);
    } else {
        char a[2048];
        puts(msg ? clean(a, sizeof a, msg) : "reloaded");
    }
    json_decref(resp);
    return EXIT_OK;
}

/* A result file name is written as DIR/NAME: one plain path component, not hidden. */
static bool name_ok(const char *s) {
    return s[0] != '\0' && s[0] != '.' && !strchr(s, '/') && strlen(s) <= NAME_MAX - 8;
}

/* mkdir -p with mode 0750 for the components it creates. */
static int make_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fail_msg("%s: exists and is not a directory", dir);
            return EXIT_FAIL;
        }
        return EXIT_OK;
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) {
        fail_msg("%s: path too long", dir);
        return EXIT_FAIL;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') {
            continue;
        }
        *p = '\0';
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST) {
            fail_msg("%s: cannot create directory: %s", tmp, strerror(errno));
            return EXIT_FAIL;
        }
        *p = '/';
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST) {
        fail_msg("%s: cannot create directory: %s", tmp, strerror(errno));
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

static int write_at(int dfd, const char *dir, const char *name, const unsigned char *p, size_t n) {
    char tmp[NAME_MAX + 1];
    snprintf(tmp, sizeof tmp, ".%s.part", name);
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
        fail_msg("%s/%s: cannot create: %s", dir, tmp, strerror(errno));
        return EXIT_FAIL;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            fail_msg("%s/%s: write failed: %s", dir, tmp, strerror(errno));
            close(fd);
            unlinkat(dfd, tmp, 0);
            return EXIT_FAIL;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fail_msg("%s/%s: write failed: %s", dir, tmp, strerror(errno));
        unlinkat(dfd, tmp, 0);
        return EXIT_FAIL;
    }
    if (renameat(dfd, tmp, dfd, name) != 0) {
        fail_msg("%s/%s: cannot rename into place: %s", dir, name, strerror(errno));
        unlinkat(dfd, tmp, 0);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

static int cmd_fetch(conn *c, const char *job, const char *dir) {
    json_t *resp;
    int rc = call(c, job_request("fetch", job), &resp);
    if (rc != EXIT_OK) {
        return rc;
    }
    json_t *files = json_object_get(resp, "files");
    if (!json_is_array(files)) {
        json_decref(resp);
        return malformed(c, "\"files\" is not an array");
    }
    size_t n = json_array_size(files);
    char a[CELL];
    /* Check every entry before writing anything. */
    for (size_t i = 0; i < n; i++) {
        json_t *f = json_array_get(files, i);
        const char *name;
        const char *b64;
        if (!json_is_object(f) || !get_str(f, "name", &name, false) ||
            !get_str(f, "base64", &b64, false)) {
            json_decref(resp);
            return malformed(c, "a file entry is not {\"name\": string, \"base64\": string}");
        }
        if (!name_ok(name)) {
            fail_msg("refusing result file name '%s' from the coordinator: not a plain file name",
                     clean(a, sizeof a, name));
            json_decref(resp);
            return EXIT_FAIL;
        }
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(name,
                        json_string_value(json_object_get(json_array_get(files, j), "name")))) {
                fail_msg("the coordinator sent the file '%s' twice", clean(a, sizeof a, name));
                json_decref(resp);
                return EXIT_FAIL;
            }
        }
    }
    if (n == 0) {
        fail_msg("job %s has no result files", clean(a, sizeof a, job));
        json_decref(resp);
        return EXIT_FAIL;
    }
    if ((rc = make_dir(dir)) != EXIT_OK) {
        json_decref(resp);
        return rc;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fail_msg("%s: cannot open directory: %s", dir, strerror(errno));
        json_decref(resp);
        return EXIT_FAIL;
    }
    json_t *summary = json_array();
    for (size_t i = 0; i < n && rc == EXIT_OK; i++) {
        json_t *f = json_array_get(files, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        json_t *b = json_object_get(f, "base64");
        const char *b64 = json_string_value(b);
        size_t blen = json_string_length(b);
        size_t cap = blen / 4 * 3 + 3;
        unsigned char *bin = malloc(cap);
        size_t bin_len = 0;
        if (!bin) {
            fail_msg("out of memory decoding %s (%zu bytes)", name, cap);
            rc = EXIT_FAIL;
            break;
        }
        if (sodium_base642bin(bin, cap, b64, blen, NULL, &bin_len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0) {
            free(bin);
            char m[300];
            snprintf(m, sizeof m, "file '%s' is not valid base64", clean(a, sizeof a, name));
            rc = malformed(c, m);
            break;
        }
        rc = write_at(dfd, dir, name, bin, bin_len);
        free(bin);
        if (rc != EXIT_OK) {
            break;
        }
        char path[PATH_MAX + NAME_MAX + 2];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (c->json) {
            json_array_append_new(summary, json_pack("{s:s, s:s, s:I}", "name", name, "path", path,
                                                     "bytes", (json_int_t)bin_len));
        } else {
            printf("%s  %zu bytes\n", clean(a, sizeof a, path), bin_len);
        }
    }
    if (rc == EXIT_OK && fsync(dfd) != 0) {
        fail_msg("%s: fsync: %s", dir, strerror(errno));
        rc = EXIT_FAIL;
    }
    close(dfd);
    if (rc == EXIT_OK && c->json) {
        json_t *out = json_pack("{s:b, s:O}", "ok", 1, "files", summary);
        print_json(out);
        json_decref(out);
    }
    json_decref(summary);
    json_decref(resp);
    return rc;
}

/* ---- main -------------------------------------------------------------------------------------
 */

typedef struct {
    const char *name;
    int nargs; /* positional arguments after the command */
} command;

static const command COMMANDS[] = {
    {"agents", 0}, {"submit", 1}, {"jobs", 0},  {"status", 1},
    {"watch", 1},  {"cancel", 1}, {"fetch", 1}, {"reload", 0},
};

int main(int argc, char **argv) {
    conn c = {.fd = -1};
    const char *env = getenv("FEDSLIM_CONTROL_SOCKET");
    c.path = env && *env ? env : DEFAULT_SOCKET;
    const char *out_dir = NULL;
    bool wait = false;
    const char *pos[4];
    int npos = 0;
    bool opts_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && a[0] == '-' && a[1] != '\0') {
            const char *val = NULL;
            if (!strcmp(a, "--")) {
                opts_done = true;
            } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                usage(stdout);
                return EXIT_OK;
            } else if (!strcmp(a, "--version")) {
                printf("fedslimctl %s\n", FS_VERSION);
                return EXIT_OK;
            } else if (!strcmp(a, "--json")) {
                c.json = true;
            } else if (!strcmp(a, "--wait")) {
                wait = true;
            } else if (!strncmp(a, "--socket=", 9)) {
                c.path = a + 9;
            } else if (!strncmp(a, "--output=", 9)) {
                out_dir = a + 9;
            } else if (!strcmp(a, "--socket") || !strcmp(a, "-s") || !strcmp(a, "-o") ||
                       !strcmp(a, "--output")) {
                if (i + 1 >= argc) {
                    fail_msg("%s needs a value", a);
                    return EXIT_USAGE;
                }
                val = argv[++i];
                if (a[1] == 'o' || !strcmp(a, "--output")) {
                    out_dir = val;
                } else {
                    c.path = val;
                }
            } else {
                fail_msg("unknown option '%s'", a);
                usage(stderr);
                return EXIT_USAGE;
            }
            continue;
        }
        if (npos == (int)(sizeof pos / sizeof pos[0])) {
            fail_msg("too many arguments");
            usage(stderr);
            return EXIT_USAGE;
        }
        pos[npos++] = a;
    }
    if (npos == 0) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const command *cmd = NULL;
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++) {
        if (!strcmp(pos[0], COMMANDS[i].name)) {
            cmd = &COMMANDS[i];
        }
    }
    if (!cmd) {
        fail_msg("unknown command '%s'", pos[0]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (npos - 1 != cmd->nargs) {
        fail_msg("%s: %s", cmd->name,
                 npos - 1 < cmd->nargs
                     ? (strcmp(cmd->name, "submit") ? "which job? (JOB id missing)"
                                                    : "which job file? (JOB.ini missing)")
                     : "too many arguments");
        return EXIT_USAGE;
    }
    bool is_fetch = !strcmp(cmd->name, "fetch");
    if (is_fetch != (out_dir != NULL)) {
        fail_msg(is_fetch ? "fetch: -o DIR is required" : "-o is only for fetch");
        return EXIT_USAGE;
    }
    if (is_fetch && out_dir[0] == '\0') {
        fail_msg("fetch: -o DIR is empty");
        return EXIT_USAGE;
    }
    if (wait && strcmp(cmd->name, "reload") != 0) {
        fail_msg("--wait is only for reload");
        return EXIT_USAGE;
    }
    if (sodium_init() < 0) {
        fail_msg("libsodium failed to initialise");
        return EXIT_FAIL;
    }
    /* reload always waits for the coordinator's answer: --wait is accepted for ExecReload= lines
     * (the unit file's `fedslimctl reload --wait`) and changes nothing. */
    const char *arg = npos > 1 ? pos[1] : NULL;
    if (!strcmp(cmd->name, "agents")) {
        return cmd_agents(&c);
    }
    if (!strcmp(cmd->name, "submit")) {
        return cmd_submit(&c, arg);
    }
    if (!strcmp(cmd->name, "jobs")) {
        return cmd_jobs(&c);
    }
    if (!strcmp(cmd->name, "status")) {
        return cmd_status(&c, arg);
    }
    if (!strcmp(cmd->name, "watch")) {
        return cmd_watch(&c, arg);
    }
    if (!strcmp(cmd->name, "cancel")) {
        return cmd_cancel(&c, arg);
    }
    if (is_fetch) {
        return cmd_fetch(&c, arg, out_dir);
    }
    return cmd_reload(&c);
}
