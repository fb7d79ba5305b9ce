/*
 * fuzz_wire.c — libFuzzer target for the wire decoder, including the structural MessagePack
 * pre-check. Input: byte 0 = number of raw frames (mod 8); then the header as u16-LE length +
 * bytes; then each raw frame as u16-LE length + bytes (missing bytes = shorter frames).
 * Oracle besides the sanitizers: whenever the pre-check accepts a buffer, msgpack_unpack_next must
 * parse it completely (SUCCESS and off == len); a decoded message must re-encode; decoding with
 * the raw frames first copied into a layout planned from the header (what the link does while
 * frames arrive) must give the same verdict and the same tensors.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fs_wire.h"
#include "protocol_internal.h" /* placed decoding (fs_wire_layout_*) is internal to protocol/ */

static size_t take(const uint8_t **p, size_t *left, const uint8_t **out)
{
    size_t n = 0;
    if (*left >= 2) {
        n = (size_t)(*p)[0] | ((size_t)(*p)[1] << 8);
        *p += 2;
        *left -= 2;
    } else {
        *left = 0;
    }
    if (n > *left)
        n = *left;
    *out = *p;
    *p += n;
    *left -= n;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* property of the pre-check on the raw input */
    if (fs_mp_precheck(data, size, 8, 4096) == 0) {
        msgpack_unpacked res;
        msgpack_unpacked_init(&res);
        size_t off = 0;
        msgpack_unpack_return r = msgpack_unpack_next(&res, (const char *)data, size, &off);
        if (r != MSGPACK_UNPACK_SUCCESS || off != size)
            abort();
        msgpack_unpacked_destroy(&res);
    }
    if (size < 1)
        return 0;
    size_t nraw = data[0] % 8, left = size - 1;
    const uint8_t *p = data + 1;
    fs_wire_buf frames[9];
    frames[0].len = take(&p, &left, (const uint8_t **)&frames[0].data);
    for (size_t i = 0; i < nraw; i++)
        frames[1 + i].len = take(&p, &left, (const uint8_t **)&frames[1 + i].data);
    fs_wire_limits lim = fs_wire_limits_default();
    lim.max_tensor_bytes = 1 << 20;
    fs_wire_msg *m = NULL;
    fs_diag d;
    uint64_t pv = 0;
    int rc = fs_wire_decode(frames, 1 + nraw, &lim, &m, &pv, &d);
    if (rc == 0) {
        fs_wire_frames f;
        if (fs_wire_encode(m, 65536, &f, &d) != 0)
            abort(); /* everything the decoder accepts must be encodable */
        fs_wire_frames_free(&f);
    }
    fs_wire_layout *l = fs_wire_layout_plan(frames[0].data, frames[0].len, &lim);
    fs_wire_buf placed[9];
    placed[0] = frames[0];
    for (size_t i = 1; i <= nraw; i++) {
        void *dst = fs_wire_layout_place(l, i, frames[i].len);
        placed[i] = frames[i];
        if (dst) {
            memcpy(dst, frames[i].data, frames[i].len);
            placed[i].data = dst;
        }
    }
    fs_wire_msg *m2 = NULL;
    int rc2 = fs_wire_decode_placed(placed, 1 + nraw, &lim, l, &m2, &pv, &d);
    fs_wire_layout_free(l);
    if (rc2 != rc)
        abort();
    if (rc == 0) {
        if (m2->type != m->type || m2->n_tensors != m->n_tensors)
            abort();
        for (size_t i = 0; i < m->n_tensors; i++)
            if (m2->tensors[i].nbytes != m->tensors[i].nbytes ||
                memcmp(m2->tensors[i].data, m->tensors[i].data, m->tensors[i].nbytes) != 0)
                abort();
        fs_wire_msg_free(m);
        fs_wire_msg_free(m2);
    }
    return 0;
}
