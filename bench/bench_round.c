/*
 * bench_round.c — the coordinator's overhead per FedSGD round and its peak memory (issue 5), with
 * every agent idle: N agent processes (real fs_link clients over CURVE on loopback) answer each
 * request at once with a model-sized gradient, without computing. The coordinator side is this
 * process: a real fs_link server (CURVE, ZAP allow-list, the coordinator's receive HWM), the real
 * federated source (fs_fed_source: parameter digests, the broadcast from one shared copy,
 * fs_fed_feed adding whole replies or streamed parts into the double sums, the float gradient at
 * the end) driven through fs_source_loss exactly as the recovery loop drives it. Only the small
 * transport loop (send, receive, dispatch) stands in for coordinator/job.c's exchange.
 *
 * A round = the weights changed since the last round (as after an optimizer step, so the request
 * carries every parameter) + broadcast + every agent's gradient summed. Not measured: compute at
 * the agents, the optimizer step, checkpoints.
 *
 *   bench_round SIZE N [ROUNDS] [--whole]     SIZE: 0.27m (ResNet-20) | 11.7m (ResNet-18)
 *       prints JSON lines round_overhead_SIZE_N (s) and coordinator_rss_SIZE_N (bytes);
 *       --whole: replies as one COMPUTE_REPLY each (the design before streaming), for comparison
 *   bench_round --agent ENDPOINT SERVER_PUB PUB SEC NAME    (internal: one agent process)
 * Keys are throwaway ones made per run (they appear on the agents' command lines).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "fs_fed.h"
#include "fs_keys.h"
#include "fs_link.h"
#include "fs_model.h"
#include "fs_source.h"

#define CHUNK ((size_t)1 << 20)       /* the daemons' default [limits] chunk_size */
#define STREAM_PART ((size_t)256 << 10) /* the job file's default stream_part */
#define MAX_AGENTS 64
#define SAMPLES 100                   /* per agent (only the counts travel) */

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_round: %s: %s\n", what, why);
    exit(1);
}

static fs_link_options link_options(void)
{
    fs_link_options o = fs_link_options_default();
    o.chunk_bytes = CHUNK;
    o.linger_ms = 0;
    return o;
}

/* ---- agent process ------------------------------------------------------------------------- */

typedef struct {
    char name[FS_WIRE_TENSOR_NAME_MAX + 1];
    uint32_t ndim;
    uint64_t shape[FS_WIRE_MAX_DIMS];
    size_t numel, off;
} pinfo;

static int agent_main(const char *endpoint, const char *spub_z, const char *pub_z,
                      const char *sec_z, const char *name)
{
    fs_key spub, pub, sec;
    if (fs_key_from_z85(spub_z, strlen(spub_z), spub) || fs_key_from_z85(pub_z, strlen(pub_z), pub) ||
        fs_key_from_z85(sec_z, strlen(sec_z), sec))
        die("agent", "bad keys");
    void *zctx = zmq_ctx_new();
    fs_link_options o = link_options();
    fs_link_client *c = NULL;
    fs_diag d = {0};
    if (fs_link_client_open(&c, zctx, endpoint, spub, pub, sec, &o, &d))
        die("agent: link", d.msg);
    sodium_memzero(sec, sizeof sec);
    fs_wire_msg h;
    memset(&h, 0, sizeof h);
    h.type = FS_MSG_HELLO;
    h.u.hello.proto_min = h.u.hello.proto_max = FS_WIRE_PROTO;
    snprintf(h.u.hello.version, sizeof h.u.hello.version, "bench_round");
    snprintf(h.u.hello.site, sizeof h.u.hello.site, "%s", name);
    h.u.hello.n_samples = SAMPLES;
    if (fs_link_client_send(c, &h, &d))
        die("agent: hello", d.msg);
    pinfo *ps = NULL;
    size_t np = 0, floats = 0;
    float *grad = NULL;
    fs_wire_tensor *out = NULL;
    char (*names)[FS_WIRE_TENSOR_NAME_MAX + 1] = NULL;
    for (;;) {
        fs_wire_msg *m = NULL;
        int rc = fs_link_client_recv(c, &m, 60000, &d);
        if (rc == FS_ETIMEDOUT)
            die("agent", "no request for 60 s");
        if (rc)
            continue;
        if (m->type == FS_MSG_BYE) {
            fs_wire_msg_free(m);
            break;
        }
        if (m->type != FS_MSG_COMPUTE_REQ) {
            fs_wire_msg_free(m);
            continue;
        }
        fs_wire_msg r;
        memset(&r, 0, sizeof r);
        r.type = FS_MSG_COMPUTE_REPLY;
        snprintf(r.job, sizeof r.job, "%s", m->job);
        r.round = m->round;
        r.step = m->step;
        r.u.compute_reply.count = SAMPLES;
        fs_kv loss = {.key = "loss_sum", .kind = FS_KV_FLOAT, .f = 1.0};
        if (!strcmp(m->u.compute_req.kind, "student")) {
            /* the parameters, in the student's order: the gradient reply's shapes */
            free(ps);
            free(grad);
            free(out);
            free(names);
            ps = calloc(m->n_tensors, sizeof *ps);
            out = calloc(m->n_tensors, sizeof *out);
            names = calloc(m->n_tensors, sizeof *names);
            if (!ps || !out || !names)
                die("agent", "out of memory");
            np = floats = 0;
            for (size_t i = 0; i < m->n_tensors; i++) {
                const fs_wire_tensor *t = &m->tensors[i];
                if (t->dtype != FS_WIRE_F32)
                    continue;   /* arch.json, adaptors */
                pinfo *p = &ps[np++];
                snprintf(p->name, sizeof p->name, "%s", t->name);
                p->ndim = t->ndim;
                memcpy(p->shape, t->shape, sizeof p->shape);
                p->numel = t->nbytes / sizeof(float);
                p->off = floats;
                floats += p->numel;
            }
            grad = malloc((floats ? floats : 1) * sizeof(float));
            if (!grad)
                die("agent", "out of memory");
            for (size_t k = 0; k < floats; k++)
                grad[k] = (float)(k % 1000) * 1e-3f;
        } else if (!strcmp(m->u.compute_req.kind, "loss")) {
            r.u.compute_reply.scalars.items = &loss;
            r.u.compute_reply.scalars.n = 1;
            const fs_wire_tensor *tr = NULL;
            for (size_t i = 0; i < m->n_tensors; i++)
                if (!strcmp(m->tensors[i].name, "trainable"))
                    tr = &m->tensors[i];
            size_t n = 0;
            for (size_t k = 0; tr && k < tr->nbytes / sizeof(int32_t); k++) {
                int32_t ix = ((const int32_t *)tr->data)[k];
                if (ix < 0 || (size_t)ix >= np)
                    die("agent", "trainable index out of range");
                const pinfo *p = &ps[ix];
                snprintf(names[n], sizeof names[n], "grad/%.120s", p->name);
                memset(&out[n], 0, sizeof out[n]);
                snprintf(out[n].name, sizeof out[n].name, "%s", names[n]);
                out[n].dtype = FS_WIRE_F32;
                out[n].ndim = p->ndim;
                memcpy(out[n].shape, p->shape, sizeof out[n].shape);
                out[n].data = grad + p->off;
                out[n].nbytes = p->numel * sizeof(float);
                n++;
            }
            r.tensors = out;
            r.n_tensors = n;
        }
        /* the agent daemon's own sending path: whole, or in parts when asked */
        if ((rc = fs_fed_send_reply(c, m, &r, CHUNK, &d)) != 0)
            die("agent: reply", d.msg);
        fs_wire_msg_free(m);
    }
    free(ps);
    free(grad);
    free(out);
    free(names);
    fs_link_client_close(c);
    zmq_ctx_term(zctx);
    return 0;
}

/* ---- coordinator side ---------------------------------------------------------------------- */

typedef struct {
    fs_link_server *link;
    int n;
    fs_link_peer peers[MAX_AGENTS];
    fs_fed_inflight fl[MAX_AGENTS];
    uint32_t round;
} bench_tr;

static int find_peer(const bench_tr *b, const char *name)
{
    for (int i = 0; i < b->n; i++)
        if (!strcmp(b->peers[i].name, name))
            return i;
    return -1;
}

/* coordinator/job.c's exchange without the job bookkeeping: broadcast, then every reply through
 * fs_fed_feed until each agent's is complete. */
static int tr_exchange(void *ud, fs_wire_msg *req, fs_fed_reply_fn fn, void *cb_ud, fs_diag *d)
{
    bench_tr *b = ud;
    b->round++;
    fs_link_server_expect_all(b->link, "bench", b->round, 0);
    snprintf(req->job, sizeof req->job, "bench");
    req->round = b->round;
    req->step = 0;
    int rcs[MAX_AGENTS], done[MAX_AGENTS] = {0}, pending = b->n;
    for (int i = 0; i < b->n; i++)
        fs_fed_inflight_reset(&b->fl[i]);
    int rc = fs_fed_broadcast(b->link, b->peers, (size_t)b->n, req, rcs, d);
    if (rc)
        return rc;
    for (int i = 0; i < b->n; i++)
        if (rcs[i])
            return fs_diag_set(d, rcs[i], "send to %s failed", b->peers[i].name);
    uint64_t deadline = fs_now_usec() + 300 * 1000000ull;
    while (pending > 0) {
        uint64_t now = fs_now_usec();
        if (now >= deadline)
            return fs_diag_set(d, FS_ETIMEDOUT, "round %u: %d agents did not answer", b->round,
                               pending);
        fs_link_peer peer;
        fs_wire_msg *m = NULL;
        fs_diag e = {0};
        rc = fs_link_server_recv(b->link, &peer, &m, (int)((deadline - now) / 1000 + 1), &e);
        if (rc == FS_ETIMEDOUT || rc == FS_EAGAIN)
            continue;
        if (rc)
            return fs_diag_set(d, rc, "receive: %s", e.msg);
        int i = find_peer(b, peer.name);
        if (i >= 0 && !done[i] &&
            (m->type == FS_MSG_COMPUTE_REPLY || m->type == FS_MSG_COMPUTE_HEAD ||
             m->type == FS_MSG_COMPUTE_PART)) {
            rc = fs_fed_feed(&b->fl[i], peer.name, m, fn, cb_ud, (uint64_t)1 << 36, &e);
            if (rc < 0) {
                fs_wire_msg_free(m);
                return fs_diag_set(d, rc, "%s", e.msg);
            }
            if (rc == 0) {
                done[i] = 1;
                pending--;
            }
        }
        fs_wire_msg_free(m);   /* a part is freed as soon as it was added */
    }
    return 0;
}

static int64_t tr_total(void *ud)
{
    bench_tr *b = ud;
    return (int64_t)b->n * SAMPLES;
}

static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':')
            v = strtol(line + kl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The memory work a round cannot avoid, for reference: the request copied once per agent and each
 * agent's gradient added into the double sums (best of 3). */
static double reference_seconds(size_t floats, int n)
{
    float *src = malloc(floats * sizeof(float)), *dst = malloc(floats * sizeof(float));
    double *acc = calloc(floats, sizeof(double));
    if (!src || !dst || !acc)
        die("reference", "out of memory");
    for (size_t k = 0; k < floats; k++)
        src[k] = (float)(k % 1000) * 1e-3f;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        uint64_t t0 = fs_now_usec();
        for (int a = 0; a < n; a++) {
            memcpy(dst, src, floats * sizeof(float));
            const float *g = dst;
            for (size_t k = 0; k < floats; k++)
                acc[k] += g[k];
        }
        double s = (double)(fs_now_usec() - t0) / 1e6;
        if (s < best)
            best = s;
    }
    volatile double sink = acc[floats / 2];
    (void)sink;
    free(src);
    free(dst);
    free(acc);
    return best;
}

static void emit(const char *name, double value, const char *unit, double reference,
                 double ratio, const char *extra)
{
    printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\",\"reference\":%.6g,\"ratio\":%.4g%s}\n",
           name, value, unit, reference, ratio, extra);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc == 7 && !strcmp(argv[1], "--agent"))
        return agent_main(argv[2], argv[3], argv[4], argv[5], argv[6]);
    int whole = 0, pos = 0, n = 0, rounds = 5;
    const char *size = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--whole"))
            whole = 1;
        else if (pos == 0 && ++pos)
            size = argv[i];
        else if (pos == 1 && ++pos)
            n = atoi(argv[i]);
        else if (pos == 2 && ++pos)
            rounds = atoi(argv[i]);
        else
            size = NULL;
    }
    if (!size || (strcmp(size, "0.27m") && strcmp(size, "11.7m")) || n < 1 || n > MAX_AGENTS ||
        rounds < 1 || rounds > 100) {
        fprintf(stderr, "usage: bench_round 0.27m|11.7m AGENTS(1..%d) [ROUNDS(1..100), default 5] "
                        "[--whole]\n", MAX_AGENTS);
        return 2;
    }
    if (sodium_init() < 0)
        die("sodium", "init failed");
    /* the student: ResNet-20 (CIFAR, 0.27M parameters) or ResNet-18 (ImageNet, 11.7M) */
    fs_arch a;
    fs_diag d = {0};
    int rc;
    if (!strcmp(size, "0.27m")) {
        int depths[] = {3, 3, 3}, widths[] = {16, 32, 64};
        rc = fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_CIFAR, 3, depths, widths, 3, 32, 32, 10,
                            &d);
    } else {
        int depths[] = {2, 2, 2, 2}, widths[] = {64, 128, 256, 512};
        rc = fs_arch_resnet(&a, FS_BLOCK_BASIC, FS_STEM_IMAGENET, 4, depths, widths, 3, 224, 224,
                            1000, &d);
    }
    fs_model *m = NULL;
    if (rc || (rc = fs_model_build(&m, &a, NULL, 0, &d)) != 0)
        die("model", d.msg);
    fs_model_init(m, 1);
    size_t grad_params = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad && m->params[i].trainable)
            grad_params += m->params[i].numel;
    double model_bytes = (double)grad_params * sizeof(float);

    /* keys and the allow-list */
    char dir[] = "/tmp/bench_round.XXXXXX", path[64];
    if (!mkdtemp(dir))
        die("mkdtemp", strerror(errno));
    snprintf(path, sizeof path, "%s/agents.allow", dir);
    fs_key spub, ssec, cpub[MAX_AGENTS], csec[MAX_AGENTS];
    crypto_box_keypair(spub, ssec);
    FILE *f = fopen(path, "w");
    if (!f)
        die(path, strerror(errno));
    for (int i = 0; i < n; i++) {
        char z[41];
        crypto_box_keypair(cpub[i], csec[i]);
        fs_key_to_z85(cpub[i], z);
        fprintf(f, "agent-%d %s\n", i, z);
    }
    fclose(f);
    void *zctx = zmq_ctx_new();
    fs_link_options o = link_options();
    o.rcvhwm = FS_FED_COORD_RCVHWM; /* as fedslim-coordinator */
    static bench_tr b;
    if (fs_link_server_open(&b.link, zctx, "tcp://127.0.0.1:*", ssec, path, &o, &d))
        die("server", d.msg);
    sodium_memzero(ssec, sizeof ssec);
    pid_t pids[MAX_AGENTS];
    for (int i = 0; i < n; i++) {
        char sz[41], pz[41], kz[41], nm[32];
        fs_key_to_z85(spub, sz);
        fs_key_to_z85(cpub[i], pz);
        fs_key_to_z85(csec[i], kz);
        snprintf(nm, sizeof nm, "agent-%d", i);
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork", strerror(errno));
        if (pids[i] == 0) {
            execl("/proc/self/exe", "bench_round", "--agent", fs_link_server_endpoint(b.link), sz,
                  pz, kz, nm, (char *)NULL);
            _exit(127);
        }
        sodium_memzero(csec[i], sizeof csec[i]);
    }
    /* wait for every agent's HELLO */
    uint64_t deadline = fs_now_usec() + 60 * 1000000ull;
    while (b.n < n && fs_now_usec() < deadline) {
        fs_link_peer peer;
        fs_wire_msg *msg = NULL;
        if (fs_link_server_recv(b.link, &peer, &msg, 1000, &d) != 0)
            continue;
        if (msg->type == FS_MSG_HELLO && find_peer(&b, peer.name) < 0)
            b.peers[b.n++] = peer;
        fs_wire_msg_free(msg);
    }
    if (b.n < n)
        die("agents", "not all agents said hello within 60 s");

    fs_fed_transport t = {tr_exchange, tr_total, &b, whole ? 0 : STREAM_PART};
    fs_source *src = NULL;
    if (fs_fed_source(&src, &t, &d))
        die("source", d.msg);
    fs_loss_req q;
    memset(&q, 0, sizeof q);
    q.objective = FS_OBJ_MIMIC;
    q.temperature = 4;
    q.mode = FS_MODE_EVAL;
    q.want_grad = 1;
    fs_loss_sum ls;
    /* warm-up: the graph announcement and one round */
    for (int w = 0; w < 2; w++) {
        fs_model_zero_grad(m);
        if (fs_source_loss(src, m, &q, &ls, &d))
            die("warm-up round", d.msg);
    }
    long rss_before = status_kib("VmRSS");
    /* peak RSS from here on (clear_refs 5 resets VmHWM to the current RSS) */
    f = fopen("/proc/self/clear_refs", "w");
    int reset_ok = f && fputs("5", f) >= 0;
    if (f)
        reset_ok = (fclose(f) == 0) && reset_ok;
    double *sec = calloc((size_t)rounds, sizeof *sec);
    if (!sec)
        die("rounds", "out of memory");
    for (int r = 0; r < rounds; r++) {
        /* an optimizer step changed every parameter: the request carries all of them */
        for (int i = 0; i < m->n_params; i++)
            m->params[i].data[0] += 1e-6f;
        fs_model_zero_grad(m);
        uint64_t t0 = fs_now_usec();
        if (fs_source_loss(src, m, &q, &ls, &d))
            die("round", d.msg);
        sec[r] = (double)(fs_now_usec() - t0) / 1e6;
        if (ls.count != (int64_t)n * SAMPLES)
            die("round", "the summed count is wrong");
    }
    /* the sum is right: every agent sent the same gradient, a function of the element's place
     * among all float parameters (agent_main) */
    size_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        const fs_param *p = &m->params[i];
        for (size_t k = 0; p->grad && p->trainable && k < p->numel; k += 997) {
            double want = (double)n * (float)((off + k) % 1000) * 1e-3f;
            if (fabs(p->grad[k] - want) > 1e-5 * (1 + want))
                die("round", "the summed gradient is wrong");
        }
        off += p->numel;
    }
    long hwm = status_kib("VmHWM");
    /* stop the agents */
    for (int i = 0; i < b.n; i++) {
        fs_wire_msg bye;
        memset(&bye, 0, sizeof bye);
        bye.type = FS_MSG_BYE;
        snprintf(bye.u.bye.reason, sizeof bye.u.bye.reason, "bench done");
        (void)fs_link_server_send(b.link, &b.peers[i], &bye, &d);
    }
    for (int i = 0; i < n; i++) {
        int st = 0;
        for (int k = 0; k < 100 && waitpid(pids[i], &st, WNOHANG) == 0; k++)
            usleep(50000);
        if (waitpid(pids[i], &st, WNOHANG) == 0) {
            kill(pids[i], SIGTERM);
            waitpid(pids[i], &st, 0);
        }
    }
    fs_source_free(src);
    fs_link_server_close(b.link);
    zmq_ctx_term(zctx);
    unlink(path);
    rmdir(dir);

    double *sorted = malloc((size_t)rounds * sizeof *sorted);
    if (!sorted)
        die("rounds", "out of memory");
    memcpy(sorted, sec, (size_t)rounds * sizeof *sorted);
    qsort(sorted, (size_t)rounds, sizeof *sorted, cmp_double);
    double median = sorted[rounds / 2], best = sorted[0];
    double ref_s = reference_seconds(grad_params, n);
    char name[64], extra[256];
    const char *mode = whole ? "_whole" : "";
    snprintf(name, sizeof name, "round_overhead_%s_%d%s", size, n, mode);
    snprintf(extra, sizeof extra, ",\"min\":%.6g,\"rounds\":%d,\"params\":%zu,\"model_bytes\":%.0f",
             best, rounds, grad_params, model_bytes);
    emit(name, median, "s", ref_s, ref_s / median, extra);
    double rss = (double)hwm * 1024.0;
    /* reference: what the same process held before the timed rounds plus one whole reply per
     * agent, the least a coordinator that receives every reply whole must hold at the end of a
     * round (bench_round --whole measures that design itself); ratio > 1: we hold less */
    double naive = (double)rss_before * 1024.0 + (double)n * model_bytes;
    snprintf(name, sizeof name, "coordinator_rss_%s_%d%s", size, n, mode);
    snprintf(extra, sizeof extra, ",\"rss_before_rounds\":%.0f,\"peak_reset\":%s",
             (double)rss_before * 1024.0, reset_ok ? "true" : "false");
    emit(name, rss, "B", naive, naive / rss, extra);
    fprintf(stderr, "bench_round %s N=%d%s: round median %.3f s (min %.3f, reference %.3f s), "
                    "peak RSS %.1f MiB (before rounds %.1f MiB; model %.1f MiB)\n",
            size, n, whole ? " (whole replies)" : "", median, best, ref_s, rss / 1048576.0,
            (double)rss_before / 1024.0, model_bytes / 1048576.0);
    free(sec);
    free(sorted);
    fs_model_free(m);
    return 0;
}
