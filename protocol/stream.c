/*
 * stream.c — streamed replies (COMPUTE_HEAD + COMPUTE_PART, docs/protocol.md §4b): the sender's
 * cutting of a reply into parts and the receiver's order/size/completeness checks. Knows messages,
 * not models: what the slices mean (gradient sums, ...) is the caller's business.
 */
#include <stdlib.h>
#include <string.h>

#include "fs_wire.h"

/* ---- sender ---------------------------------------------------------------------------------- */

/* Fills the slices of one part from the cursor (t, off) and advances it. */
static size_t cut_part(const fs_wire_msg *r, size_t part_bytes, size_t chunk, size_t *t,
                       uint64_t *off, fs_wire_slice *out)
{
    size_t n = 0, bytes = 0;
    while (*t < r->n_tensors && n < FS_WIRE_STREAM_MAX_SLICES && (n == 0 || bytes < part_bytes)) {
        const fs_wire_tensor *x = &r->tensors[*t];
        size_t es = fs_wire_dtype_size(x->dtype);
        size_t want = part_bytes - bytes < chunk ? part_bytes - bytes : chunk;
        want -= want % es; /* slices end on element boundaries */
        if (want == 0) {
            if (n > 0)
                break;
            want = es; /* part_bytes below one element: one element per part */
        }
        uint64_t left = x->nbytes - *off;
        size_t len = left < want ? (size_t)left : want;
        if (out) {
            fs_wire_slice *s = &out[n];
            memcpy(s->name, x->name, sizeof s->name);
            s->offset = *off;
            s->data = (const uint8_t *)x->data + *off;
            s->len = len;
        }
        n++;
        bytes += len;
        *off += len;
        if (*off == x->nbytes) {
            (*t)++;
            *off = 0;
        }
    }
    return n;
}

int fs_wire_stream_tx_init(fs_wire_stream_tx *tx, const fs_wire_msg *reply, size_t part_bytes,
                           size_t chunk, fs_wire_msg *head, fs_diag *d)
{
    memset(tx, 0, sizeof *tx);
    if (reply->type != FS_MSG_COMPUTE_REPLY || part_bytes == 0 || chunk < 8)
        return fs_diag_set(d, FS_EINVAL, "stream: needs a COMPUTE_REPLY, part_bytes >= 1 and a "
                           "chunk of at least 8 bytes");
    for (size_t i = 0; i < reply->n_tensors; i++) {
        const fs_wire_tensor *x = &reply->tensors[i];
        size_t es = fs_wire_dtype_size(x->dtype);
        if (es == 0 || x->nbytes == 0 || x->nbytes % es || !x->data)
            return fs_diag_set(d, FS_EINVAL, "stream: tensor '%s': bad dtype or size", x->name);
    }
    tx->reply = reply;
    tx->part_bytes = part_bytes;
    tx->chunk = chunk;
    /* count the parts with the same cutting the parts will use */
    size_t t = 0;
    uint64_t off = 0;
    uint64_t parts = 0;
    while (t < reply->n_tensors) {
        cut_part(reply, part_bytes, chunk, &t, &off, NULL);
        parts++;
    }
    if (parts > UINT32_MAX)
        return fs_diag_set(d, FS_EINVAL, "stream: %llu parts", (unsigned long long)parts);
    tx->parts = (uint32_t)parts;
    memset(head, 0, sizeof *head);
    head->type = FS_MSG_COMPUTE_HEAD;
    memcpy(head->job, reply->job, sizeof head->job);
    head->round = reply->round;
    head->step = reply->step;
    head->u.compute_head.count = reply->u.compute_reply.count;
    head->u.compute_head.scalars = reply->u.compute_reply.scalars;
    head->u.compute_head.parts = tx->parts;
    head->tensors = reply->tensors;
    head->n_tensors = reply->n_tensors;
    return 0;
}

bool fs_wire_stream_tx_next(fs_wire_stream_tx *tx, fs_wire_msg *part)
{
    if (!tx->reply || tx->next >= tx->parts)
        return false;
    size_t n = cut_part(tx->reply, tx->part_bytes, tx->chunk, &tx->t, &tx->off, tx->slices);
    memset(part, 0, sizeof *part);
    part->type = FS_MSG_COMPUTE_PART;
    memcpy(part->job, tx->reply->job, sizeof part->job);
    part->round = tx->reply->round;
    part->step = tx->reply->step;
    part->u.compute_part.part = tx->next++;
    part->u.compute_part.slices = tx->slices;
    part->u.compute_part.n_slices = n;
    return true;
}

/* ---- receiver -------------------------------------------------------------------------------- */

struct fs_wire_stream_t {
    char name[FS_WIRE_TENSOR_NAME_MAX + 1];
    uint64_t nbytes;
    size_t esize;
};

int fs_wire_stream_rx_begin(fs_wire_stream_rx *rx, const fs_wire_msg *head, uint64_t max_total,
                            fs_diag *d)
{
    memset(rx, 0, sizeof *rx);
    if (head->type != FS_MSG_COMPUTE_HEAD)
        return fs_diag_set(d, FS_EPROTO, "stream: %s is not a COMPUTE_HEAD",
                           fs_msg_type_name(head->type));
    uint64_t total = 0;
    for (size_t i = 0; i < head->n_tensors; i++) {
        const fs_wire_tensor *x = &head->tensors[i];
        if (x->nbytes > max_total - total)
            return fs_diag_set(d, FS_EPROTO, "stream: the announced tensors exceed %llu bytes "
                               "(at '%s')", (unsigned long long)max_total, x->name);
        total += x->nbytes;
    }
    if ((head->n_tensors == 0) != (head->u.compute_head.parts == 0) ||
        head->u.compute_head.parts > total)
        return fs_diag_set(d, FS_EPROTO, "stream: %u parts announced for %zu tensors of %llu "
                           "bytes", head->u.compute_head.parts, head->n_tensors,
                           (unsigned long long)total);
    if (head->n_tensors) {
        rx->t = calloc(head->n_tensors, sizeof *rx->t);
        if (!rx->t)
            return fs_diag_set(d, FS_ENOMEM, "stream: out of memory");
    }
    for (size_t i = 0; i < head->n_tensors; i++) {
        memcpy(rx->t[i].name, head->tensors[i].name, sizeof rx->t[i].name);
        rx->t[i].nbytes = head->tensors[i].nbytes;
        rx->t[i].esize = fs_wire_dtype_size(head->tensors[i].dtype);
    }
    rx->n = head->n_tensors;
    rx->parts = head->u.compute_head.parts;
    rx->total = total;
    return 0;
}

int fs_wire_stream_rx_part(fs_wire_stream_rx *rx, const fs_wire_msg *part, fs_diag *d)
{
    if (part->type != FS_MSG_COMPUTE_PART)
        return fs_diag_set(d, FS_EPROTO, "stream: %s where part %u was expected",
                           fs_msg_type_name(part->type), rx->next);
    const typeof(part->u.compute_part) *p = &part->u.compute_part;
    if (rx->next >= rx->parts)
        return fs_diag_set(d, FS_EPROTO, "stream: part %u after all %u announced parts", p->part,
                           rx->parts);
    if (p->part != rx->next)
        return fs_diag_set(d, FS_EPROTO, "stream: part %u arrived where part %u of %u was "
                           "expected (lost, repeated or out of order)", p->part, rx->next,
                           rx->parts);
    /* check every slice on a copy of the cursor; commit only if the whole part is good */
    size_t cur = rx->cur;
    uint64_t off = rx->off, got = 0;
    for (size_t i = 0; i < p->n_slices; i++) {
        const fs_wire_slice *s = &p->slices[i];
        if (cur >= rx->n)
            return fs_diag_set(d, FS_EPROTO, "stream: part %u slice %zu ('%s'): every announced "
                               "tensor is already complete", p->part, i, s->name);
        const struct fs_wire_stream_t *t = &rx->t[cur];
        if (strcmp(s->name, t->name))
            return fs_diag_set(d, FS_EPROTO, "stream: part %u slice %zu is '%s', expected the "
                               "next bytes of '%s' (at %llu of %llu)", p->part, i, s->name,
                               t->name, (unsigned long long)off, (unsigned long long)t->nbytes);
        if (s->offset != off || s->len > t->nbytes - off || s->len % t->esize)
            return fs_diag_set(d, FS_EPROTO, "stream: part %u slice %zu ('%s'): [%llu, +%zu) "
                               "does not continue at %llu within %llu bytes in whole elements",
                               p->part, i, s->name, (unsigned long long)s->offset, s->len,
                               (unsigned long long)off, (unsigned long long)t->nbytes);
        off += s->len;
        got += s->len;
        if (off == t->nbytes) {
            cur++;
            off = 0;
        }
    }
    bool last = p->part + 1 == rx->parts;
    if (last && cur != rx->n)
        return fs_diag_set(d, FS_EPROTO, "stream: last part %u ends with %llu of %llu bytes "
                           "received", p->part, (unsigned long long)(rx->received + got),
                           (unsigned long long)rx->total);
    if (!last && cur == rx->n)
        return fs_diag_set(d, FS_EPROTO, "stream: all bytes received at part %u of %u",
                           p->part, rx->parts);
    rx->cur = cur;
    rx->off = off;
    rx->received += got;
    rx->next++;
    return 0;
}

bool fs_wire_stream_rx_done(const fs_wire_stream_rx *rx)
{
    return rx->next == rx->parts && rx->cur == rx->n;
}

void fs_wire_stream_rx_free(fs_wire_stream_rx *rx)
{
    if (!rx)
        return;
    free(rx->t);
    memset(rx, 0, sizeof *rx);
}
