/*
 * test_fed.c — the federated source's reply path without sockets: a fake transport feeds whole and
 * streamed gradient replies of two agents through fs_fed_feed into fs_fed_source, and checks the
 * sums; an agent leaving in the middle of its streamed reply makes the round repeat (FS_EAGAIN) and
 * leaves no trace of its partial reply; malformed streams are refused with the agent named. FedAvg
 * "local" requests take the same path with "delta/" replies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_fed.h"

#define NAGENTS 2

typedef struct {
    fs_model *m;               /* the student the coordinator holds (grads are made from it) */
    int stream;                /* agents stream their gradient replies */
    int leave_after_parts;     /* >= 0: agent 1 stops after this many parts, on the first try */
    int attempts;              /* loss exchanges so far */
    int saw_stream_arg;
    int local;                 /* FedAvg: "local" requests, "delta/" replies with loss_count */
    float *grads[NAGENTS];
    fs_wire_tensor *t;
    char (*names)[FS_WIRE_TENSOR_NAME_MAX + 1];
} fake;

/* Agent a's gradient: a different value per element and agent. */
static float grad_value(int a, size_t k)
{
    return (float)(a + 1) + (float)(k % 101) * 0.01f;
}

static size_t make_reply(fake *f, int a, fs_wire_msg *r)
{
    fs_model *m = f->m;
    size_t n = 0, off = 0;
    for (int i = 0; i < m->n_params; i++) {
        fs_param *p = &m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        snprintf(f->names[n], sizeof f->names[n], "%s%s", f->local ? "delta/" : "grad/",
                 p->name);
        memset(&f->t[n], 0, sizeof f->t[n]);
        snprintf(f->t[n].name, sizeof f->t[n].name, "%s", f->names[n]);
        f->t[n].dtype = FS_WIRE_F32;
        f->t[n].ndim = (uint32_t)p->ndim;
        for (int k = 0; k < p->ndim; k++)
            f->t[n].shape[k] = (uint64_t)p->shape[k];
        for (size_t k = 0; k < p->numel; k++)
            f->grads[a][off + k] = grad_value(a, off + k);
        f->t[n].data = f->grads[a] + off;
        f->t[n].nbytes = p->numel * sizeof(float);
        off += p->numel;
        n++;
    }
    static fs_kv loss[NAGENTS][2];
    memset(loss[a], 0, sizeof loss[a]);
    snprintf(loss[a][0].key, sizeof loss[a][0].key, "loss_sum");
    loss[a][0].kind = FS_KV_FLOAT;
    loss[a][0].f = 10.0 * (a + 1);
    snprintf(loss[a][1].key, sizeof loss[a][1].key, "loss_count");
    loss[a][1].kind = FS_KV_FLOAT;
    loss[a][1].f = 4.0;
    memset(r, 0, sizeof *r);
    r->type = FS_MSG_COMPUTE_REPLY;
    r->u.compute_reply.count = 10;
    r->u.compute_reply.scalars.items = loss[a];
    r->u.compute_reply.scalars.n = f->local ? 2 : 1;
    r->tensors = f->t;
    r->n_tensors = n;
    return off;
}

static int fake_exchange(void *ud, fs_wire_msg *req, fs_fed_reply_fn fn, void *cb_ud, fs_diag *d)
{
    fake *f = ud;
    fs_fed_inflight st;
    memset(&st, 0, sizeof st);
    if (!strcmp(req->u.compute_req.kind, "student")) {
        fs_wire_msg r;
        memset(&r, 0, sizeof r);
        r.type = FS_MSG_COMPUTE_REPLY;
        r.u.compute_reply.count = 10;
        for (int a = 0; a < NAGENTS; a++) {
            assert_int_equal(fs_fed_feed(&st, "agent", &r, fn, cb_ud, 1u << 30, d), 0);
            fs_fed_inflight_reset(&st);
        }
        return 0;
    }
    assert_string_equal(req->u.compute_req.kind, f->local ? "local" : "loss");
    int64_t part = 0;
    if (fs_kv_get_i64(&req->u.compute_req.args, "stream", &part) == 0)
        f->saw_stream_arg = 1;
    f->attempts++;
    int spoiled = 0;
    for (int a = 0; a < NAGENTS; a++) {
        char agent[16];
        snprintf(agent, sizeof agent, "site-%d", a);
        fs_wire_msg r;
        make_reply(f, a, &r);
        fs_fed_inflight_reset(&st);
        if (!f->stream) {
            assert_int_equal(fs_fed_feed(&st, agent, &r, fn, cb_ud, 1u << 30, d), 0);
            continue;
        }
        fs_wire_stream_tx tx;
        fs_wire_msg head, pm;
        assert_int_equal(fs_wire_stream_tx_init(&tx, &r, (size_t)part, 512, &head, d), 0);
        assert_true(tx.parts > 2);
        int rc = fs_fed_feed(&st, agent, &head, fn, cb_ud, 1u << 30, d);
        assert_int_equal(rc, FS_FED_MORE);
        int k = 0;
        while (fs_wire_stream_tx_next(&tx, &pm)) {
            if (a == 1 && f->attempts == 1 && k == f->leave_after_parts)
                break; /* agent 1 disconnects here */
            rc = fs_fed_feed(&st, agent, &pm, fn, cb_ud, 1u << 30, d);
            k++;
            assert_int_equal(rc, (uint32_t)k == tx.parts ? 0 : FS_FED_MORE);
        }
        if (rc != 0) {
            assert_true(st.touched);
            spoiled = 1;   /* what coordinator/job.c's exchange does */
        }
    }
    fs_fed_inflight_reset(&st);
    if (spoiled)
        return fs_diag_set(d, FS_EAGAIN, "agent site-1 left in the middle of its reply");
    return 0;
}

static int64_t fake_total(void *ud)
{
    (void)ud;
    return 10 * NAGENTS;
}

static void run_case_kind(int stream, int leave_after_parts, int local)
{
    fs_arch a;
    fs_diag d = {0};
    int hidden[] = {24, 16};
    assert_int_equal(fs_arch_mlp(&a, 2, hidden, 1, 4, 4, 10, &d), 0);
    fake f;
    memset(&f, 0, sizeof f);
    assert_int_equal(fs_model_build(&f.m, &a, NULL, 0, &d), 0);
    fs_model_init(f.m, 3);
    f.stream = stream;
    f.leave_after_parts = leave_after_parts;
    f.local = local;
    for (int i = 0; i < NAGENTS; i++)
        f.grads[i] = calloc(f.m->grad_floats + 1, sizeof(float));
    f.t = calloc((size_t)f.m->n_params, sizeof *f.t);
    f.names = calloc((size_t)f.m->n_params, sizeof *f.names);
    fs_fed_transport t = {fake_exchange, fake_total, &f, stream ? 1024 : 0};
    fs_source *src = NULL;
    assert_int_equal(fs_fed_source(&src, &t, &d), 0);
    fs_loss_req q;
    memset(&q, 0, sizeof q);
    q.objective = FS_OBJ_MIMIC;
    q.want_grad = 1;
    fs_loss_sum ls;
    int rc;
    if (local) {
        /* a FedAvg round: the deltas are written (not added) into .grad */
        fs_update_req uq = {.objective = FS_OBJ_MIMIC, .steps = 3, .lr = 0.1f};
        fs_update_sum us;
        for (size_t k = 0; k < f.m->grad_floats; k++)
            f.m->grad_block[k] = 1e6f;
        rc = fs_source_local_update(src, f.m, &uq, &us, &d);
        if (rc)
            fail_msg("local update: %s", d.msg);
        assert_int_equal(us.loss_count, 4 * NAGENTS);
        ls.count = us.n;
        ls.loss_sum = us.loss_sum;
    } else {
        fs_model_zero_grad(f.m);
        if ((rc = fs_source_loss(src, f.m, &q, &ls, &d)) != 0)
            fail_msg("loss: %s", d.msg);
    }
    assert_int_equal(f.saw_stream_arg, stream);
    assert_int_equal(f.attempts, leave_after_parts >= 0 ? 2 : 1);
    /* the sums of exactly one reply per agent: nothing left over from the abandoned attempt */
    assert_int_equal(ls.count, 10 * NAGENTS);
    assert_true(fabs(ls.loss_sum - 30.0) < 1e-12);
    size_t off = 0;
    for (int i = 0; i < f.m->n_params; i++) {
        fs_param *p = &f.m->params[i];
        if (!p->grad || !p->trainable)
            continue;
        for (size_t k = 0; k < p->numel; k++) {
            float want = (float)((double)grad_value(0, off + k) + grad_value(1, off + k));
            if (p->grad[k] != want)
                fail_msg("%s[%zu]: %g, expected %g", p->name, k, p->grad[k], want);
        }
        off += p->numel;
    }
    fs_source_free(src);
    for (int i = 0; i < NAGENTS; i++)
        free(f.grads[i]);
    free(f.t);
    free(f.names);
    fs_model_free(f.m);
}

static void run_case(int stream, int leave_after_parts)
{
    run_case_kind(stream, leave_after_parts, 0);
}

/* FedAvg rounds take the same path: whole and streamed "delta/" replies, a round repeated after an
 * agent left mid-stream. */
static void local_update_replies_sum(void **state)
{
    (void)state;
    run_case_kind(0, -1, 1);
    run_case_kind(1, -1, 1);
    run_case_kind(1, 2, 1);
}

static void whole_replies_sum(void **state)
{
    (void)state;
    run_case(0, -1);
}

static void streamed_replies_sum(void **state)
{
    (void)state;
    run_case(1, -1);
}

static void agent_leaving_mid_stream_repeats_round(void **state)
{
    (void)state;
    run_case(1, 2);
}

static int accept_all(void *ud, const char *agent, const fs_wire_msg *r, fs_diag *d)
{
    (void)agent;
    (void)r;
    (void)d;
    (*(int *)ud)++;
    return 0;
}

/* fs_fed_feed's own checks: a part before any head, a second head, a part out of order, another
 * message type; each refused with the agent named. */
static void feed_rejects_malformed_streams(void **state)
{
    (void)state;
    float g[300];
    for (int i = 0; i < 300; i++)
        g[i] = (float)i;
    fs_wire_tensor t;
    memset(&t, 0, sizeof t);
    strcpy(t.name, "grad/w");
    t.dtype = FS_WIRE_F32;
    t.ndim = 1;
    t.shape[0] = 300;
    t.data = g;
    t.nbytes = sizeof g;
    fs_wire_msg r;
    memset(&r, 0, sizeof r);
    r.type = FS_MSG_COMPUTE_REPLY;
    r.tensors = &t;
    r.n_tensors = 1;
    fs_wire_stream_tx tx;
    fs_wire_msg head, p0, p1;
    fs_diag d = {0};
    int calls = 0;
    fs_fed_inflight st;
    memset(&st, 0, sizeof st);
    assert_int_equal(fs_wire_stream_tx_init(&tx, &r, 400, 400, &head, &d), 0);
    assert_true(fs_wire_stream_tx_next(&tx, &p0));
    fs_wire_slice s0 = p0.u.compute_part.slices[0];
    p0.u.compute_part.slices = &s0;
    assert_true(fs_wire_stream_tx_next(&tx, &p1));
    /* part before head */
    assert_int_equal(fs_fed_feed(&st, "site-9", &p0, accept_all, &calls, 1u << 30, &d),
                     FS_EPROTO);
    assert_non_null(strstr(d.msg, "agent site-9"));
    assert_non_null(strstr(d.msg, "without a COMPUTE_HEAD"));
    /* head, then part 1 before part 0 */
    assert_int_equal(fs_fed_feed(&st, "site-9", &head, accept_all, &calls, 1u << 30, &d),
                     FS_FED_MORE);
    assert_int_equal(fs_fed_feed(&st, "site-9", &p1, accept_all, &calls, 1u << 30, &d),
                     FS_EPROTO);
    assert_non_null(strstr(d.msg, "agent site-9: stream: part 1 arrived where part 0"));
    /* a second head */
    assert_int_equal(fs_fed_feed(&st, "site-9", &head, accept_all, &calls, 1u << 30, &d),
                     FS_EPROTO);
    assert_non_null(strstr(d.msg, "agent site-9"));
    /* not a reply */
    fs_wire_msg hb;
    memset(&hb, 0, sizeof hb);
    hb.type = FS_MSG_HEARTBEAT;
    assert_int_equal(fs_fed_feed(&st, "site-9", &hb, accept_all, &calls, 1u << 30, &d),
                     FS_EPROTO);
    /* the ceiling on announced bytes */
    fs_fed_inflight_reset(&st);
    assert_int_equal(fs_fed_feed(&st, "site-9", &head, accept_all, &calls, 100, &d), FS_EPROTO);
    assert_non_null(strstr(d.msg, "agent site-9"));
    assert_int_equal(calls, 1); /* only the one good head reached the callback */
    fs_fed_inflight_reset(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whole_replies_sum),
        cmocka_unit_test(streamed_replies_sum),
        cmocka_unit_test(agent_leaving_mid_stream_repeats_round),
        cmocka_unit_test(feed_rejects_malformed_streams),
        cmocka_unit_test(local_update_replies_sum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
