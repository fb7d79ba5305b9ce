/*
 * session.c — per-peer semantic checks after decoding (expected job/round/step, replayed sequence
 * numbers, garbage counting) and the chunked model transfer (MODEL_REQ / MODEL_CHUNK) with a
 * receive buffer sized from the expected total and a final digest check. No sockets here.
 */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "fs_wire.h"
#include "protocol_internal.h"

void fs_wire_session_init(fs_wire_session *s)
{
    memset(s, 0, sizeof *s);
    s->garbage_threshold = 16;
}

void fs_wire_session_expect(fs_wire_session *s, const char *job, uint32_t round, uint32_t step)
{
    s->check_job = true;
    snprintf(s->job, sizeof s->job, "%s", job ? job : "");
    s->check_round = true;
    s->round = round;
    s->check_step = true;
    s->step = step;
}

static bool job_scoped(fs_msg_type t)
{
    return t == FS_MSG_JOB_ACCEPT || t == FS_MSG_JOB_DECLINE || t == FS_MSG_MODEL_REQ ||
           t == FS_MSG_MODEL_CHUNK || t == FS_MSG_COMPUTE_REQ || t == FS_MSG_COMPUTE_REPLY ||
           t == FS_MSG_COMPUTE_HEAD || t == FS_MSG_COMPUTE_PART;
}

int fs_wire_session_check(fs_wire_session *s, const fs_wire_msg *m, fs_diag *d)
{
    if (m->type == FS_MSG_HELLO || m->type == FS_MSG_WELCOME) {
        /* A (re)started peer begins a new sequence epoch with HELLO (agent) / WELCOME
         * (coordinator). CURVE already stops replays by a third
         * party (per-connection nonces); seq catches our own resends after a reconnect. */
        s->have_seq = true;
        s->last_seq = m->seq;
        s->n_accepted++;
        return 0;
    }
    if (s->have_seq && m->seq <= s->last_seq) {
        s->n_replays++;
        return fs_diag_set(d, FS_EAGAIN, "%s seq %llu already seen (last %llu): dropped",
                           fs_msg_type_name(m->type), (unsigned long long)m->seq,
                           (unsigned long long)s->last_seq);
    }
    if (s->check_job && m->type != FS_MSG_JOB_OFFER) {
        bool scoped = job_scoped(m->type);
        bool ok = !strcmp(m->job, s->job) || (!scoped && m->job[0] == '\0');
        if (!ok) {
            s->n_rejected++;
            return fs_diag_set(d, FS_EPROTO, "%s for job '%s', expected '%s'",
                               fs_msg_type_name(m->type), m->job, s->job);
        }
    }
    if (m->type == FS_MSG_COMPUTE_REQ || m->type == FS_MSG_COMPUTE_REPLY ||
        m->type == FS_MSG_COMPUTE_HEAD || m->type == FS_MSG_COMPUTE_PART) {
        if (s->check_round && m->round != s->round) {
            s->n_rejected++;
            return fs_diag_set(d, FS_EPROTO, "%s for round %u, expected %u",
                               fs_msg_type_name(m->type), m->round, s->round);
        }
        if (s->check_step && m->step != s->step) {
            s->n_rejected++;
            return fs_diag_set(d, FS_EPROTO, "%s for step %u, expected %u",
                               fs_msg_type_name(m->type), m->step, s->step);
        }
    }
    s->have_seq = true;
    s->last_seq = m->seq;
    s->n_accepted++;
    return 0;
}

bool fs_wire_session_garbage(fs_wire_session *s)
{
    s->n_garbage++;
    return s->garbage_threshold && s->n_garbage >= s->garbage_threshold;
}

/* ---- model transfer ------------------------------------------------------------------------ */

int fs_model_rx_init(fs_model_rx *rx, const uint8_t digest[FS_WIRE_DIGEST_BYTES],
                     uint64_t expected_total, uint64_t max_bytes, fs_diag *d)
{
    memset(rx, 0, sizeof *rx);
    if (expected_total == 0 || expected_total > max_bytes || expected_total > SIZE_MAX)
        return fs_diag_set(d, FS_EINVAL, "model: size %llu not in 1..%llu bytes",
                           (unsigned long long)expected_total, (unsigned long long)max_bytes);
    rx->buf = fs_wire_alloc_big((size_t)expected_total); /* filled in order before it is used */
    if (!rx->buf)
        return fs_diag_set(d, FS_ENOMEM, "model: cannot allocate %llu bytes",
                           (unsigned long long)expected_total);
    memcpy(rx->digest, digest, FS_WIRE_DIGEST_BYTES);
    rx->total = expected_total;
    return 0;
}

int fs_model_rx_add(fs_model_rx *rx, const fs_wire_msg *m, fs_diag *d)
{
    if (m->type != FS_MSG_MODEL_CHUNK)
        return fs_diag_set(d, FS_EPROTO, "model: %s is not MODEL_CHUNK", fs_msg_type_name(m->type));
    const typeof(m->u.model_chunk) *c = &m->u.model_chunk;
    if (sodium_memcmp(c->digest, rx->digest, FS_WIRE_DIGEST_BYTES) != 0)
        return fs_diag_set(d, FS_EPROTO, "model chunk: digest differs from the offered model");
    if (c->total != rx->total)
        return fs_diag_set(d, FS_EPROTO, "model chunk: total %llu, expected %llu",
                           (unsigned long long)c->total, (unsigned long long)rx->total);
    if (c->offset != rx->received)
        return fs_diag_set(d, FS_EPROTO, "model chunk: offset %llu, expected %llu",
                           (unsigned long long)c->offset, (unsigned long long)rx->received);
    if (c->len == 0 || c->len > rx->total - rx->received)
        return fs_diag_set(d, FS_EPROTO, "model chunk: %zu bytes past the end (%llu of %llu)",
                           c->len, (unsigned long long)rx->received,
                           (unsigned long long)rx->total);
    memcpy(rx->buf + rx->received, c->data, c->len);
    rx->received += c->len;
    return 0;
}

bool fs_model_rx_next_req(const fs_model_rx *rx, uint64_t len, fs_wire_msg *req)
{
    if (rx->received >= rx->total)
        return false;
    memset(req, 0, sizeof *req);
    req->type = FS_MSG_MODEL_REQ;
    memcpy(req->u.model_req.digest, rx->digest, FS_WIRE_DIGEST_BYTES);
    req->u.model_req.offset = rx->received;
    uint64_t left = rx->total - rx->received;
    req->u.model_req.len = len < left ? len : left;
    return true;
}

int fs_model_rx_finish(fs_model_rx *rx, fs_diag *d)
{
    if (rx->received != rx->total)
        return fs_diag_set(d, FS_EAGAIN, "model: %llu of %llu bytes received",
                           (unsigned long long)rx->received, (unsigned long long)rx->total);
    uint8_t got[FS_WIRE_DIGEST_BYTES];
    fs_wire_digest(rx->buf, (size_t)rx->total, got);
    if (sodium_memcmp(got, rx->digest, FS_WIRE_DIGEST_BYTES) != 0) {
        char want_hex[65], got_hex[65];
        fs_wire_digest_hex(rx->digest, want_hex);
        fs_wire_digest_hex(got, got_hex);
        sodium_memzero(rx->buf, (size_t)rx->total);
        rx->received = 0;
        return fs_diag_set(d, FS_EAUTH, "model: digest %.16s... != offered %.16s...", got_hex,
                           want_hex);
    }
    return 0;
}

void fs_model_rx_free(fs_model_rx *rx)
{
    if (!rx)
        return;
    fs_free(rx->buf);
    memset(rx, 0, sizeof *rx);
}

int fs_model_make_chunk(const fs_wire_msg *req, const uint8_t *blob, uint64_t total,
                        const uint8_t digest[FS_WIRE_DIGEST_BYTES], size_t max_len,
                        fs_wire_msg *chunk, fs_diag *d)
{
    if (req->type != FS_MSG_MODEL_REQ)
        return fs_diag_set(d, FS_EPROTO, "model: %s is not MODEL_REQ", fs_msg_type_name(req->type));
    if (sodium_memcmp(req->u.model_req.digest, digest, FS_WIRE_DIGEST_BYTES) != 0)
        return fs_diag_set(d, FS_EPROTO, "MODEL_REQ: unknown model digest");
    uint64_t off = req->u.model_req.offset, len = req->u.model_req.len;
    if (off >= total || len == 0)
        return fs_diag_set(d, FS_EPROTO, "MODEL_REQ: range [%llu, +%llu) outside %llu bytes",
                           (unsigned long long)off, (unsigned long long)len,
                           (unsigned long long)total);
    if (len > total - off)
        len = total - off;
    if (len > max_len)
        len = max_len;
    memset(chunk, 0, sizeof *chunk);
    chunk->type = FS_MSG_MODEL_CHUNK;
    snprintf(chunk->job, sizeof chunk->job, "%s", req->job);
    chunk->round = req->round;
    chunk->step = req->step;
    memcpy(chunk->u.model_chunk.digest, digest, FS_WIRE_DIGEST_BYTES);
    chunk->u.model_chunk.total = total;
    chunk->u.model_chunk.offset = off;
    chunk->u.model_chunk.data = blob + off;
    chunk->u.model_chunk.len = (size_t)len;
    return 0;
}
