/* test_daemon.c — in-process parts of daemon/: journal record building and field names, the
 * JOURNAL_STREAM test, signals through the self-pipe, the loop timeout helper, the watchdog
 * settings and the notify messages (sent to a datagram socket this test binds). The out-of-process
 * daemon behaviour is test_daemon_notify. */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs_daemon.h"

static const char *field(const fs_journal_record *r, int i, char *buf, size_t cap) {
    size_t n = r->iov[i].iov_len < cap - 1 ? r->iov[i].iov_len : cap - 1;
    memcpy(buf, r->iov[i].iov_base, n);
    buf[n] = '\0';
    return buf;
}

static void journal_field_names(void **state) {
    (void)state;
    assert_true(fs_journal_field_name_valid("JOB"));
    assert_true(fs_journal_field_name_valid("ROUND"));
    assert_true(fs_journal_field_name_valid("AGENT_2"));
    assert_true(fs_journal_field_name_valid("A"));
    assert_false(fs_journal_field_name_valid("_PID")); /* trusted fields */
    assert_false(fs_journal_field_name_valid("job"));  /* lower case */
    assert_false(fs_journal_field_name_valid("2ND"));  /* leading digit */
    assert_false(fs_journal_field_name_valid("JOB-ID"));
    assert_false(fs_journal_field_name_valid(""));
    assert_false(fs_journal_field_name_valid(NULL));
    char longname[70];
    memset(longname, 'A', 65);
    longname[65] = '\0';
    assert_false(fs_journal_field_name_valid(longname));
    longname[64] = '\0';
    assert_true(fs_journal_field_name_valid(longname));
}

static void journal_record_fields(void **state) {
    (void)state;
    const char *kv[] = {"JOB", "7f3a",    "ROUND", "12",     "agent",          "site b", "_PID",
                        "1",   "MESSAGE", "x",     "REASON", "round 11 != 12", NULL};
    fs_journal_record r;
    fs_journal_record_build(&r, "fedslim-coordinator", FS_LOG_WARNING, "coordinator/job.c", 88,
                            "on_msg", "protocol error", kv);
    char b[1024];
    assert_int_equal(r.n, 9);
    assert_string_equal(field(&r, 0, b, sizeof b),
                        "MESSAGE=protocol error JOB=7f3a ROUND=12 agent=\"site b\" _PID=1 "
                        "MESSAGE=x REASON=\"round 11 != 12\"");
    assert_string_equal(field(&r, 1, b, sizeof b), "PRIORITY=4");
    assert_string_equal(field(&r, 2, b, sizeof b), "SYSLOG_IDENTIFIER=fedslim-coordinator");
    assert_string_equal(field(&r, 3, b, sizeof b), "CODE_FILE=coordinator/job.c");
    assert_string_equal(field(&r, 4, b, sizeof b), "CODE_LINE=88");
    assert_string_equal(field(&r, 5, b, sizeof b), "CODE_FUNC=on_msg");
    assert_string_equal(field(&r, 6, b, sizeof b), "JOB=7f3a");
    assert_string_equal(field(&r, 7, b, sizeof b), "ROUND=12");
    assert_string_equal(field(&r, 8, b, sizeof b), "REASON=round 11 != 12");
}

static void journal_record_limits(void **state) {
    (void)state;
    /* a huge value and many pairs: the record stays within its arena and field count */
    static char big[20000];
    memset(big, 'v', sizeof big - 1);
    const char *kv[2 * 40 + 1];
    static char names[40][8];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof names[i], "K%d", i);
        kv[2 * i] = names[i];
        kv[2 * i + 1] = i == 3 ? big : "x";
    }
    kv[80] = NULL;
    fs_journal_record r;
    fs_journal_record_build(&r, NULL, 99, NULL, 0, NULL, NULL, kv);
    assert_true(r.n <= FS_JOURNAL_MAX_FIELDS);
    assert_true(r.used <= FS_JOURNAL_BUF);
    size_t total = 0;
    for (int i = 0; i < r.n; i++) {
        assert_true((char *)r.iov[i].iov_base >= r.buf);
        assert_true((char *)r.iov[i].iov_base + r.iov[i].iov_len <= r.buf + sizeof r.buf);
        assert_non_null(memchr(r.iov[i].iov_base, '=', r.iov[i].iov_len));
        total += r.iov[i].iov_len;
    }
    assert_true(total < FS_JOURNAL_BUF);
    char b[64];
    assert_string_equal(field(&r, 1, b, sizeof b), "PRIORITY=7");
    assert_string_equal(field(&r, 2, b, sizeof b), "SYSLOG_IDENTIFIER=fedslim");
    assert_string_equal(field(&r, 3, b, sizeof b), "K0=x"); /* no CODE_* without a location */
}

static void journal_stream_detection(void **state) {
    (void)state;
    char path[] = "/tmp/fs-test-journal-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char val[64];
    snprintf(val, sizeof val, "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
    unsetenv("JOURNAL_STREAM");
    assert_false(fs_log_fd_is_journal(fd));
    setenv("JOURNAL_STREAM", val, 1);
    assert_true(fs_log_fd_is_journal(fd));
    snprintf(val, sizeof val, "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino + 1);
    setenv("JOURNAL_STREAM", val, 1);
    assert_false(fs_log_fd_is_journal(fd));
    setenv("JOURNAL_STREAM", "garbage", 1);
    assert_false(fs_log_fd_is_journal(fd));
    /* fs_log_setup picks the journal only when stderr itself is that stream */
    snprintf(val, sizeof val, "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
    setenv("JOURNAL_STREAM", val, 1);
    assert_false(fs_log_setup("fedslim-test", FS_LOG_INFO));
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    bool journal = fs_log_setup("fedslim-test", FS_LOG_DEBUG);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    assert_true(journal);
    assert_int_equal(fs_log_level(), FS_LOG_DEBUG);
    unsetenv("JOURNAL_STREAM");
    assert_false(fs_log_setup("fedslim-test", FS_LOG_INFO));
    close(fd);
    unlink(path);
}

static void signals_arrive_through_the_pipe(void **state) {
    (void)state;
    fs_diag d = {0};
    assert_int_equal(fs_signal_fd(), -1);
    assert_int_equal(fs_signal_next(), 0);
    assert_int_equal(fs_signals_install(&d), 0);
    assert_int_equal(fs_signals_install(&d), 0); /* idempotent */
    int fd = fs_signal_fd();
    assert_true(fd >= 0);
    assert_int_equal(fs_signal_next(), 0); /* nothing pending, does not block */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
    assert_int_equal(raise(SIGHUP), 0); /* would kill us without the handler */
    assert_int_equal(raise(SIGTERM), 0);
    assert_int_equal(raise(SIGINT), 0);
    assert_int_equal(raise(SIGPIPE), 0); /* ignored */
    assert_int_equal(poll(&p, 1, 1000), 1);
    assert_int_equal(fs_signal_next(), SIGHUP);
    assert_int_equal(fs_signal_next(), SIGTERM);
    assert_int_equal(fs_signal_next(), SIGINT);
    assert_int_equal(fs_signal_next(), 0);
    fs_signals_uninstall();
    assert_int_equal(fs_signal_fd(), -1);
}

static void loop_timeouts(void **state) {
    (void)state;
    uint64_t none[2] = {0, 0};
    assert_int_equal(fs_loop_timeout_ms(1000, none, 2), -1);
    assert_int_equal(fs_loop_timeout_ms(1000, NULL, 0), -1);
    uint64_t dl[3] = {0, 50000, 9000};
    assert_int_equal(fs_loop_timeout_ms(1000, dl, 3), 8); /* 8000 µs */
    assert_int_equal(fs_loop_timeout_ms(8500, dl, 3), 1); /* 500 µs rounds up */
    assert_int_equal(fs_loop_timeout_ms(9000, dl, 3), 0);
    assert_int_equal(fs_loop_timeout_ms(20000, dl, 3), 0);
    uint64_t far[1] = {UINT64_MAX};
    assert_int_equal(fs_loop_timeout_ms(0, far, 1), INT32_MAX);
}

static void watchdog_settings(void **state) {
    (void)state;
    fs_watchdog w;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_false(fs_watchdog_init(&w, 100));
    assert_false(fs_watchdog_due(&w, 1000000));
    assert_int_equal(fs_watchdog_deadline(&w), 0);
    assert_int_equal(fs_watchdog_ping(&w, 100), 0);

    setenv("WATCHDOG_USEC", "400000", 1);
    assert_true(fs_watchdog_init(&w, 100));
    assert_int_equal(w.interval_usec, 200000);
    assert_true(fs_watchdog_due(&w, 100));          /* first ping at once */
    assert_int_equal(fs_watchdog_ping(&w, 100), 0); /* no NOTIFY_SOCKET: not sent */
    assert_int_equal(fs_watchdog_deadline(&w), 200100);
    assert_false(fs_watchdog_due(&w, 200099));
    assert_true(fs_watchdog_due(&w, 200100));

    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1); /* meant for another process */
    assert_false(fs_watchdog_init(&w, 100));
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_true(fs_watchdog_init(&w, 100));
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

static int g_warnings;
static void count_sink(int level, const char *file, int line, const char *func, const char *msg,
                       const char *const *kv, void *ud) {
    (void)file;
    (void)line;
    (void)func;
    (void)msg;
    (void)kv;
    (void)ud;
    if (level == FS_LOG_WARNING)
        g_warnings++;
}

static void recv_text(int s, char *buf, size_t cap) {
    struct pollfd p = {.fd = s, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 2000), 1);
    ssize_t n = recv(s, buf, cap - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
}

static void notify_messages(void **state) {
    (void)state;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char name[64];
    snprintf(name, sizeof name, "fs-test-notify-%d", (int)getpid());
    memcpy(a.sun_path + 1, name, strlen(name)); /* abstract namespace */
    assert_int_equal(bind(s, (struct sockaddr *)&a,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
                     0);
    char env[80];
    snprintf(env, sizeof env, "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);

    char buf[512];
    assert_int_equal(fs_notify_ready("idle, 0/3 agents"), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "READY=1\nSTATUS=idle, 0/3 agents");
    /* a status cannot smuggle in another assignment */
    assert_int_equal(fs_notify_status("job %s round %d/%d", "7f3a\nREADY=1", 12, 40), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "STATUS=job 7f3a READY=1 round 12/40");
    uint64_t before = fs_now_usec();
    assert_int_equal(fs_notify_reloading(), 1);
    recv_text(s, buf, sizeof buf);
    unsigned long long mono = 0;
    assert_int_equal(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%llu\n", &mono), 1);
    assert_true(mono >= before && mono <= fs_now_usec());
    assert_non_null(strstr(buf, "\nSTATUS=reloading configuration"));
    assert_int_equal(fs_notify_stopping("checkpointing round 12"), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "STOPPING=1\nSTATUS=checkpointing round 12");
    assert_int_equal(fs_notify_extend_timeout(30000000), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "EXTEND_TIMEOUT_USEC=30000000");
    assert_int_equal(fs_notify_failed(EACCES, "secret key readable by others"), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "STATUS=failed: secret key readable by others\nERRNO=13");
    fs_watchdog w;
    setenv("WATCHDOG_USEC", "60000000", 1);
    assert_true(fs_watchdog_init(&w, fs_now_usec()));
    assert_int_equal(fs_watchdog_maybe(&w), 1); /* first one is due at once */
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "WATCHDOG=1");
    assert_int_equal(fs_watchdog_maybe(&w), 0); /* next in 30 s */
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(fs_watchdog_trigger(), 1);
    recv_text(s, buf, sizeof buf);
    assert_string_equal(buf, "WATCHDOG=trigger");
    char longs[400];
    memset(longs, 's', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    assert_int_equal(fs_notify_ready(longs), 1);
    recv_text(s, buf, sizeof buf);
    assert_int_equal(strlen(buf), strlen("READY=1\nSTATUS=") + 200);
    close(s);

    /* a NOTIFY_SOCKET nobody listens on: FS_ESYS, and one warning only */
    fs_log_set_sink(count_sink, NULL);
    snprintf(env, sizeof env, "@%s-gone", name);
    setenv("NOTIFY_SOCKET", env, 1);
    assert_int_equal(fs_notify_status("x"), FS_ESYS);
    assert_int_equal(fs_notify_status("y"), FS_ESYS);
    assert_int_equal(g_warnings, 1);
    fs_log_set_sink(NULL, NULL);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(fs_notify_status("z"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(journal_field_names),
        cmocka_unit_test(journal_record_fields),
        cmocka_unit_test(journal_record_limits),
        cmocka_unit_test(journal_stream_detection),
        cmocka_unit_test(signals_arrive_through_the_pipe),
        cmocka_unit_test(loop_timeouts),
        cmocka_unit_test(watchdog_settings),
        cmocka_unit_test(notify_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
