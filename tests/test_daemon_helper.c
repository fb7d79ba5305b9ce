/* test_daemon_helper.c — a minimal daemon built the way fedslim-coordinator uses fs_daemon, run by
 * test_daemon_notify under a fake NOTIFY_SOCKET. It links pthread OpenBLAS and runs one sgemm so
 * that the library's worker threads (started before main, signals unblocked) exist while signals
 * arrive: the self-pipe must still deliver them to the loop.
 *
 *   test_daemon_helper CONFIG      (a coordinator configuration file)
 *
 * READY=1 + STATUS=idle threads=N (N = threads in the process), WATCHDOG=1 every WATCHDOG_USEC/2,
 * SIGHUP: RELOADING=1 ..., then READY=1 + STATUS=reloaded: A applied, R need a restart; ... |
 * reload rejected: <error>,
 * SIGTERM/SIGINT: STOPPING=1 + STATUS=stopping, exit 0. Bad CONFIG at start: STATUS=failed: ... +
 * ERRNO=22, exit 1. */
#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_config.h"
#include "fs_daemon.h"

static int count_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

typedef struct {
    int applied;
    int restart;
} changes;

static void on_changed(const fs_cfg_key *k, bool applied, void *ud) {
    changes *c = ud;
    if (applied)
        c->applied++;
    else
        c->restart++;
    fs_log_kv(FS_LOG_NOTICE, applied ? "changed" : "changed; takes effect after a restart", "KEY",
              k->key, "SECTION", k->section, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
        return 2;
    }
    fs_log_setup("fedslim-test-helper", FS_LOG_INFO);
    fs_diag d = {0};
    if (fs_signals_install(&d) != 0) {
        fs_notify_failed(EIO, d.msg);
        return 1;
    }

    /* start OpenBLAS's threads (a product big enough to be split across them) */
    enum { N = 192 };
    float *a = calloc(N * N, sizeof(float));
    float *b = calloc(N * N, sizeof(float));
    float *c = calloc(N * N, sizeof(float));
    if (!a || !b || !c)
        return 1;
    for (int i = 0; i < N * N; i++) {
        a[i] = (float)(i % 7);
        b[i] = (float)(i % 5);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
    float check = c[0];
    free(a);
    free(b);
    free(c);

    fs_coord_config cfg;
    if (fs_coord_config_load(argv[1], &cfg, &d) != 0) {
        fs_log_kv(FS_LOG_ERR, "bad configuration", "REASON", d.msg, NULL);
        fs_notify_failed(EINVAL, d.msg);
        return 1;
    }
    fs_log_set_level(fs_cfg_log_level(cfg.log_level));

    fs_watchdog wd;
    fs_watchdog_init(&wd, fs_now_usec());
    char status[128];
    snprintf(status, sizeof status, "idle threads=%d sgemm=%g", count_threads(), (double)check);
    fs_notify_ready(status);

    int rc = 0;
    bool stopping = false;
    while (!stopping) {
        uint64_t deadlines[1] = {fs_watchdog_deadline(&wd)};
        long timeout = fs_loop_timeout_ms(fs_now_usec(), deadlines, 1);
        struct pollfd p = {.fd = fs_signal_fd(), .events = POLLIN};
        int n = poll(&p, 1, (int)timeout);
        if (n < 0 && errno != EINTR) {
            rc = 1;
            break;
        }
        uint64_t now = fs_now_usec();
        if (fs_watchdog_due(&wd, now))
            fs_watchdog_ping(&wd, now);
        int sig;
        while ((sig = fs_signal_next()) > 0) {
            if (sig == SIGHUP) {
                fs_notify_reloading();
                changes ch = {0, 0};
                if (fs_coord_config_reload(argv[1], &cfg, on_changed, &ch, &d) == 0) {
                    fs_log_set_level(fs_cfg_log_level(cfg.log_level));
                    snprintf(status, sizeof status,
                             "reloaded: %d applied, %d need a restart; threads=%lld log_level=%s",
                             ch.applied, ch.restart, (long long)cfg.threads,
                             fs_cfg_log_levels[cfg.log_level]);
                    fs_notify_ready(status);
                } else {
                    fs_log_kv(FS_LOG_ERR, "reload rejected", "REASON", d.msg, NULL);
                    char msg[sizeof d.msg + 32];
                    snprintf(msg, sizeof msg, "reload rejected: %s", d.msg);
                    fs_notify_ready(msg);
                }
            } else {
                fs_notify_stopping("stopping");
                stopping = true;
            }
        }
    }
    fs_coord_config_free(&cfg);
    fs_signals_uninstall();
    return rc;
}
