/*
 * test_control.c — the control socket server (coordinator/control.c) and the real fedslimctl
 * binary against each other, over real Unix sockets: a server thread runs fs_control_service in a
 * poll loop with a scripted handler; fedslimctl runs as a child process (FS_BIN_DIR) and its
 * stdout, stderr and exit status are checked for every command. Raw-socket cases feed the server
 * garbage, over-long lines, too many connections and clients that never read.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// clang-format off
#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include "fs_control.h"
#include "fs_log.h"

/* ---- fixture: temp dir, server thread ------------------------------------------------------ */

static char g_dir[256];
static char g_sock[300];
static char g_ctl[1024]; /* path of the fedslimctl binary */

typedef struct {
    fs_control *ctl;
    int stop[2];
    pthread_t th;
    pthread_mutex_t mu;
    json_t *requests; /* copies of every request the handler saw */
    int status_calls; /* per test (reset_server) */
    int fail_calls;
} server;

static server g_srv;

static const unsigned char *model_bytes(size_t *n) {
    static unsigned char b[70000];
    for (size_t i = 0; i < sizeof b; i++) {
        b[i] = (unsigned char)((i * 7 + i / 256) & 0xFF);
    }
    *n = sizeof b;
    return b;
}

static json_t *file_entry(const char *name, const void *p, size_t n) {
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(cap);
    assert_non_null(b64);
    sodium_bin2base64(b64, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    json_t *e = json_pack("{s:s, s:s}", "name", name, "base64", b64);
    free(b64);
    return e;
}

static json_t *status_of(const char *id, const char *state, int round, int rounds,
                         const char *error) {
    return json_pack("{s:b, s:{s:s, s:s, s:s, s:s, s:i, s:i, s:f, s:f, s:i, s:i, s:[{s:s, s:s, "
                     "s:n, s:n, s:i}, {s:s, s:s, s:s, s:i, s:i, s:s}], s:s?, s:[s, s]}}",
                     "ok", 1, "job", "id", id, "name", "resnet-edge", "state", state, "phase",
                     "recover", "round", round, "rounds", rounds, "loss", 0.0123, "eta_s", 80.0,
                     "agents_reporting", 2, "agents_total", 3, "agents", "name", "site-a", "state",
                     "active", "left_phase", "left_round", "samples", 1200, "name", "site-b",
                     "state", "left", "left_phase", "recover", "left_round", 80, "samples", 300,
                     "reason", "timed out", "error", error, "files", "model.safetensors",
                     "report.json");
}

static json_t *handler(void *ud, const json_t *req) {
    server *s = ud;
    pthread_mutex_lock(&s->mu);
    json_array_append_new(s->requests, json_deep_copy(req));
    pthread_mutex_unlock(&s->mu);
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *job = json_string_value(json_object_get(req, "job"));
    if (!strcmp(cmd, "agents")) {
        return json_pack("{s:b, s:[{s:s, s:b, s:s, s:i, s:i, s:[i,i,i,i,i,i,i,i,i,i], s:f, s:s}, "
                         "{s:s, s:b, s:n, s:i, s:i, s:[], s:n, s:n}]}",
                         "ok", 1, "agents", "name", "site-a", "connected", 1, "address",
                         "10.0.0.2:41234", "n_samples", 1200, "n_labeled", 600, "classes", 0, 1, 2,
                         3, 4, 5, 6, 7, 8, 9, "last_seen_s", 2.0, "job", "7f3a", "name",
                         "site-c\033[31m", "connected", 0, "address", "n_samples", 0, "n_labeled",
                         0, "classes", "last_seen_s", "job");
    }
    if (!strcmp(cmd, "submit")) {
        const char *ini = json_string_value(json_object_get(req, "job_ini"));
        const char *src = json_string_value(json_object_get(req, "source"));
        if (!ini || !src) {
            return fs_control_error("submit: job_ini and source are required");
        }
        if (strstr(ini, "bogus")) {
            return fs_control_error("%s:3: unknown key 'bogus' in section [job]", src);
        }
        return json_pack("{s:b, s:s}", "ok", 1, "job", "7f3a");
    }
    if (!strcmp(cmd, "jobs")) {
        /* times as reals and a round as an integral real: any JSON number is accepted */
        return json_pack("{s:b, s:[{s:s, s:s, s:s, s:s, s:f, s:i, s:f, s:f, s:n}, {s:s, s:s, "
                         "s:s, s:n, s:i, s:i, s:i, s:n, s:n}]}",
                         "ok", 1, "jobs", "id", "7f3a", "name", "resnet-edge", "state", "running",
                         "phase", "recover", "round", 120.0, "rounds", 300, "submitted",
                         1790000000.25, "started", 1790000060.5, "finished", "id", "81bc", "name",
                         "mlp-small", "state", "queued", "phase", "round", 0, "rounds", 50,
                         "submitted", 1790000100, "started", "finished");
    }
    if (!strcmp(cmd, "status")) {
        if (!job) {
            return fs_control_error("status: which job?");
        }
        if (!strcmp(job, "7f3a")) {
            pthread_mutex_lock(&s->mu);
            int n = ++s->status_calls;
            pthread_mutex_unlock(&s->mu);
            int round = n * 100 > 300 ? 300 : n * 100;
            return status_of("7f3a", n >= 3 ? "done" : "running", round, 300, NULL);
        }
        if (!strcmp(job, "bad1")) {
            pthread_mutex_lock(&s->mu);
            int n = ++s->fail_calls;
            pthread_mutex_unlock(&s->mu);
            return status_of("bad1", n >= 2 ? "failed" : "running", 80, 300,
                             n >= 2 ? "quorum lost: site-b left in recover round 80" : NULL);
        }
        if (!strcmp(job, "mal")) {
            return json_pack("{s:b, s:i}", "ok", 1, "job", 42);
        }
        return fs_control_error("unknown job '%s'", job);
    }
    if (!strcmp(cmd, "cancel")) {
        return job && !strcmp(job, "7f3a") ? fs_control_ok()
                                           : fs_control_error("unknown job '%s'", job ? job : "");
    }
    if (!strcmp(cmd, "fetch")) {
        size_t n;
        const unsigned char *m = model_bytes(&n);
        const char *rep = "{\"accuracy\": 0.91}\n";
        if (job && !strcmp(job, "7f3a")) {
            return json_pack("{s:b, s:[o, o]}", "ok", 1, "files",
                             file_entry("model.safetensors", m, n),
                             file_entry("report.json", rep, strlen(rep)));
        }
        if (job && !strcmp(job, "evil")) {
            return json_pack("{s:b, s:[o, o]}", "ok", 1, "files", file_entry("report.json", "x", 1),
                             file_entry("../escape", "x", 1));
        }
        if (job && !strcmp(job, "dot")) {
            return json_pack("{s:b, s:[o]}", "ok", 1, "files", file_entry(".bashrc", "x", 1));
        }
        if (job && !strcmp(job, "b64")) {
            return json_pack("{s:b, s:[{s:s, s:s}]}", "ok", 1, "files", "name", "a.bin", "base64",
                             "!!!notbase64");
        }
        return fs_control_error("unknown job '%s'", job ? job : "");
    }
    if (!strcmp(cmd, "reload")) {
        return json_pack("{s:b, s:s}", "ok", 1, "message", "reloaded: 3 agents in the allow-list");
    }
    if (!strcmp(cmd, "big")) {
        size_t n = 8u << 20;
        char *b = malloc(n + 1);
        assert_non_null(b);
        memset(b, 'x', n);
        b[n] = '\0';
        json_t *r = json_pack("{s:b, s:s}", "ok", 1, "blob", b);
        free(b);
        return r;
    }
    if (!strcmp(cmd, "null")) {
        return NULL;
    }
    if (!strcmp(cmd, "array")) {
        return json_array();
    }
    return fs_control_error("unknown command '%s'", cmd);
}

static int poll_timeout_ms(const fs_control *c) {
    uint64_t dl = fs_control_deadline(c);
    int timeout = 200;
    if (dl) {
        uint64_t now = fs_now_usec();
        timeout = dl <= now ? 0 : (int)((dl - now + 999) / 1000);
        timeout = timeout > 200 ? 200 : timeout;
    }
    return timeout;
}

/* The coordinator's way: zmq_poll over pollitems with raw fds (the stop pipe stands in for the
 * ROUTER socket). */
static void *server_main_zmq(void *arg) {
    server *s = arg;
    for (;;) {
        zmq_pollitem_t it[1 + FS_CONTROL_MAX_FDS];
        it[0] = (zmq_pollitem_t){.socket = NULL, .fd = s->stop[0], .events = ZMQ_POLLIN};
        int n = 1 + fs_control_fill_zmq(s->ctl, it + 1, FS_CONTROL_MAX_FDS);
        int r = zmq_poll(it, n, poll_timeout_ms(s->ctl));
        if (r < 0 && errno != EINTR) {
            break;
        }
        if (it[0].revents) {
            break;
        }
        fs_control_service(s->ctl, handler, s);
    }
    return NULL;
}

/* A plain poll(2) loop. */
static void *server_main_poll(void *arg) {
    server *s = arg;
    for (;;) {
        struct pollfd pfd[1 + FS_CONTROL_MAX_FDS];
        pfd[0] = (struct pollfd){.fd = s->stop[0], .events = POLLIN};
        int n = 1 + fs_control_fill_pollfd(s->ctl, pfd + 1, FS_CONTROL_MAX_FDS);
        int r = poll(pfd, (nfds_t)n, poll_timeout_ms(s->ctl));
        if (r < 0 && errno != EINTR) {
            break;
        }
        if (pfd[0].revents) {
            break;
        }
        fs_control_service(s->ctl, handler, s);
    }
    return NULL;
}

static void start_server(int stall_ms) {
    fs_diag d = {0};
    memset(&g_srv, 0, sizeof g_srv);
    assert_int_equal(fs_control_open(&g_srv.ctl, g_sock, NULL, &d), 0);
    /* 4 MiB responses at most: the 8 MiB "big" answer exercises the limit */
    fs_control_set_limits(g_srv.ctl, stall_ms, stall_ms > 0 ? 0 : (size_t)4 << 20);
    g_srv.requests = json_array();
    pthread_mutex_init(&g_srv.mu, NULL);
    assert_int_equal(pipe(g_srv.stop), 0);
    /* the stall test runs a poll(2) loop, the others the zmq_poll loop the coordinator uses */
    assert_int_equal(
        pthread_create(&g_srv.th, NULL, stall_ms > 0 ? server_main_poll : server_main_zmq, &g_srv),
        0);
}

static void stop_server(void) {
    assert_int_equal(write(g_srv.stop[1], "x", 1), 1);
    pthread_join(g_srv.th, NULL);
    fs_control_close(g_srv.ctl);
    close(g_srv.stop[0]);
    close(g_srv.stop[1]);
    json_decref(g_srv.requests);
    pthread_mutex_destroy(&g_srv.mu);
    struct stat st;
    assert_int_not_equal(lstat(g_sock, &st), 0); /* close unlinked the socket */
}

static size_t n_requests(void) {
    pthread_mutex_lock(&g_srv.mu);
    size_t n = json_array_size(g_srv.requests);
    pthread_mutex_unlock(&g_srv.mu);
    return n;
}

/* Returns owned copy of request i. */
static json_t *request_at(size_t i) {
    pthread_mutex_lock(&g_srv.mu);
    json_t *r = json_deep_copy(json_array_get(g_srv.requests, i));
    pthread_mutex_unlock(&g_srv.mu);
    return r;
}

static int setup(void **state) {
    (void)state;
    start_server(0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    stop_server();
    return 0;
}

/* ---- running fedslimctl -------------------------------------------------------------------- */

typedef struct {
    int status; /* exit status, or 128+signal */
    char out[65536];
    char err[8192];
} run_result;

static void slurp(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) {
        return;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs fedslimctl with args (NULL-terminated) with the socket in $FEDSLIM_CONTROL_SOCKET unless
 * env_socket is NULL (then the variable is unset); as_uid >= 0 drops to that user first. */
static void run_as(run_result *r, const char *env_socket, long as_uid, long as_gid,
                   const char *const *args) {
    char out_path[400];
    char err_path[400];
    snprintf(out_path, sizeof out_path, "%s/ctl.out", g_dir);
    snprintf(err_path, sizeof err_path, "%s/ctl.err", g_dir);
    const char *argv[32];
    int n = 0;
    argv[n++] = g_ctl;
    for (int i = 0; args[i]; i++) {
        assert_true(n < 31);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) {
            _exit(126);
        }
        if (env_socket) {
            setenv("FEDSLIM_CONTROL_SOCKET", env_socket, 1);
        } else {
            unsetenv("FEDSLIM_CONTROL_SOCKET");
        }
        if (as_uid >= 0) {
            if (setgroups(0, NULL) != 0 || setgid((gid_t)as_gid) != 0 ||
                setuid((uid_t)as_uid) != 0) {
                _exit(125);
            }
        }
        execv(g_ctl, (char *const *)argv);
        _exit(124);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(out_path, r->out, sizeof r->out);
    slurp(err_path, r->err, sizeof r->err);
}

#define RUN(r, ...)                                                                                \
    do {                                                                                           \
        const char *const a_[] = {__VA_ARGS__, NULL};                                              \
        run_as((r), g_sock, -1, -1, a_);                                                           \
    } while (0)

static void expect(const run_result *r, int status, const char *in_out, const char *in_err) {
    if (r->status != status || (in_out && !strstr(r->out, in_out)) ||
        (in_err && !strstr(r->err, in_err))) {
        print_error("exit %d (want %d)\n--- stdout:\n%s\n--- stderr:\n%s\n--- want stdout to "
                    "contain: %s\n--- want stderr to contain: %s\n",
                    r->status, status, r->out, r->err, in_out ? in_out : "-",
                    in_err ? in_err : "-");
        fail();
    }
}

static json_t *parse_out(const run_result *r) {
    json_error_t e;
    json_t *j = json_loads(r->out, 0, &e);
    if (!j) {
        print_error("stdout is not JSON (%s):\n%s\n", e.text, r->out);
        fail();
    }
    return j;
}

/* ---- raw socket helpers -------------------------------------------------------------------- */

static struct sockaddr_un addr_of(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    assert_true(n < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, n + 1);
    return sa;
}

static int raw_connect(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = addr_of(path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void raw_send(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads one line (without '\n') into buf; returns its length, or -1 on EOF before a line. */
static long raw_line(int fd, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 10000), 1); /* the server answers within 10 s */
        char ch;
        ssize_t r = recv(fd, &ch, 1, 0);
        if (r <= 0) {
            return -1;
        }
        if (ch == '\n') {
            buf[n] = '\0';
            return (long)n;
        }
        assert_true(n + 1 < cap);
        buf[n++] = ch;
    }
}

/* True if the peer closes the connection within 10 s (data before the EOF is skipped). */
static bool raw_eof(int fd) {
    char buf[65536];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1) {
            return false;
        }
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET)) {
            return true;
        }
        if (r < 0 && errno != EINTR) {
            return true;
        }
    }
}

static json_t *raw_json_line(int fd) {
    static char buf[1 << 20];
    assert_true(raw_line(fd, buf, sizeof buf) >= 0);
    json_error_t e;
    json_t *j = json_loads(buf, 0, &e);
    assert_non_null(j);
    return j;
}

static void expect_error_line(int fd, const char *contains) {
    json_t *j = raw_json_line(fd);
    assert_true(json_is_false(json_object_get(j, "ok")));
    const char *e = json_string_value(json_object_get(j, "error"));
    assert_non_null(e);
    if (!strstr(e, contains)) {
        print_error("error '%s' does not contain '%s'\n", e, contains);
        fail();
    }
    json_decref(j);
}

/* ---- commands through fedslimctl ------------------------------------------------------------- */

static void agents_table(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "agents");
    expect(&r, 0, "NAME", NULL);
    expect(&r, 0, "site-a", NULL);
    expect(&r, 0, "connected", NULL);
    expect(&r, 0, "10.0.0.2:41234", NULL);
    expect(&r, 0, "0,1,2,3,4,5,6,7,8,9", NULL);
    expect(&r, 0, "2s ago", NULL);
    expect(&r, 0, "offline", NULL);
    expect(&r, 0, "never", NULL);
    assert_null(strchr(r.out, '\033')); /* the escape in site-c's name never reaches the tty */
    expect(&r, 0, "site-c?[31m", NULL);
    /* columns are aligned: "STATE" starts at the same offset as "connected" on the next line */
    const char *l1 = r.out;
    const char *l2 = strchr(l1, '\n') + 1;
    assert_int_equal(strstr(l1, "STATE") - l1, strstr(l2, "connected") - l2);
    json_t *req = request_at(n_requests() - 1);
    assert_int_equal(json_integer_value(json_object_get(req, "v")), 1);
    assert_string_equal(json_string_value(json_object_get(req, "cmd")), "agents");
    json_decref(req);

    RUN(&r, "--json", "agents");
    expect(&r, 0, NULL, NULL);
    json_t *j = parse_out(&r);
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_int_equal(json_array_size(json_object_get(j, "agents")), 2);
    json_decref(j);
}

static void jobs_table(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "jobs");
    expect(&r, 0, "ID", NULL);
    expect(&r, 0, "7f3a", NULL);
    expect(&r, 0, "120/300", NULL);
    expect(&r, 0, "2026-09-2", NULL); /* Unix times shown as dates (1790000000: 2026-09-21) */
    expect(&r, 0, "queued", NULL);
    expect(&r, 0, "mlp-small", NULL);
    const char *l2 = strchr(r.out, '\n') + 1;
    const char *l3 = strchr(l2, '\n') + 1;
    assert_int_equal(strstr(l2, "running") - l2, strstr(l3, "queued") - l3);
    RUN(&r, "jobs", "--json");
    expect(&r, 0, "\"jobs\"", NULL);
    json_decref(parse_out(&r));
}

static void submit_sends_text(void **state) {
    (void)state;
    char ini[400];
    snprintf(ini, sizeof ini, "%s/job.ini", g_dir);
    const char *text = "[job]\nname = resnet-edge\nteacher = /srv/t.safetensors\n";
    FILE *f = fopen(ini, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    run_result r;
    RUN(&r, "submit", ini);
    expect(&r, 0, NULL, NULL);
    assert_string_equal(r.out, "7f3a\n");
    json_t *req = request_at(n_requests() - 1);
    assert_string_equal(json_string_value(json_object_get(req, "cmd")), "submit");
    assert_string_equal(json_string_value(json_object_get(req, "job_ini")), text);
    assert_string_equal(json_string_value(json_object_get(req, "source")), ini);
    json_decref(req);

    /* the coordinator's file:line error is printed, exit 1 */
    f = fopen(ini, "w");
    assert_non_null(f);
    fputs("[job]\nname = x\nbogus = 1\n", f);
    fclose(f);
    RUN(&r, "submit", ini);
    expect(&r, 1, NULL, "job.ini:3: unknown key 'bogus'");
    RUN(&r, "--json", "submit", ini);
    expect(&r, 1, "\"ok\":false", "unknown key");

    /* a missing file is reported by fedslimctl itself; nothing is sent */
    size_t before = n_requests();
    RUN(&r, "submit", "/nonexistent/job.ini");
    expect(&r, 1, NULL, "/nonexistent/job.ini");
    assert_int_equal(n_requests(), before);
    /* too big, not text */
    f = fopen(ini, "w");
    assert_non_null(f);
    for (int i = 0; i < 120000; i++) {
        fputs("# padding\n", f);
    }
    fclose(f);
    RUN(&r, "submit", ini);
    expect(&r, 1, NULL, "limit");
    f = fopen(ini, "w");
    assert_non_null(f);
    fputs("[job]\nname = \xff\xfe\n", f);
    fclose(f);
    RUN(&r, "submit", ini);
    expect(&r, 1, NULL, "UTF-8");
    assert_int_equal(n_requests(), before);
}

static void status_block(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "status", "7f3a");
    expect(&r, 0, "resnet-edge", NULL);
    expect(&r, 0, "running", NULL);
    expect(&r, 0, "round 100/300", NULL);
    expect(&r, 0, "0.0123", NULL);
    expect(&r, 0, "0:01:20", NULL);
    expect(&r, 0, "2/3 reporting", NULL);
    expect(&r, 0, "left in recover round 80: timed out", NULL);
    expect(&r, 0, "model.safetensors", NULL);
    RUN(&r, "--json", "status", "7f3a");
    json_t *j = parse_out(&r);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "job"), "round")), 200);
    json_decref(j);
    json_t *req = request_at(n_requests() - 1);
    assert_string_equal(json_string_value(json_object_get(req, "job")), "7f3a");
    json_decref(req);

    RUN(&r, "status", "nope");
    expect(&r, 1, NULL, "fedslimctl: unknown job 'nope'");
    RUN(&r, "status", "mal");
    expect(&r, 1, NULL, "malformed response");
}

static void watch_plain_until_done(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "watch", "7f3a");
    expect(&r, 0, "recover round 100/300 loss 0.0123 2/3 agents ETA 0:01:20", NULL);
    expect(&r, 0, "[#############.......] recover round 200/300", NULL);
    expect(&r, 0, "[####################] done recover round 300/300", NULL);
    expect(&r, 0, "job 7f3a done", NULL);
    assert_null(strchr(r.out, '\r')); /* not a terminal: plain lines */
    int lines = 0;
    for (const char *p = r.out; *p; p++) {
        lines += *p == '\n';
    }
    assert_int_equal(lines, 4); /* one per change + the final line */
}

static void watch_failed_exits_1(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "watch", "bad1");
    expect(&r, 1, "round 80/300", "job bad1 failed: quorum lost: site-b left in recover round 80");
    RUN(&r, "watch", "nope");
    expect(&r, 1, NULL, "unknown job 'nope'");
}

static void watch_json_lines(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "--json", "watch", "7f3a");
    expect(&r, 0, NULL, NULL);
    int lines = 0;
    char *save = NULL;
    for (char *l = strtok_r(r.out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(l, 0, &e);
        assert_non_null(j);
        assert_true(json_is_true(json_object_get(j, "ok")));
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, 3);
}

/* The coordinator restarts while a watch runs: watch reconnects and follows the job to the end. */
static void watch_survives_restart(void **state) {
    (void)state;
    char out_path[400];
    char err_path[400];
    snprintf(out_path, sizeof out_path, "%s/restart.out", g_dir);
    snprintf(err_path, sizeof err_path, "%s/restart.err", g_dir);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) {
            _exit(126);
        }
        execl(g_ctl, g_ctl, "--socket", g_sock, "watch", "7f3a", (char *)NULL);
        _exit(124);
    }
    for (int i = 0; i < 200; i++) { /* wait for the first status request */
        pthread_mutex_lock(&g_srv.mu);
        int n = g_srv.status_calls;
        pthread_mutex_unlock(&g_srv.mu);
        if (n >= 1) {
            break;
        }
        usleep(20000);
    }
    stop_server(); /* the socket file disappears: ENOENT for the client */
    usleep(1500000);
    start_server(0); /* fresh counters: the job reports 100, 200, 300 again */
    int st = 0;
    waitpid(pid, &st, 0);
    run_result r;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(out_path, r.out, sizeof r.out);
    slurp(err_path, r.err, sizeof r.err);
    expect(&r, 0, "job 7f3a done", NULL);
    assert_string_equal(r.err, "");
}

static void watch_unreachable_fails_at_once(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/nowhere.sock", g_dir);
    run_result r;
    const char *const a[] = {"--socket", path, "watch", "7f3a", NULL};
    double t0 = fs_now_sec();
    run_as(&r, NULL, -1, -1, a);
    expect(&r, 1, NULL, "is fedslim-coordinator running? (No such file or directory)");
    assert_true(fs_now_sec() - t0 < 10.0);
}

/* On a terminal the progress line is rewritten in place. */
static void watch_tty_rewrites_line(void **state) {
    (void)state;
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
        print_message("skipped: no pseudo-terminal available\n");
        skip();
    }
    const char *sname = ptsname(m);
    assert_non_null(sname);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int s = open(sname, O_RDWR | O_NOCTTY);
        if (s < 0 || dup2(s, 1) < 0) {
            _exit(126);
        }
        setenv("FEDSLIM_CONTROL_SOCKET", g_sock, 1);
        execl(g_ctl, g_ctl, "watch", "7f3a", (char *)NULL);
        _exit(124);
    }
    char out[8192];
    size_t n = 0;
    int st = 0;
    bool exited = false;
    for (int i = 0; i < 200 && n + 1 < sizeof out; i++) {
        struct pollfd p = {.fd = m, .events = POLLIN};
        if (poll(&p, 1, 100) == 1) {
            ssize_t rd = read(m, out + n, sizeof out - 1 - n);
            if (rd > 0) {
                n += (size_t)rd;
                continue;
            }
        }
        if (!exited && waitpid(pid, &st, WNOHANG) == pid) {
            exited = true;
        } else if (exited) {
            break;
        }
    }
    if (!exited) {
        waitpid(pid, &st, 0);
    }
    out[n] = '\0';
    close(m);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_non_null(strstr(out, "\r[######..............] recover round 100/300"));
    assert_non_null(strstr(out, "\033[K"));
    assert_non_null(strstr(out, "job 7f3a done"));
}

static void cancel_and_reload(void **state) {
    (void)state;
    run_result r;
    RUN(&r, "cancel", "7f3a");
    expect(&r, 0, "job 7f3a canceled", NULL);
    json_t *req = request_at(n_requests() - 1);
    assert_string_equal(json_string_value(json_object_get(req, "cmd")), "cancel");
    json_decref(req);
    RUN(&r, "cancel", "zzz");
    expect(&r, 1, NULL, "unknown job 'zzz'");
    RUN(&r, "--json", "cancel", "7f3a");
    expect(&r, 0, "{\"ok\":true}", NULL);
    RUN(&r, "reload", "--wait");
    expect(&r, 0, "reloaded: 3 agents in the allow-list", NULL);
    RUN(&r, "--json", "reload");
    expect(&r, 0, "\"message\"", NULL);
}

static void check_file(const char *path, const void *want, size_t n) {
    uint8_t *got = NULL;
    size_t len = 0;
    fs_diag d = {0};
    assert_int_equal(fs_read_file(path, 1 << 20, &got, &len, &d), 0);
    assert_int_equal(len, n);
    assert_memory_equal(got, want, n);
    free(got);
}

static void fetch_writes_files(void **state) {
    (void)state;
    char out_dir[400];
    char path[500];
    snprintf(out_dir, sizeof out_dir, "%s/results/7f3a", g_dir);
    run_result r;
    RUN(&r, "fetch", "7f3a", "-o", out_dir);
    expect(&r, 0, "model.safetensors  70000 bytes", NULL);
    struct stat st;
    assert_int_equal(stat(out_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0750);
    size_t n;
    const unsigned char *m = model_bytes(&n);
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    check_file(path, m, n);
    snprintf(path, sizeof path, "%s/report.json", out_dir);
    check_file(path, "{\"accuracy\": 0.91}\n", 19);

    /* --json: a summary of what was written; -o before the job id works too */
    RUN(&r, "--json", "fetch", "-o", out_dir, "7f3a");
    json_t *j = parse_out(&r);
    json_t *f0 = json_array_get(json_object_get(j, "files"), 0);
    assert_string_equal(json_string_value(json_object_get(f0, "name")), "model.safetensors");
    assert_int_equal(json_integer_value(json_object_get(f0, "bytes")), 70000);
    json_decref(j);
}

static void fetch_refuses_bad_names(void **state) {
    (void)state;
    char out_dir[400];
    char path[500];
    snprintf(out_dir, sizeof out_dir, "%s/evil", g_dir);
    run_result r;
    RUN(&r, "fetch", "evil", "-o", out_dir);
    expect(&r, 1, NULL, "refusing result file name '../escape'");
    struct stat st;
    assert_int_not_equal(stat(out_dir, &st), 0); /* checked before anything is written */
    snprintf(path, sizeof path, "%s/escape", g_dir);
    assert_int_not_equal(stat(path, &st), 0);
    RUN(&r, "fetch", "dot", "-o", out_dir);
    expect(&r, 1, NULL, "'.bashrc'");
    RUN(&r, "fetch", "b64", "-o", out_dir);
    expect(&r, 1, NULL, "not valid base64");
    RUN(&r, "fetch", "nope", "-o", out_dir);
    expect(&r, 1, NULL, "unknown job 'nope'");
}

static void usage_errors_exit_2(void **state) {
    (void)state;
    run_result r;
    size_t before = n_requests();
    RUN(&r, "frobnicate");
    expect(&r, 2, NULL, "unknown command 'frobnicate'");
    RUN(&r, "status");
    expect(&r, 2, NULL, "JOB id missing");
    RUN(&r, "fetch", "7f3a");
    expect(&r, 2, NULL, "-o DIR is required");
    RUN(&r, "jobs", "--bogus");
    expect(&r, 2, NULL, "unknown option '--bogus'");
    RUN(&r, "agents", "extra");
    expect(&r, 2, NULL, "too many arguments");
    RUN(&r, "--help");
    expect(&r, 0, "usage: fedslimctl", NULL);
    RUN(&r, "--version");
    expect(&r, 0, "fedslimctl ", NULL);
    assert_int_equal(n_requests(), before);
}

static void socket_option_and_env(void **state) {
    (void)state;
    run_result r;
    /* --socket beats the environment */
    const char *const a1[] = {"--socket", g_sock, "jobs", NULL};
    run_as(&r, "/nonexistent/x.sock", -1, -1, a1);
    expect(&r, 0, "7f3a", NULL);
    char opt[400];
    snprintf(opt, sizeof opt, "--socket=%s", g_sock);
    const char *const a2[] = {opt, "jobs", NULL};
    run_as(&r, NULL, -1, -1, a2);
    expect(&r, 0, "7f3a", NULL);
    /* the environment beats the default */
    const char *const a3[] = {"jobs", NULL};
    run_as(&r, "/nonexistent/x.sock", -1, -1, a3);
    expect(&r, 1, NULL,
           "fedslimctl: cannot reach the coordinator at /nonexistent/x.sock: is "
           "fedslim-coordinator running? (No such file or directory)");
}

/* ---- unreachable coordinators (no server thread) ------------------------------------------- */

static void missing_and_refused(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/none.sock", g_dir);
    run_result r;
    const char *const a[] = {"--socket", path, "agents", NULL};
    run_as(&r, NULL, -1, -1, a);
    char want[600];
    snprintf(want, sizeof want,
             "fedslimctl: cannot reach the coordinator at %s: is fedslim-coordinator running? "
             "(No such file or directory)\n",
             path);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, want);
    assert_string_equal(r.out, "");

    /* a stale socket file: connection refused */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = addr_of(path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    run_as(&r, NULL, -1, -1, a);
    expect(&r, 1, NULL, "is fedslim-coordinator running? (Connection refused)");
    unlink(path);
}

static void permission_denied(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/perm.sock", g_dir);
    fs_control *c = NULL;
    fs_diag d = {0};
    assert_int_equal(fs_control_open(&c, path, NULL, &d), 0);
    assert_int_equal(chmod(path, 0), 0);
    run_result r;
    const char *const a[] = {"--socket", path, "agents", NULL};
    if (geteuid() == 0) {
        /* root ignores socket permissions: run the client as an unprivileged user instead */
        struct passwd *pw = getpwnam("nobody");
        if (!pw) {
            fs_control_close(c);
            print_message("skipped: running as root and there is no user 'nobody'\n");
            skip();
        }
        run_as(&r, NULL, (long)pw->pw_uid, (long)pw->pw_gid, a);
        if (r.status == 124 || r.status == 125) {
            fs_control_close(c);
            print_message("skipped: running as root and cannot run fedslimctl as nobody (%d)\n",
                          r.status);
            skip();
        }
    } else {
        run_as(&r, NULL, -1, -1, a);
    }
    fs_control_close(c);
    char want[600];
    snprintf(want, sizeof want,
             "fedslimctl: cannot reach the coordinator at %s: permission denied: add yourself to "
             "group fedslim or use sudo\n",
             path);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, want);
}

/* A fake coordinator that answers with bytes of our choosing. */
static void bad_server_answer(const char *answer, const char *want_err) {
    size_t n = answer ? strlen(answer) : 0;
    char path[400];
    snprintf(path, sizeof path, "%s/fake.sock", g_dir);
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = addr_of(path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 4), 0);
    char out_path[400];
    char err_path[400];
    snprintf(out_path, sizeof out_path, "%s/fake.out", g_dir);
    snprintf(err_path, sizeof err_path, "%s/fake.err", g_dir);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) {
            _exit(126);
        }
        execl(g_ctl, g_ctl, "--socket", path, "jobs", (char *)NULL);
        _exit(124);
    }
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 10000), 1);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    char line[4096];
    assert_true(raw_line(fd, line, sizeof line) > 0);
    assert_non_null(strstr(line, "\"cmd\":\"jobs\""));
    if (n) {
        raw_send(fd, answer, n);
    }
    close(fd);
    int st;
    waitpid(pid, &st, 0);
    close(lfd);
    unlink(path);
    run_result r;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(out_path, r.out, sizeof r.out);
    slurp(err_path, r.err, sizeof r.err);
    expect(&r, 1, NULL, want_err);
}

static void malformed_responses(void **state) {
    (void)state;
    bad_server_answer("garbage\n", "malformed response from the coordinator");
    bad_server_answer("[1,2]\n", "not an object with a boolean \"ok\"");
    bad_server_answer("{\"ok\":true,\"jobs\":7}\n", "\"jobs\" is not an array");
    bad_server_answer("{\"ok\":true,\"jobs\":[{\"id\":1}]}\n", "mistyped fields");
    bad_server_answer("{\"ok\":tr", "closed the connection without a complete response");
    bad_server_answer(NULL, "closed the connection without a complete response");
    bad_server_answer("{\"ok\":false}\n", "error without text");
}

/* ---- the server against garbage ------------------------------------------------------------ */

static void server_rejects_non_json_and_closes(void **state) {
    (void)state;
    int fd = raw_connect(g_sock);
    raw_send(fd, "hello there\n", 12);
    expect_error_line(fd, "not valid JSON");
    assert_true(raw_eof(fd));
    close(fd);

    fd = raw_connect(g_sock);
    const char junk[] = "\x01\xff\xfe{\"v\":\x00 1}\n";
    raw_send(fd, junk, sizeof junk - 1);
    expect_error_line(fd, "not valid JSON");
    assert_true(raw_eof(fd));
    close(fd);

    fd = raw_connect(g_sock); /* invalid UTF-8 inside a string */
    raw_send(fd, "{\"v\":1,\"cmd\":\"a\xc3\x28\"}\n", 21);
    expect_error_line(fd, "not valid JSON");
    close(fd);

    fd = raw_connect(g_sock); /* nesting deeper than the parser allows */
    char deep[5000];
    memset(deep, '[', 4999);
    deep[4999] = '\n';
    raw_send(fd, deep, sizeof deep);
    expect_error_line(fd, "not valid JSON");
    close(fd);
}

static void server_envelope_errors_keep_connection(void **state) {
    (void)state;
    int fd = raw_connect(g_sock);
    const char *lines = "[1,2]\n"
                        "{\"cmd\":\"agents\"}\n"
                        "{\"v\":2,\"cmd\":\"agents\"}\n"
                        "{\"v\":1}\r\n"
                        "\n"
                        "{\"v\":1,\"cmd\":\"null\"}\n"
                        "{\"v\":1,\"cmd\":\"array\"}\n"
                        "{\"v\":1,\"cmd\":\"agents\",\"cmd\":\"jobs\"}\n"
                        "{\"v\":1,\"cmd\":\"agents\"}\n";
    raw_send(fd, lines, strlen(lines)); /* pipelined: answered in order */
    expect_error_line(fd, "must be a JSON object");
    expect_error_line(fd, "no integer \"v\"");
    expect_error_line(fd, "unsupported control protocol version 2");
    expect_error_line(fd, "no string \"cmd\"");
    expect_error_line(fd, "internal error: no response to 'null'");
    expect_error_line(fd, "internal error: no response to 'array'");
    expect_error_line(fd, "duplicate"); /* duplicate keys are rejected by the parser: closed */
    assert_true(raw_eof(fd));
    close(fd);

    fd = raw_connect(g_sock);
    raw_send(fd, "{\"v\":1}\n{\"v\":1,\"cmd\":\"agents\"}\n", 31);
    expect_error_line(fd, "no string \"cmd\"");
    json_t *j = raw_json_line(fd);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    /* a request split across writes */
    raw_send(fd, "{\"v\":1,", 7);
    usleep(50000);
    raw_send(fd, "\"cmd\":\"jobs\"}\n", 14);
    j = raw_json_line(fd);
    assert_non_null(json_object_get(j, "jobs"));
    json_decref(j);
    close(fd);
}

/* Thousands of requests in one stream, written while the answers are read: all answered, in order.
 */
static void server_pipelined_flood(void **state) {
    (void)state;
    enum { N = 5000 };
    size_t one = strlen("{\"v\":1,\"cmd\":\"cancel\",\"job\":\"7f3a\"}\n");
    char *blob = malloc(N * one + 1);
    assert_non_null(blob);
    for (int i = 0; i < N; i++) {
        memcpy(blob + (size_t)i * one, "{\"v\":1,\"cmd\":\"cancel\",\"job\":\"7f3a\"}\n", one);
    }
    int fd = raw_connect(g_sock);
    size_t off = 0;
    size_t total = N * one;
    int answers = 0;
    char buf[65536];
    size_t pending = 0; /* bytes of a partial answer line */
    double t0 = fs_now_sec();
    while (answers < N && fs_now_sec() - t0 < 60.0) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (off < total ? POLLOUT : 0)};
        assert_true(poll(&p, 1, 10000) == 1);
        if ((p.revents & POLLOUT) && off < total) {
            ssize_t w = send(fd, blob + off, total - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                off += (size_t)w;
            }
        }
        if (p.revents & POLLIN) {
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            assert_true(r > 0);
            for (ssize_t i = 0; i < r; i++) {
                pending++;
                if (buf[i] == '\n') {
                    assert_int_equal(pending, strlen("{\"ok\":true}\n"));
                    pending = 0;
                    answers++;
                }
            }
        }
    }
    close(fd);
    free(blob);
    assert_int_equal(answers, N);
    assert_int_equal(n_requests(), N);
}

static void server_response_limit(void **state) {
    (void)state;
    int fd = raw_connect(g_sock);
    raw_send(fd, "{\"v\":1,\"cmd\":\"big\"}\n{\"v\":1,\"cmd\":\"jobs\"}\n", 41);
    expect_error_line(fd, "response to 'big' is too large (more than 4194304 bytes)");
    json_t *j = raw_json_line(fd); /* the connection goes on */
    assert_non_null(json_object_get(j, "jobs"));
    json_decref(j);
    close(fd);
}

static void server_over_long_line(void **state) {
    (void)state;
    int fd = raw_connect(g_sock);
    size_t n = (size_t)FS_CONTROL_MAX_REQUEST + 4096;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    /* the server stops reading after the limit; sending the rest may fail, which is fine */
    size_t off = 0;
    while (off < n) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 10000) != 1 || (p.revents & (POLLERR | POLLHUP))) {
            break;
        }
        ssize_t w = send(fd, big + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w <= 0) {
            if (errno == EAGAIN) {
                continue;
            }
            break;
        }
        off += (size_t)w;
        /* stop pushing once the error answer is there */
        struct pollfd q = {.fd = fd, .events = POLLIN};
        if (poll(&q, 1, 0) == 1) {
            break;
        }
    }
    free(big);
    expect_error_line(fd, "request line longer than 16777216 bytes");
    assert_true(raw_eof(fd));
    close(fd);
    /* others are still served */
    run_result r;
    RUN(&r, "jobs");
    expect(&r, 0, "7f3a", NULL);
}

static void server_too_many_connections(void **state) {
    (void)state;
    int fds[FS_CONTROL_MAX_CLIENTS + 8];
    int n = FS_CONTROL_MAX_CLIENTS + 8;
    for (int i = 0; i < n; i++) {
        fds[i] = raw_connect(g_sock);
    }
    /* the extra ones are told why and closed; the first 32 are served */
    for (int i = FS_CONTROL_MAX_CLIENTS; i < n; i++) {
        expect_error_line(fds[i], "too many control connections");
        assert_true(raw_eof(fds[i]));
    }
    raw_send(fds[0], "{\"v\":1,\"cmd\":\"jobs\"}\n", 21);
    json_t *j = raw_json_line(fds[0]);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    for (int i = 0; i < n; i++) {
        close(fds[i]);
    }
    run_result r;
    for (int attempt = 0; attempt < 20; attempt++) {
        RUN(&r, "jobs");
        if (r.status == 0) {
            break;
        }
        usleep(100000);
    }
    expect(&r, 0, "7f3a", NULL);
}

static void server_survives_vanishing_clients(void **state) {
    (void)state;
    for (int i = 0; i < 20; i++) {
        int fd = raw_connect(g_sock);
        raw_send(fd, "{\"v\":1,\"cmd\":\"big\"}\n", 20);
        close(fd); /* never reads the 8 MiB answer */
        fd = raw_connect(g_sock);
        raw_send(fd, "{\"v\":1,\"cmd\":\"jo", 16);
        close(fd); /* half a request, then gone */
    }
    run_result r;
    RUN(&r, "agents");
    expect(&r, 0, "site-a", NULL);
}

static int setup_stall(void **state) {
    (void)state;
    start_server(300);
    return 0;
}

static void server_drops_client_that_does_not_read(void **state) {
    (void)state;
    int fd = raw_connect(g_sock);
    raw_send(fd, "{\"v\":1,\"cmd\":\"big\"}\n{\"v\":1,\"cmd\":\"big\"}\n", 40);
    /* meanwhile the server keeps serving others */
    run_result r;
    RUN(&r, "jobs");
    expect(&r, 0, "7f3a", NULL);
    usleep(800000); /* past the 300 ms stall limit */
    size_t got = 0;
    bool eof = false;
    char buf[65536];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) != 1) {
            break;
        }
        ssize_t rd = recv(fd, buf, sizeof buf, 0);
        if (rd <= 0) {
            eof = true;
            break;
        }
        got += (size_t)rd;
    }
    close(fd);
    assert_true(eof);
    assert_true(got < (8u << 20)); /* dropped before the first answer was complete */
    RUN(&r, "agents");
    expect(&r, 0, "site-a", NULL);
}

/* ---- fs_control_open ------------------------------------------------------------------------ */

static void open_mode_stale_live_and_foreign_files(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/open.sock", g_dir);
    fs_diag d = {0};
    fs_control *c = NULL;

    /* a stale socket (nobody listening) is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = addr_of(path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    mode_t old = umask(0077); /* as under the unit's UMask= */
    assert_int_equal(fs_control_open(&c, path, "fedslim-no-such-group", &d), 0);
    umask(old);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0660);
    assert_int_equal(st.st_gid, getegid()); /* unknown group: keeps the process's group */
    assert_string_equal(fs_control_path(c), path);

    /* a live one is not touched */
    fs_control *c2 = (fs_control *)1;
    assert_int_equal(fs_control_open(&c2, path, NULL, &d), FS_EINVAL);
    assert_null(c2);
    assert_non_null(strstr(d.msg, "another process is listening"));
    assert_non_null(strstr(d.msg, path));
    assert_int_equal(lstat(path, &st), 0);
    fs_control_close(c);
    assert_int_not_equal(lstat(path, &st), 0);

    /* a regular file is never removed */
    FILE *f = fopen(path, "w");
    fputs("keep me", f);
    fclose(f);
    assert_int_equal(fs_control_open(&c, path, NULL, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "not a socket"));
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(path);

    /* close unlinks only its own socket file */
    assert_int_equal(fs_control_open(&c, path, NULL, &d), 0);
    unlink(path);
    f = fopen(path, "w");
    fclose(f);
    fs_control_close(c);
    assert_int_equal(lstat(path, &st), 0);
    unlink(path);

    /* bad paths */
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    assert_int_equal(fs_control_open(&c, longp, NULL, &d), FS_EINVAL);
    assert_non_null(strstr(d.msg, "too long"));
    assert_int_equal(fs_control_open(&c, "/nonexistent-dir/x.sock", NULL, &d), FS_ESYS);
    assert_non_null(strstr(d.msg, "/nonexistent-dir/x.sock"));
    fs_control_close(NULL);
}

static void open_group(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/grp.sock", g_dir);
    fs_diag d = {0};
    fs_control *c = NULL;
    struct group *g = getgrnam("nogroup");
    if (!g || g->gr_gid == getegid()) {
        print_message("skipped: no group 'nogroup' to test with\n");
        skip();
    }
    gid_t want = g->gr_gid;
    assert_int_equal(fs_control_open(&c, path, "nogroup", &d), 0);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    if (geteuid() == 0) {
        assert_int_equal(st.st_gid, want); /* root may chown */
    } else {
        assert_int_equal(st.st_gid, getegid()); /* not permitted: warning, socket still usable */
    }
    assert_int_equal(st.st_mode & 0777, 0660);
    fs_control_close(c);
}

static void error_helper(void **state) {
    (void)state;
    json_t *e = fs_control_error("line\none %s", "\x01two");
    assert_true(json_is_false(json_object_get(e, "ok")));
    assert_string_equal(json_string_value(json_object_get(e, "error")), "line one  two");
    json_decref(e);
    e = fs_control_error("bad utf8 \xff\xfe here");
    assert_string_equal(json_string_value(json_object_get(e, "error")), "bad utf8 ?? here");
    json_decref(e);
    char big[3000];
    memset(big, 'x', sizeof big - 3);
    big[996] = '\xc3';
    big[997] = '\xa9';
    big[998] = '\xc3';
    big[999] = '\xa9';
    big[sizeof big - 3] = '\0';
    e = fs_control_error("%s", big);
    const char *s = json_string_value(json_object_get(e, "error"));
    assert_non_null(s);
    assert_true(strlen(s) <= 1000);
    json_decref(e);
    e = fs_control_ok();
    assert_true(json_is_true(json_object_get(e, "ok")));
    json_decref(e);
}

static void quiet_sink(int level, const char *file, int line, const char *func, const char *msg,
                       const char *const *kv, void *ud) {
    (void)file;
    (void)line;
    (void)func;
    (void)ud;
    if (level <= FS_LOG_WARNING) {
        fprintf(stderr, "[server log] %s", msg);
        for (int i = 0; kv && kv[i] && kv[i + 1]; i += 2) {
            fprintf(stderr, " %s=%s", kv[i], kv[i + 1]);
        }
        fputc('\n', stderr);
    }
}

int main(void) {
    const char *bin = getenv("FS_BIN_DIR");
    if (!bin) {
        fprintf(stderr, "test_control: FS_BIN_DIR is not set (run through ctest)\n");
        return 1;
    }
    snprintf(g_ctl, sizeof g_ctl, "%s/fedslimctl", bin);
    if (access(g_ctl, X_OK) != 0) {
        fprintf(stderr, "test_control: %s: %s\n", g_ctl, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) {
        return 1;
    }
    fs_log_set_sink(quiet_sink, NULL);
    snprintf(g_dir, sizeof g_dir, "/tmp/fs-control-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    chmod(g_dir, 0711); /* the permission test runs the client as another user */
    snprintf(g_sock, sizeof g_sock, "%s/control.sock", g_dir);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(agents_table, setup, teardown),
        cmocka_unit_test_setup_teardown(jobs_table, setup, teardown),
        cmocka_unit_test_setup_teardown(submit_sends_text, setup, teardown),
        cmocka_unit_test_setup_teardown(status_block, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_plain_until_done, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_failed_exits_1, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_json_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_tty_rewrites_line, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_survives_restart, setup, teardown),
        cmocka_unit_test(watch_unreachable_fails_at_once),
        cmocka_unit_test_setup_teardown(cancel_and_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_writes_files, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_refuses_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(usage_errors_exit_2, setup, teardown),
        cmocka_unit_test_setup_teardown(socket_option_and_env, setup, teardown),
        cmocka_unit_test(missing_and_refused),
        cmocka_unit_test(permission_denied),
        cmocka_unit_test(malformed_responses),
        cmocka_unit_test_setup_teardown(server_rejects_non_json_and_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(server_envelope_errors_keep_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(server_pipelined_flood, setup, teardown),
        cmocka_unit_test_setup_teardown(server_response_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(server_over_long_line, setup, teardown),
        cmocka_unit_test_setup_teardown(server_too_many_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(server_survives_vanishing_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(server_drops_client_that_does_not_read, setup_stall,
                                        teardown),
        cmocka_unit_test(open_mode_stale_live_and_foreign_files),
        cmocka_unit_test(open_group),
        cmocka_unit_test(error_helper),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_control: could not remove %s\n", g_dir);
    }
    return failed;
}
