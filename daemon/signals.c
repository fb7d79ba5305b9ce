/*
 * signals.c — SIGTERM/SIGINT/SIGHUP as bytes on a self-pipe that the main loop polls
 * (SYSTEMS.md §a2). A handler plus a pipe works whichever thread the kernel picks for a
 * process-directed signal; a signalfd would need the signal blocked in every thread, and pthread
 * OpenBLAS starts unblocked worker threads before main. The pipe is the one piece of global
 * state here: a signal handler has no other way to reach the loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "fs_daemon.h"

static int g_pipe[2] = {-1, -1};
static const int g_signals[] = {SIGTERM, SIGINT, SIGHUP};

static void on_signal(int signo) {
    /* async-signal-safe: write(2) and errno only; a full pipe drops the byte */
    int saved = errno;
    unsigned char b = (unsigned char)signo;
    ssize_t w = write(g_pipe[1], &b, 1);
    (void)w;
    errno = saved;
}

int fs_signals_install(fs_diag *d) {
    if (g_pipe[0] >= 0)
        return 0;
    if (pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        g_pipe[0] = g_pipe[1] = -1;
        return fs_diag_errno(d, FS_ESYS, "signals: cannot create the self-pipe");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof g_signals / sizeof g_signals[0]; i++) {
        if (sigaction(g_signals[i], &sa, NULL) != 0) {
            fs_diag_errno(d, FS_ESYS, "signals: cannot install handler for %s",
                          strsignal(g_signals[i]));
            fs_signals_uninstall();
            return FS_ESYS;
        }
    }
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGPIPE, &ign, NULL) != 0) {
        fs_diag_errno(d, FS_ESYS, "signals: cannot ignore SIGPIPE");
        fs_signals_uninstall();
        return FS_ESYS;
    }
    /* a signal blocked by whoever exec'd us would never reach the handler */
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof g_signals / sizeof g_signals[0]; i++)
        sigaddset(&set, g_signals[i]);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return 0;
}

int fs_signal_fd(void) { return g_pipe[0]; }

int fs_signal_next(void) {
    if (g_pipe[0] < 0)
        return 0;
    unsigned char b;
    for (;;) {
        ssize_t r = read(g_pipe[0], &b, 1);
        if (r == 1)
            return b;
        if (r < 0 && errno == EINTR)
            continue;
        return 0; /* EAGAIN: nothing pending */
    }
}

void fs_signals_uninstall(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof g_signals / sizeof g_signals[0]; i++)
        sigaction(g_signals[i], &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    if (g_pipe[0] >= 0)
        close(g_pipe[0]);
    if (g_pipe[1] >= 0)
        close(g_pipe[1]);
    g_pipe[0] = g_pipe[1] = -1;
}
