/*
 * bench_transfer.c — throughput of moving one 64 MiB tensor from the coordinator to an agent over
 * tcp://127.0.0.1, in one process with two threads (sender thread = coordinator, main thread =
 * agent), compared with what the machine allows:
 *   transfer_curve_64mib   fs_link (CURVE + ZAP, COMPUTE_REQ with the tensor chunked as the
 *                          protocol does, zero-copy send, strict decode + reassembly on receipt);
 *                          reference: crypto_box_1core
 *   transfer_curve_64mib_chunk<K>  the same at other chunk sizes (how the default was chosen)
 *   transfer_plain_64mib   ROUTER -> DEALER without security, same frames; reference: tcp_raw
 *   zmq_curve_only_64mib   the same sockets with CURVE but without fs_link (libzmq's own cost)
 *   tcp_raw_64mib          a loopback TCP socket pair, 1 MiB writes
 *   transfer_curve_64mib_per_cpu   GB moved per CPU-second of the whole process (load-independent);
 *                          reference: crypto_box GB per CPU-second (ideal ratio on loopback: 0.5)
 *   crypto_box_1core       crypto_box_easy_afternm on 1 MiB messages, one core (CurveZMQ's
 *                          per-frame operation)
 *   <name>_cpu_ms_<role>   (transfer_curve_64mib, zmq_curve_only_64mib) CPU ms per 64 MiB of each
 *                          thread: rx_app (receive + decode), rx_io / tx_io (libzmq's I/O threads:
 *                          TCP, CURVE decrypt / encrypt), tx_app (encode + enqueue), other
 *   <name>_busiest_thread_bound  bytes / CPU time of the busiest thread: the throughput if every
 *                          thread had its own core, as with sender and receiver on two hosts (an
 *                          upper bound computed from CPU time, robust to load; not wall-clock);
 *                          reference: crypto_box GB per CPU-second
 *   transfer_curve_64mib_chunk<K>_{rx,tx}_io_cpu_ms  the I/O threads' CPU ms in the sweep
 * Prints one JSON object per line: {"name", "value" (GB/s), "unit", "reference", "ratio"}.
 * Each figure is the best of `reps` runs (default 5): the machine is shared.
 *
 * Usage: bench_transfer [reps] [part]   (part: see main)
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zmq.h>

#include "fs_keys.h"
#include "fs_link.h"
#include "fs_util.h"
#include "fs_wire.h"

#define TOTAL ((size_t)64 << 20)

/* CPU seconds used by every thread of this process (both ends of the transfer and libzmq's I/O
 * threads): a load-independent cost figure next to the wall-clock throughput. */
static double cpu_sec(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds per thread role, from /proc/self/task/<tid>/schedstat (ns on a CPU). Roles: rx_app
 * = the main thread (receives and decodes), tx_app = the sender thread (it stores its tid in
 * g_tx_tid), tx_io / rx_io = libzmq's I/O threads ("ZMQbg/IO/0") of the sender's and the
 * receiver's context: each bench creates the sender's context's first socket before the
 * receiver's, and libzmq starts a context's I/O thread at its first socket, so the lower tid is the
 * sender's. other = reaper, ZAP handler, monitor. */
typedef struct {
    double rx_app, tx_app, tx_io, rx_io, other;
} thread_cpu;

static atomic_int g_tx_tid;

static void thread_cpu_read(thread_cpu *t)
{
    memset(t, 0, sizeof *t);
    struct {
        int tid;
        double sec;
    } io[16];
    size_t n_io = 0;
    DIR *dir = opendir("/proc/self/task");
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        int tid = atoi(e->d_name);
        if (tid <= 0)
            continue;
        char path[96], comm[32] = "";
        unsigned long long ns = 0;
        snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fscanf(f, "%llu", &ns) != 1)
            ns = 0;
        fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", tid);
        if ((f = fopen(path, "r"))) {
            if (!fgets(comm, sizeof comm, f))
                comm[0] = '\0';
            fclose(f);
        }
        double sec = (double)ns / 1e9;
        if (tid == (int)getpid())
            t->rx_app += sec;
        else if (tid == atomic_load(&g_tx_tid))
            t->tx_app += sec;
        else if (!strncmp(comm, "ZMQbg/IO/", 9) && n_io < 16)
            io[n_io++] = (typeof(io[0])){tid, sec};
        else
            t->other += sec;
    }
    if (dir)
        closedir(dir);
    for (size_t i = 1; i < n_io; i++) /* by tid: the sender's context's I/O thread first */
        for (size_t j = i; j > 0 && io[j].tid < io[j - 1].tid; j--) {
            typeof(io[0]) x = io[j];
            io[j] = io[j - 1];
            io[j - 1] = x;
        }
    for (size_t i = 0; i < n_io; i++)
        *(i == 0 ? &t->tx_io : i == 1 ? &t->rx_io : &t->other) += io[i].sec;
}

/* Waits until the sender thread has published its tid (thread_cpu_read needs it). */
static void wait_tx_tid(void)
{
    while (!atomic_load(&g_tx_tid))
        usleep(1000);
}

static thread_cpu thread_cpu_since(const thread_cpu *t0)
{
    thread_cpu t;
    thread_cpu_read(&t);
    t.rx_app -= t0->rx_app;
    t.tx_app -= t0->tx_app;
    t.tx_io -= t0->tx_io;
    t.rx_io -= t0->rx_io;
    t.other -= t0->other;
    /* a thread that exited in between (bench_plain's sender after its last send) took its CPU
     * time with it: count it as 0, not negative */
    double *v[] = {&t.rx_app, &t.tx_app, &t.tx_io, &t.rx_io, &t.other};
    for (size_t i = 0; i < 5; i++)
        if (*v[i] < 0)
            *v[i] = 0;
    return t;
}

/* best GB/s of a run, GB per CPU-second over all runs, CPU per thread role over all runs */
typedef struct {
    double gbs;
    double gb_per_cpu;
    thread_cpu th;
} result;

static void emit(const char *name, double value, const char *unit, double reference)
{
    if (reference > 0)
        printf("{\"name\":\"%s\",\"value\":%.4g,\"unit\":\"%s\",\"reference\":%.4g,\"ratio\":%.4g}\n",
               name, value, unit, reference, value / reference);
    else
        printf("{\"name\":\"%s\",\"value\":%.4g,\"unit\":\"%s\",\"reference\":null,\"ratio\":null}\n",
               name, value, unit);
    fflush(stdout);
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_transfer: %s: %s\n", what, why);
    exit(1);
}

/* ---- crypto_box, one core ------------------------------------------------------------------ */

static result bench_crypto_box(int reps)
{
    size_t len = (size_t)1 << 20;
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t k[crypto_box_BEFORENMBYTES], nonce[crypto_box_NONCEBYTES] = {0};
    crypto_box_keypair(pk, sk);
    if (crypto_box_beforenm(k, pk, sk) != 0)
        die("crypto_box", "beforenm failed");
    uint8_t *m = malloc(len), *c = malloc(len + crypto_box_MACBYTES);
    if (!m || !c)
        die("crypto_box", "out of memory");
    randombytes_buf(m, len);
    double best = 0, c0 = cpu_sec();
    for (int r = 0; r < reps; r++) {
        uint64_t t0 = fs_now_usec();
        for (size_t done = 0; done < TOTAL; done += len) {
            nonce[0]++;
            crypto_box_easy_afternm(c, m, len, nonce, k);
        }
        double gbs = (double)TOTAL / ((double)(fs_now_usec() - t0) / 1e6) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    result res = {best, (double)TOTAL * reps / 1e9 / (cpu_sec() - c0), {0, 0, 0, 0, 0}};
    free(m);
    free(c);
    return res;
}

/* ---- raw TCP ------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    int reps;
} tcp_writer;

static void *tcp_write_main(void *arg)
{
    tcp_writer *w = arg;
    size_t len = (size_t)1 << 20;
    uint8_t *buf = calloc(1, len);
    for (int r = 0; r < w->reps && buf; r++) {
        for (size_t done = 0; done < TOTAL;) {
            ssize_t k = write(w->fd, buf, len);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                break;
            done += (size_t)k;
        }
        char ack;
        if (read(w->fd, &ack, 1) != 1)
            break;
    }
    free(buf);
    return NULL;
}

static double bench_tcp(int reps)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&a, &al))
        die("tcp", strerror(errno));
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof a))
        die("tcp connect", strerror(errno));
    int sfd = accept(ls, NULL, NULL);
    if (sfd < 0)
        die("tcp accept", strerror(errno));
    tcp_writer w = {sfd, reps};
    pthread_t th;
    pthread_create(&th, NULL, tcp_write_main, &w);
    uint8_t *buf = malloc((size_t)1 << 20);
    double best = 0;
    for (int r = 0; r < reps; r++) {
        uint64_t t0 = fs_now_usec();
        for (size_t got = 0; got < TOTAL;) {
            ssize_t k = read(cfd, buf, (size_t)1 << 20);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                die("tcp read", "connection closed");
            got += (size_t)k;
        }
        double gbs = (double)TOTAL / ((double)(fs_now_usec() - t0) / 1e6) / 1e9;
        if (gbs > best)
            best = gbs;
        if (write(cfd, "k", 1) != 1)
            die("tcp", "ack failed");
    }
    pthread_join(th, NULL);
    free(buf);
    close(cfd);
    close(sfd);
    close(ls);
    return best;
}

/* ---- plain ZeroMQ (no security), same framing ---------------------------------------------- */

typedef struct {
    void *router;
    uint8_t *tensor;
    size_t chunk;
    int reps;
} plain_sender;

static void nop_free(void *data, void *hint)
{
    (void)data, (void)hint;
}

static void *plain_send_main(void *arg)
{
    plain_sender *p = arg;
    atomic_store(&g_tx_tid, (int)syscall(SYS_gettid));
    for (int r = 0; r < p->reps; r++) {
        uint8_t rid[256];
        int n = zmq_recv(p->router, rid, sizeof rid, 0);
        char go[8];
        if (n < 0 || zmq_recv(p->router, go, sizeof go, 0) < 0)
            return NULL;
        zmq_send(p->router, rid, (size_t)n, ZMQ_SNDMORE);
        zmq_send(p->router, "header", 6, ZMQ_SNDMORE);
        for (size_t off = 0; off < TOTAL; off += p->chunk) {
            zmq_msg_t m;
            zmq_msg_init_data(&m, p->tensor + off, p->chunk, nop_free, NULL);
            if (zmq_msg_send(&m, p->router, off + p->chunk < TOTAL ? ZMQ_SNDMORE : 0) < 0) {
                zmq_msg_close(&m);
                return NULL;
            }
        }
    }
    return NULL;
}

/* curve: the same sockets with CURVE but none of fs_link (no ZAP handler: libzmq admits any key,
 * acceptable only for this measurement), to separate libzmq's cost from ours. */
static result bench_plain(int reps, size_t chunk, const uint8_t *tensor, bool curve)
{
    void *ctx = zmq_ctx_new(), *ctx2 = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER), *d = zmq_socket(ctx2, ZMQ_DEALER);
    int zero = 0, one = 1;
    if (curve) {
        fs_key spub, ssec, cpub, csec;
        crypto_box_keypair(spub, ssec);
        crypto_box_keypair(cpub, csec);
        zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one);
        zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, ssec, 32);
        zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, spub, 32);
        zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, cpub, 32);
        zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, csec, 32);
    }
    char ep[128];
    size_t eplen = sizeof ep;
    zmq_setsockopt(r, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(r, "tcp://127.0.0.1:*") || zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &eplen) ||
        zmq_connect(d, ep))
        die("plain zmq", zmq_strerror(errno));
    plain_sender ps = {r, (uint8_t *)tensor, chunk, reps};
    pthread_t th;
    atomic_store(&g_tx_tid, 0);
    pthread_create(&th, NULL, plain_send_main, &ps);
    uint8_t *dst = fs_alloc(TOTAL);
    wait_tx_tid();
    thread_cpu th0;
    thread_cpu_read(&th0);
    double best = 0, c0 = cpu_sec();
    for (int i = 0; i < reps; i++) {
        uint64_t t0 = fs_now_usec();
        zmq_send(d, "go", 2, 0);
        size_t got = 0;
        int more = 1;
        bool first = true;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, d, 0) < 0)
                die("plain zmq recv", zmq_strerror(errno));
            more = zmq_msg_more(&m);
            if (!first) { /* as the decoder does: one memcpy into an aligned buffer */
                memcpy(dst + got, zmq_msg_data(&m), zmq_msg_size(&m));
                got += zmq_msg_size(&m);
            }
            first = false;
            zmq_msg_close(&m);
        }
        if (got != TOTAL)
            die("plain zmq", "short transfer");
        double gbs = (double)TOTAL / ((double)(fs_now_usec() - t0) / 1e6) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    result res = {best, (double)TOTAL * reps / 1e9 / (cpu_sec() - c0), thread_cpu_since(&th0)};
    pthread_join(th, NULL);
    fs_free(dst);
    zmq_close(r);
    zmq_close(d);
    zmq_ctx_term(ctx);
    zmq_ctx_term(ctx2);
    return res;
}

/* ---- fs_link with CURVE -------------------------------------------------------------------- */

typedef struct {
    fs_link_server *srv;
    const uint8_t *tensor;
    atomic_int stop;
} curve_sender;

static void nop_release(void *arg)
{
    (void)arg;
}

/* Coordinator loop: every HEARTBEAT is a request for the tensor. The server socket was opened by
 * the main thread and migrates here (pthread_create/join are full memory barriers). */
static void *curve_send_main(void *arg)
{
    curve_sender *c = arg;
    atomic_store(&g_tx_tid, (int)syscall(SYS_gettid));
    fs_wire_tensor t = {.name = "w", .dtype = FS_WIRE_F32, .ndim = 1, .shape = {TOTAL / 4},
                        .data = (void *)c->tensor, .nbytes = TOTAL};
    fs_wire_msg m = {.type = FS_MSG_COMPUTE_REQ, .tensors = &t, .n_tensors = 1};
    strcpy(m.u.compute_req.kind, "bench");
    while (!atomic_load(&c->stop)) {
        fs_link_peer peer;
        fs_wire_msg *got = NULL;
        fs_diag d = {0};
        int rc = fs_link_server_recv(c->srv, &peer, &got, 100, &d);
        if (rc != 0)
            continue;
        bool go = got->type == FS_MSG_HEARTBEAT;
        fs_wire_msg_free(got);
        if (go) {
            while ((rc = fs_link_server_send_zc(c->srv, &peer, &m, nop_release, NULL, &d)) ==
                   FS_EAGAIN)
                ;
            if (rc)
                die("curve send", d.msg);
        }
    }
    return NULL;
}

static result bench_curve(int reps, size_t chunk, const uint8_t *tensor, const char *dir)
{
    fs_key spub, ssec, cpub, csec;
    char z[41], path[512];
    crypto_box_keypair(spub, ssec);
    crypto_box_keypair(cpub, csec);
    fs_key_to_z85(cpub, z);
    snprintf(path, sizeof path, "%s/agents.allow", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        die(path, strerror(errno));
    fprintf(f, "bench-agent %s\n", z);
    fclose(f);
    fs_link_options o = fs_link_options_default();
    o.chunk_bytes = chunk;
    o.linger_ms = 0;
    o.limits.max_chunk_bytes = chunk > o.limits.max_chunk_bytes ? chunk : o.limits.max_chunk_bytes;
    o.limits.max_chunks = TOTAL / chunk + 1;
    o.limits.max_frames = TOTAL / chunk + 2;
    o.limits.max_header_bytes = (size_t)256 << 10; /* small chunks: one descriptor each */
    o.limits.max_objects = 1 << 16;
    void *sctx = zmq_ctx_new(), *cctx = zmq_ctx_new();
    fs_link_server *srv = NULL;
    fs_link_client *cl = NULL;
    fs_diag d = {0};
    if (fs_link_server_open(&srv, sctx, "tcp://127.0.0.1:*", ssec, path, &o, &d) ||
        fs_link_client_open(&cl, cctx, fs_link_server_endpoint(srv), spub, cpub, csec, &o, &d))
        die("curve open", d.msg);
    curve_sender cs = {.srv = srv, .tensor = tensor};
    atomic_init(&cs.stop, 0);
    pthread_t th;
    atomic_store(&g_tx_tid, 0);
    pthread_create(&th, NULL, curve_send_main, &cs);
    wait_tx_tid();
    fs_wire_msg hb = {.type = FS_MSG_HEARTBEAT};
    double best = 0, cpu = 0, check_sec = 0;
    thread_cpu sum = {0, 0, 0, 0, 0}, th0;
    for (int i = 0; i < reps; i++) {
        thread_cpu_read(&th0);
        double c0 = cpu_sec();
        uint64_t t0 = fs_now_usec();
        if (fs_link_client_send(cl, &hb, &d))
            die("curve request", d.msg);
        fs_wire_msg *got = NULL;
        int rc;
        while ((rc = fs_link_client_recv(cl, &got, 30000, &d)) == FS_EAGAIN)
            ;
        if (rc)
            die("curve recv", d.msg);
        if (got->n_tensors != 1 || got->tensors[0].nbytes != TOTAL)
            die("curve", "wrong tensor received");
        double gbs = (double)TOTAL / ((double)(fs_now_usec() - t0) / 1e6) / 1e9;
        if (i == 0) { /* once; its CPU time is taken out of the figures */
            double k0 = cpu_sec();
            if (memcmp(got->tensors[0].data, tensor, TOTAL) != 0)
                die("curve", "tensor bytes differ");
            check_sec = cpu_sec() - k0;
        }
        fs_wire_msg_free(got); /* part of the receiver's cost (unmapping the tensor) */
        cpu += cpu_sec() - c0;
        thread_cpu t = thread_cpu_since(&th0);
        sum.rx_app += t.rx_app;
        sum.tx_app += t.tx_app;
        sum.tx_io += t.tx_io;
        sum.rx_io += t.rx_io;
        sum.other += t.other;
        if (gbs > best)
            best = gbs;
    }
    cpu -= check_sec;
    sum.rx_app -= check_sec;
    atomic_store(&cs.stop, 1);
    pthread_join(th, NULL);
    fs_link_client_close(cl);
    fs_link_server_close(srv);
    zmq_ctx_term(sctx);
    zmq_ctx_term(cctx);
    sodium_memzero(ssec, sizeof ssec);
    sodium_memzero(csec, sizeof csec);
    unlink(path);
    result res = {best, (double)TOTAL * reps / 1e9 / cpu, sum};
    return res;
}

/* CPU milliseconds per 64 MiB transfer of each thread role, and the throughput the busiest thread
 * allows if every thread had a core of its own (as with sender and receiver on separate hosts,
 * each with >= 2 cores): bytes / CPU time of the busiest thread. An upper bound from CPU time,
 * not a measurement of wall-clock time; reference: crypto_box's GB per CPU-second (CPU time on
 * both sides, so the ratio holds up when other work shares the cores). */
static void emit_threads(const char *name, const result *r, int reps, double box_gb_per_cpu)
{
    const char *role[] = {"rx_app", "rx_io", "tx_io", "tx_app", "other"};
    double v[] = {r->th.rx_app, r->th.rx_io, r->th.tx_io, r->th.tx_app, r->th.other};
    char n[96];
    double busiest = 0;
    for (size_t i = 0; i < 5; i++) {
        snprintf(n, sizeof n, "%s_cpu_ms_%s", name, role[i]);
        emit(n, v[i] / reps * 1e3, "ms", 0);
        if (i < 4 && v[i] > busiest)
            busiest = v[i];
    }
    snprintf(n, sizeof n, "%s_busiest_thread_bound", name);
    if (busiest > 0)
        emit(n, (double)TOTAL * reps / 1e9 / busiest, "GB/cpu-s", box_gb_per_cpu);
}

static bool want(const char *list, const char *part)
{
    size_t n = strlen(part);
    for (const char *p = list; p; p = strchr(p, ',')) {
        p += *p == ',';
        if (!strncmp(p, part, n) && (p[n] == ',' || p[n] == '\0'))
            return true;
    }
    return !list;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1)
        reps = 1;
    if (sodium_init() < 0)
        die("libsodium", "init failed");
    char dir[] = "/tmp/fs-bench-transfer-XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", strerror(errno));
    uint8_t *tensor = fs_alloc(TOTAL);
    if (!tensor)
        die("tensor", "out of memory");
    for (size_t i = 0; i < TOTAL; i++)
        tensor[i] = (uint8_t)(i * 2654435761u >> 13);

    /* argv[2] (optional): a comma-separated list of the parts to run ("box", "tcp", "plain",
     * "zmq_curve", "curve", "sweep"), e.g. for a profiler; ratios need "box" in the same run. */
    const char *only = argc > 2 ? argv[2] : NULL;
#define WANT(part) want(only, part)
    result box = {0}, plain = {0}, zcurve = {0}, curve = {0};
    double tcp = 0;
    if (WANT("box"))
        box = bench_crypto_box(reps);
    if (WANT("tcp"))
        tcp = bench_tcp(reps);
    if (WANT("plain"))
        plain = bench_plain(reps, FS_WIRE_CHUNK_DEFAULT, tensor, false);
    if (WANT("zmq_curve"))
        zcurve = bench_plain(reps, FS_WIRE_CHUNK_DEFAULT, tensor, true);
    if (WANT("curve"))
        curve = bench_curve(reps, FS_WIRE_CHUNK_DEFAULT, tensor, dir);
    if (WANT("box"))
        emit("crypto_box_1core", box.gbs, "GB/s", 0);
    if (WANT("tcp"))
        emit("tcp_raw_64mib", tcp, "GB/s", 0);
    if (WANT("plain"))
        emit("transfer_plain_64mib", plain.gbs, "GB/s", tcp);
    if (WANT("zmq_curve")) {
        emit("zmq_curve_only_64mib", zcurve.gbs, "GB/s", box.gbs);
        emit("zmq_curve_only_64mib_per_cpu", zcurve.gb_per_cpu, "GB/cpu-s", box.gb_per_cpu);
        emit_threads("zmq_curve_only_64mib", &zcurve, reps, box.gb_per_cpu);
    }
    if (WANT("curve")) {
        emit("transfer_curve_64mib", curve.gbs, "GB/s", box.gbs);
        /* GB moved per CPU-second of the whole process vs crypto_box's GB per CPU-second. A
         * loopback transfer encrypts AND decrypts every byte on this machine, so 0.5 is the ideal
         * ratio here. */
        emit("transfer_curve_64mib_per_cpu", curve.gb_per_cpu, "GB/cpu-s", box.gb_per_cpu);
        emit_threads("transfer_curve_64mib", &curve, reps, box.gb_per_cpu);
    }
    static const size_t CHUNKS[] = {(size_t)32 << 10, (size_t)64 << 10,  (size_t)128 << 10,
                                    (size_t)256 << 10, (size_t)1 << 20, (size_t)4 << 20};
    for (size_t i = 0; WANT("sweep") && i < sizeof CHUNKS / sizeof CHUNKS[0]; i++) {
        char name[64];
        result r = bench_curve(reps, CHUNKS[i], tensor, dir);
        snprintf(name, sizeof name, "transfer_curve_64mib_chunk%zuk", CHUNKS[i] >> 10);
        emit(name, r.gbs, "GB/s", box.gbs);
        snprintf(name, sizeof name, "transfer_curve_64mib_chunk%zuk_per_cpu", CHUNKS[i] >> 10);
        emit(name, r.gb_per_cpu, "GB/cpu-s", box.gb_per_cpu);
        snprintf(name, sizeof name, "transfer_curve_64mib_chunk%zuk_rx_io_cpu_ms", CHUNKS[i] >> 10);
        emit(name, r.th.rx_io / reps * 1e3, "ms", 0);
        snprintf(name, sizeof name, "transfer_curve_64mib_chunk%zuk_tx_io_cpu_ms", CHUNKS[i] >> 10);
        emit(name, r.th.tx_io / reps * 1e3, "ms", 0);
    }
#undef WANT
    fs_free(tensor);
    rmdir(dir);
    return 0;
}
