/*
 * fuzz_control.c — arbitrary bytes from a client of the control socket (coordinator/control.c):
 * the input is written on a real Unix socket connection, the write side is shut, and the server
 * is serviced until it closes the connection. Framing, the size cap, the JSON envelope checks and
 * the error responses all run on every input; a crash, a leak or a connection the server never
 * closes is a failure.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs_control.h"
#include "fs_log.h"

static fs_control *g_ctl;

static json_t *handler(void *ud, const json_t *req) {
    (void)ud;
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    if (!strcmp(cmd, "null")) {
        return NULL;
    }
    if (!strcmp(cmd, "error")) {
        return fs_control_error("%s", json_string_value(json_object_get(req, "text")) ?: "x");
    }
    return json_pack("{s:b, s:O}", "ok", 1, "echo", (json_t *)req);
}

static void quiet(int level, const char *file, int line, const char *func, const char *msg,
                  const char *const *kv, void *ud) {
    (void)level, (void)file, (void)line, (void)func, (void)msg, (void)kv, (void)ud;
}

static char dir[] = "/tmp/fs-fuzz-control-XXXXXX";

static void cleanup(void) {
    fs_control_close(g_ctl); /* unlinks the socket */
    g_ctl = NULL;
    rmdir(dir);
}

static void init(void) {
    char path[128];
    fs_diag d = {0};
    fs_log_set_sink(quiet, NULL);
    if (!mkdtemp(dir)) {
        abort();
    }
    snprintf(path, sizeof path, "%s/control.sock", dir);
    if (fs_control_open(&g_ctl, path, NULL, &d) != 0) {
        fprintf(stderr, "fuzz_control: %s\n", d.msg);
        abort();
    }
    atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_ctl) {
        init();
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", fs_control_path(g_ctl));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        abort();
    }
    size_t off = 0;
    bool shut = false;
    bool closed = false;
    char buf[65536];
    for (int step = 0; step < 100000 && !closed; step++) {
        if (off < size) {
            ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
            } else if (w < 0 && errno != EAGAIN) {
                off = size; /* the server closed early (protocol error): fine */
            }
        }
        if (off == size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        fs_control_service(g_ctl, handler, NULL);
        for (;;) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                continue;
            }
            if (r == 0 || errno != EAGAIN) {
                closed = true;
            }
            break;
        }
    }
    close(fd);
    if (!closed) {
        fprintf(stderr, "fuzz_control: the server never closed the connection\n");
        abort();
    }
    /* the server notices our close at the next service call; it must not keep clients */
    for (int i = 0; i < 4 && fs_control_client_count(g_ctl) > 0; i++) {
        fs_control_service(g_ctl, handler, NULL);
    }
    if (fs_control_client_count(g_ctl) != 0) {
        fprintf(stderr, "fuzz_control: a closed client is still held\n");
        abort();
    }
    return 0;
}
