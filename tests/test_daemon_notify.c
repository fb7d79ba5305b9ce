/* test_daemon_notify.c — runs test_daemon_helper (a daemon built on fs_daemon, with pthread
 * OpenBLAS threads running) as a separate process under a fake NOTIFY_SOCKET that this test binds
 * (abstract '@' form and a filesystem path), and asserts the exact sequence of datagrams: READY,
 * WATCHDOG=1 every WATCHDOG_USEC/2 (arrival times from SO_TIMESTAMP), SIGHUP → RELOADING then
 * READY (good and bad new config), SIGTERM/SIGINT → STOPPING and exit 0, a bad config at start →
 * STATUS=failed + ERRNO and exit 1. Signals are also sent straight to an OpenBLAS worker thread
 * (tgkill): with a signalfd design that would kill the process (SYSTEMS.md §a2). */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs_util.h"

#define WATCHDOG_USEC 400000
#define PING_USEC (WATCHDOG_USEC / 2)

typedef struct {
    char text[512];
    uint64_t t_usec; /* kernel arrival time (SO_TIMESTAMP, CLOCK_REALTIME) */
} dgram;

typedef struct {
    int sock;
    char env[128];  /* NOTIFY_SOCKET value */
    char path[100]; /* filesystem socket to unlink, or "" (fits sun_path) */
    uint64_t pings[64];
    int n_pings;
} notify_sink;

static char g_dir[64];
static char g_config[128];

static void open_sink(notify_sink *s, bool abstract) {
    static int counter;
    memset(s, 0, sizeof *s);
    s->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s->sock >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    socklen_t len;
    if (abstract) {
        char name[64];
        snprintf(name, sizeof name, "fs-test-notify-%d-%d", (int)getpid(), counter++);
        memcpy(a.sun_path + 1, name, strlen(name));
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        snprintf(s->env, sizeof s->env, "@%s", name);
    } else {
        snprintf(s->path, sizeof s->path, "%s/notify-%d.sock", g_dir, counter++);
        snprintf(a.sun_path, sizeof a.sun_path, "%s", s->path);
        len = (socklen_t)sizeof a;
        snprintf(s->env, sizeof s->env, "%s", s->path);
    }
    assert_int_equal(bind(s->sock, (struct sockaddr *)&a, len), 0);
    int on = 1;
    assert_int_equal(setsockopt(s->sock, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on), 0);
}

static void close_sink(notify_sink *s) {
    close(s->sock);
    if (s->path[0])
        unlink(s->path);
}

/* Next datagram within timeout_ms; false on timeout. */
static bool next_dgram(notify_sink *s, dgram *out, int timeout_ms) {
    struct pollfd p = {.fd = s->sock, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1)
        return false;
    union {
        char buf[CMSG_SPACE(sizeof(struct timeval))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = out->text, .iov_len = sizeof out->text - 1};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(s->sock, &m, 0);
    assert_true(n >= 0);
    out->text[n] = '\0';
    out->t_usec = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMP) {
            struct timeval tv;
            memcpy(&tv, CMSG_DATA(c), sizeof tv);
            out->t_usec = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
        }
    }
    assert_true(out->t_usec != 0);
    return true;
}

/* Reads datagrams until one that is not WATCHDOG=1 (those are recorded) and checks its prefix. */
static void expect(notify_sink *s, const char *prefix, dgram *out) {
    for (;;) {
        if (!next_dgram(s, out, 10000))
            fail_msg("timed out waiting for '%s'", prefix);
        if (strcmp(out->text, "WATCHDOG=1") == 0) {
            if (s->n_pings < 64)
                s->pings[s->n_pings++] = out->t_usec;
            continue;
        }
        if (strncmp(out->text, prefix, strlen(prefix)) != 0)
            fail_msg("datagram\n  got:  %s\n  want: %s...", out->text, prefix);
        return;
    }
}

static void write_config(const char *extra) {
    FILE *f = fopen(g_config, "w");
    assert_non_null(f);
    fprintf(f, "[coordinator]\nlisten = tcp://127.0.0.1:7400\nsecret_key = /k/c.key\n%s", extra);
    fclose(f);
}

static pid_t spawn(const notify_sink *s, bool watchdog) {
    const char *bin = getenv("FS_BIN_DIR");
    assert_non_null(bin);
    char helper[512];
    snprintf(helper, sizeof helper, "%s/test_daemon_helper", bin);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("NOTIFY_SOCKET", s->env, 1);
        if (watchdog) {
            char v[32];
            setenv("WATCHDOG_USEC", "400000", 1);
            snprintf(v, sizeof v, "%d", (int)getpid());
            setenv("WATCHDOG_PID", v, 1);
        } else {
            unsetenv("WATCHDOG_USEC");
            unsetenv("WATCHDOG_PID");
        }
        unsetenv("JOURNAL_STREAM");
        execl(helper, helper, g_config, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int st = 0;
    for (int i = 0; i < 1000; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        assert_int_equal(r, 0);
        usleep(10000);
        if (i == 999) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("helper did not exit");
        }
    }
    if (!WIFEXITED(st))
        fail_msg("helper ended by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    return WEXITSTATUS(st);
}

/* A thread of `pid` other than its main thread (an OpenBLAS worker), or 0. */
static pid_t worker_thread(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    pid_t tid = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int t = atoi(e->d_name);
        if (t > 0 && t != pid)
            tid = t;
    }
    closedir(d);
    return tid;
}

static void send_to_thread(pid_t pid, pid_t tid, int sig) {
    assert_int_equal(syscall(SYS_tgkill, pid, tid, sig), 0);
}

static void full_lifecycle_abstract_socket(void **state) {
    (void)state;
    notify_sink s;
    open_sink(&s, true);
    write_config("threads = 1\n");
    pid_t pid = spawn(&s, true);
    dgram g;

    expect(&s, "READY=1\nSTATUS=idle threads=", &g);
    int threads = atoi(g.text + strlen("READY=1\nSTATUS=idle threads="));
    /* OpenBLAS workers are running (it starts min(OPENBLAS_NUM_THREADS, cores) - 1 of them) */
    bool have_workers = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    if (have_workers)
        assert_true(threads >= 2);
    assert_non_null(strstr(g.text, "sgemm="));

    /* only watchdog pings while idle, for ~1 s */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (el >= 1000)
            break;
        if (!next_dgram(&s, &g, (int)(1000 - el)))
            break;
        assert_string_equal(g.text, "WATCHDOG=1");
        s.pings[s.n_pings++] = g.t_usec;
    }
    assert_true(s.n_pings >= 4);

    /* SIGHUP to an OpenBLAS thread: reload with a good new file */
    pid_t tid = worker_thread(pid);
    if (have_workers)
        assert_true(tid > 0);
    else if (tid == 0)
        tid = pid; /* one core: no worker thread to aim at, use the main thread */
    write_config("threads = 3\nlog_level = debug\n");
    send_to_thread(pid, tid, SIGHUP);
    expect(&s, "RELOADING=1\nMONOTONIC_USEC=", &g);
    assert_non_null(strstr(g.text, "\nSTATUS=reloading configuration"));
    /* threads needs a restart: the running value stays */
    expect(&s, "READY=1\nSTATUS=reloaded: 1 applied, 1 need a restart; threads=1 log_level=debug",
           &g);

    /* process-directed SIGHUP with a bad file: rejected, the daemon goes on */
    write_config("threads = 0\n");
    assert_int_equal(kill(pid, SIGHUP), 0);
    expect(&s, "RELOADING=1\nMONOTONIC_USEC=", &g);
    expect(&s, "READY=1\nSTATUS=reload rejected: ", &g);
    assert_non_null(strstr(g.text, ":4: [coordinator] threads: 0 is out of range [1, 256]"));

    /* still alive and pinging */
    int before = s.n_pings;
    usleep(PING_USEC + PING_USEC / 2);
    send_to_thread(pid, tid, SIGTERM);
    expect(&s, "STOPPING=1\nSTATUS=stopping", &g);
    assert_true(s.n_pings > before);
    assert_false(next_dgram(&s, &g, 200)); /* nothing after STOPPING */
    assert_int_equal(wait_exit(pid), 0);

    /* pings every WATCHDOG_USEC/2: never early, never as late as the watchdog limit */
    for (int i = 1; i < s.n_pings; i++) {
        uint64_t dt = s.pings[i] - s.pings[i - 1];
        if (dt < PING_USEC - 10000 || dt >= WATCHDOG_USEC)
            fail_msg("ping interval %d: %llu us (want %d..%d)", i, (unsigned long long)dt,
                     PING_USEC, WATCHDOG_USEC);
    }
    close_sink(&s);
}

static void path_socket_sigint_without_watchdog(void **state) {
    (void)state;
    notify_sink s;
    open_sink(&s, false);
    write_config("");
    pid_t pid = spawn(&s, false);
    dgram g;
    expect(&s, "READY=1\nSTATUS=idle threads=", &g);
    assert_false(next_dgram(&s, &g, 300)); /* no WATCHDOG_USEC: no pings */
    assert_int_equal(kill(pid, SIGINT), 0);
    expect(&s, "STOPPING=1\nSTATUS=stopping", &g);
    assert_int_equal(s.n_pings, 0);
    assert_int_equal(wait_exit(pid), 0);
    close_sink(&s);
}

static void bad_config_at_start_fails(void **state) {
    (void)state;
    notify_sink s;
    open_sink(&s, true);
    write_config("threads = many\n");
    pid_t pid = spawn(&s, true);
    dgram g;
    expect(&s, "STATUS=failed: ", &g);
    char want[512];
    snprintf(want, sizeof want,
             "STATUS=failed: %s:4: [coordinator] threads: 'many' is not an integer\nERRNO=22",
             g_config);
    assert_string_equal(g.text, want);
    assert_int_equal(wait_exit(pid), 1);
    close_sink(&s);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fs-test-notify-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_config, sizeof g_config, "%s/coordinator.conf", g_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(g_config);
    return rmdir(g_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_lifecycle_abstract_socket),
        cmocka_unit_test(path_socket_sigint_without_watchdog),
        cmocka_unit_test(bad_config_at_start_fails),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
