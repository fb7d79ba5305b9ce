/*
 * fs_wire.h — the fedslim wire format (protocol major 1): message catalogue, encoder, strict decoder,
 * per-peer session checks and chunked model transfer. docs/protocol.md is the reference.
 *
 * A message is a ZeroMQ multipart message: frame 0 is a MessagePack map (the envelope)
 *   {v: 1, t: type, job: str, round: u32, step: u32, seq: u64, body: map}
 * and frames 1..k are raw little-endian tensor bytes (each <= the chunk size), described in the body
 * by descriptors {name, dtype, shape, offset, len, frame}. protocol/ knows messages, not models:
 * tensors are named byte blobs with a dtype and a shape.
 *
 * Thread-safety: every function here works on caller-owned data only; no globals.
 */
#ifndef FS_WIRE_H
#define FS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_util.h"

#define FS_WIRE_PROTO 1      /* the major version we speak (envelope key `v`) */
#define FS_WIRE_PROTO_MIN 1  /* range advertised in HELLO and in ERROR{code:"version"} */
#define FS_WIRE_PROTO_MAX 1
#define FS_WIRE_CHUNK_DEFAULT ((size_t)256 << 10) /* bytes per raw frame (measured: docs §8) */
#define FS_WIRE_NAME_MAX 64                     /* job, agent, site, version, kv keys, codes */
#define FS_WIRE_TEXT_MAX 256                    /* error text, reasons */
#define FS_WIRE_TENSOR_NAME_MAX 128
#define FS_WIRE_MAX_DIMS 8
#define FS_WIRE_DIGEST_BYTES 32 /* BLAKE2b-256 (crypto_generichash) */

/* Message types: wire values, append only, never renumber or reuse (STYLE C14). */
typedef enum {
    FS_MSG_HELLO = 1,
    FS_MSG_WELCOME = 2,
    FS_MSG_HEARTBEAT = 3,
    FS_MSG_JOB_OFFER = 4,
    FS_MSG_JOB_ACCEPT = 5,
    FS_MSG_JOB_DECLINE = 6,
    FS_MSG_MODEL_REQ = 7,
    FS_MSG_MODEL_CHUNK = 8,
    FS_MSG_COMPUTE_REQ = 9,
    FS_MSG_COMPUTE_REPLY = 10,
    FS_MSG_ERROR = 11,
    FS_MSG_BYE = 12,
    FS_MSG_COMPUTE_HEAD = 13, /* a streamed COMPUTE_REPLY: count, scalars, tensors announced */
    FS_MSG_COMPUTE_PART = 14, /* ... followed by its bytes in parts (docs/protocol.md §4b) */
} fs_msg_type;
#define FS_MSG_TYPE_MAX 14

/* "HELLO", ...; "?" for an unknown value. */
const char *fs_msg_type_name(int type);

/* Tensor element types; on the wire as the strings "f32", "f64", "i32", "i64", "u8". Append only. */
typedef enum {
    FS_WIRE_F32 = 0,
    FS_WIRE_F64 = 1,
    FS_WIRE_I32 = 2,
    FS_WIRE_I64 = 3,
    FS_WIRE_U8 = 4,
} fs_wire_dtype;
size_t fs_wire_dtype_size(fs_wire_dtype t); /* 0 for an unknown value */
const char *fs_wire_dtype_name(fs_wire_dtype t);

/* A whole tensor as the application sees it. On encode `data` is borrowed (nbytes bytes, must
 * equal numel(shape) * dtype size); the encoder splits it into chunk frames. On decode `data` is a
 * 64-byte-aligned buffer owned by the message (free with fs_free); the caller may take it by
 * copying the pointer and setting t->data = NULL. */
typedef struct {
    char name[FS_WIRE_TENSOR_NAME_MAX + 1];
    fs_wire_dtype dtype;
    uint32_t ndim; /* 0..FS_WIRE_MAX_DIMS; 0 = scalar */
    uint64_t shape[FS_WIRE_MAX_DIMS];
    void *data;
    size_t nbytes;
} fs_wire_tensor;

/* A slice of a tensor announced by a COMPUTE_HEAD: `len` bytes at byte `offset`. On encode `data`
 * is borrowed; on decode it points into the received frame (valid until fs_wire_msg_free). */
typedef struct {
    char name[FS_WIRE_TENSOR_NAME_MAX + 1];
    uint64_t offset;
    const void *data;
    size_t len;
} fs_wire_slice;

/* Generic key -> value pairs (JOB_OFFER config, COMPUTE_REQ args, COMPUTE_REPLY scalars). Keys:
 * 1..64 chars [A-Za-z0-9._-], unique. Values: signed integer, double, string (printable ASCII,
 * <= FS_WIRE_TEXT_MAX) or array of numbers (decoded as doubles). */
typedef enum { FS_KV_INT = 0, FS_KV_FLOAT = 1, FS_KV_STR = 2, FS_KV_NUMS = 3 } fs_kv_kind;
typedef struct {
    char key[FS_WIRE_NAME_MAX + 1];
    fs_kv_kind kind;
    int64_t i;
    double f;
    const char *s;   /* NUL-terminated; borrowed on encode, message-owned on decode */
    const double *nums; /* borrowed on encode, message-owned on decode */
    size_t n_nums;
} fs_kv;
typedef struct {
    fs_kv *items; /* borrowed on encode, message-owned on decode */
    size_t n;
} fs_kvlist;
/* Lookups by key: NULL if absent or of another kind (INT is accepted where a float is asked). */
const fs_kv *fs_kv_find(const fs_kvlist *l, const char *key);
int fs_kv_get_f64(const fs_kvlist *l, const char *key, double *out); /* 0 or FS_ENOTFOUND */
int fs_kv_get_i64(const fs_kvlist *l, const char *key, int64_t *out);
const char *fs_kv_get_str(const fs_kvlist *l, const char *key);

/* A message. Build one on the stack to encode it (all pointers borrowed); fs_wire_decode returns
 * one it owns (free with fs_wire_msg_free). Strings are NUL-terminated fixed arrays. */
typedef struct fs_wire_msg {
    fs_msg_type type;
    char job[FS_WIRE_NAME_MAX + 1]; /* may be empty outside a job */
    uint32_t round;
    uint32_t step;
    uint64_t seq;
    union {
        struct {
            uint32_t proto_min, proto_max;
            char version[FS_WIRE_NAME_MAX + 1];
            char site[FS_WIRE_NAME_MAX + 1];
            const char *const *caps; /* n_caps strings (names) */
            size_t n_caps;
            uint64_t n_samples, n_labeled;
            const uint64_t *classes; /* per-class sample counts */
            size_t n_classes;
        } hello;
        struct {
            uint32_t proto;
            char agent[FS_WIRE_NAME_MAX + 1];
            uint32_t heartbeat_ms;
        } welcome;
        struct {
            double progress; /* 0..1 */
        } heartbeat;
        struct {
            fs_kvlist config;
            uint8_t model_digest[FS_WIRE_DIGEST_BYTES];
            uint64_t model_bytes;
        } job_offer;
        struct {
            char reason[FS_WIRE_TEXT_MAX + 1]; /* may be empty for JOB_ACCEPT */
        } job_reply; /* JOB_ACCEPT and JOB_DECLINE */
        struct {
            uint8_t digest[FS_WIRE_DIGEST_BYTES];
            uint64_t offset, len;
        } model_req;
        struct {
            uint8_t digest[FS_WIRE_DIGEST_BYTES];
            uint64_t total, offset;
            const uint8_t *data; /* encode: borrowed; decode: points into input frame 1 (see decode) */
            size_t len;
        } model_chunk;
        struct {
            char kind[FS_WIRE_NAME_MAX + 1]; /* "loss_grad", "moments", "hist", "correct", "sse" */
            fs_kvlist args;
        } compute_req; /* + tensors */
        struct {
            uint64_t count;
            fs_kvlist scalars; /* all FS_KV_FLOAT after decoding */
        } compute_reply;  /* + tensors */
        struct {
            uint64_t count;
            fs_kvlist scalars; /* all FS_KV_FLOAT after decoding */
            uint32_t parts;    /* COMPUTE_PART messages that follow (0 iff no tensors) */
        } compute_head; /* + tensors ANNOUNCED: name, dtype, shape, nbytes; data is NULL on decode
                         * and ignored on encode */
        struct {
            uint32_t part;               /* 0, 1, ... parts - 1 */
            const fs_wire_slice *slices; /* one raw frame each; borrowed / frame-backed */
            size_t n_slices;
        } compute_part;
        struct {
            char code[FS_WIRE_NAME_MAX + 1]; /* "version", "stale", "busy", ... */
            char text[FS_WIRE_TEXT_MAX + 1];
            bool has_supported; /* `supported: [min, max]` (code "version") */
            uint32_t supported_min, supported_max;
        } error;
        struct {
            char reason[FS_WIRE_TEXT_MAX + 1];
        } bye;
    } u;
    fs_wire_tensor *tensors; /* COMPUTE_REQ / COMPUTE_REPLY / COMPUTE_HEAD only */
    size_t n_tensors;
    struct fs_wire_owned *owned; /* decoder bookkeeping; NULL for caller-built messages */
} fs_wire_msg;

/* Frees a message returned by fs_wire_decode / fs_link_*_recv (NULL-safe). Never call it on a
 * caller-built message. */
void fs_wire_msg_free(fs_wire_msg *m);

/* Decoder limits. Every field is a hard ceiling; fs_wire_limits_default() gives the documented
 * defaults and callers may change any of them. */
typedef struct {
    size_t max_header_bytes;  /* frame 0, checked before it is parsed (64 KiB) */
    size_t max_frames;        /* frames per message including the header (1 + 1024) */
    size_t max_chunk_bytes;   /* one raw frame (4 MiB: >= any chunk size a sender may use) */
    size_t max_chunks;        /* raw frames per tensor (1024) */
    size_t max_tensor_bytes;  /* one tensor (1 GiB) */
    size_t max_message_bytes; /* all frames together (1 GiB + 64 KiB) */
    unsigned max_depth;       /* MessagePack nesting (8) */
    size_t max_objects;       /* MessagePack objects in the header (16384) */
} fs_wire_limits;
fs_wire_limits fs_wire_limits_default(void);

/* One frame of a multipart message (borrowed). */
typedef struct {
    const void *data;
    size_t len;
} fs_wire_buf;

/* Encoded message: frames[0] is the MessagePack header (owned by this struct), frames[1..n) point
 * into the tensor / chunk memory of the message that was encoded (borrowed: valid while it is). */
typedef struct {
    fs_wire_buf *frames;
    size_t n_frames;
    void *header;        /* malloc'd header bytes (== frames[0].data); see fs_wire_frames_take_header */
    size_t header_len;
} fs_wire_frames;

/* Encodes `m` into frames; tensors are split into raw frames of at most `chunk` bytes (0 = default).
 * Checks what a decoder would reject (names, sizes, shapes). Returns 0 or FS_EINVAL/FS_ENOMEM with
 * the problem in d. On success the caller frees `out` with fs_wire_frames_free. */
FS_MUST_CHECK int fs_wire_encode(const fs_wire_msg *m, size_t chunk, fs_wire_frames *out,
                                 fs_diag *d);
void fs_wire_frames_free(fs_wire_frames *f);

/* Decodes frames[0..n) per docs/protocol.md: size limits, structural pre-check, msgpack parse
 * (one object, no trailing bytes), field-table walk (types, ranges, duplicate keys rejected,
 * unknown keys ignored), descriptors checked against the frames, tensors reassembled into
 * aligned buffers (one memcpy each). Returns:
 *   0               *out = message (returns owned: fs_wire_msg_free)
 *   FS_EUNSUPPORTED the envelope's protocol major `v` is not FS_WIRE_PROTO: the caller answers
 *                   ERROR{code:"version", supported:[FS_WIRE_PROTO_MIN, FS_WIRE_PROTO_MAX]}
 *                   (*peer_version, if not NULL, receives `v`)
 *   FS_EFORMAT      malformed bytes (garbage: count it against the peer)
 *   FS_EPROTO       well-formed MessagePack that violates the schema
 *   FS_ENOMEM
 * d names the field and the problem. MODEL_CHUNK data points into frames[1] (borrowed: valid only
 * while the input frames are; the link layer keeps them alive until fs_wire_msg_free). */
FS_MUST_CHECK int fs_wire_decode(const fs_wire_buf *frames, size_t n, const fs_wire_limits *lim,
                                 fs_wire_msg **out, uint64_t *peer_version, fs_diag *d);

/* The structural pre-check alone (exposed for the fuzzer and tests): 0 if buf is exactly one
 * MessagePack object with depth <= max_depth, <= max_objects objects and every declared length
 * satisfiable by the remaining bytes; FS_EFORMAT otherwise. */
int fs_mp_precheck(const uint8_t *buf, size_t len, unsigned max_depth, size_t max_objects);

/* Fills `m` as ERROR{code:"version", text, supported:[MIN, MAX]}. */
void fs_wire_make_version_error(fs_wire_msg *m, uint64_t peer_version);

/* BLAKE2b-256 of a byte string (crypto_generichash, no key). */
void fs_wire_digest(const void *data, size_t len, uint8_t out[FS_WIRE_DIGEST_BYTES]);

/* Writes the digest as 64 hex characters + NUL. */
void fs_wire_digest_hex(const uint8_t digest[FS_WIRE_DIGEST_BYTES], char out[65]);

/* ---- per-peer session state (semantic checks after decoding) -------------------------------- */

/* What a receiver expects from one peer. Fields with the check_* flag off are not checked.
 * Rules (docs/protocol.md "Session rules"):
 *   - HELLO (agent) and WELCOME (coordinator) start a new sequence epoch: accepted with any seq,
 *     they set last_seq (a restarted peer counts from 1 again).
 *   - any other message with seq <= last_seq is a replay/duplicate: dropped and counted.
 *   - job-scoped types (JOB_ACCEPT, JOB_DECLINE, MODEL_REQ, MODEL_CHUNK, COMPUTE_REQ,
 *     COMPUTE_REPLY) must carry the expected job; COMPUTE_REQ / COMPUTE_REPLY also the expected
 *     round and step. HEARTBEAT, ERROR and BYE may carry an empty job or the expected one.
 *   - JOB_OFFER is accepted for any job (the receiver decides and then sets `job`).
 * Thread: not synchronised; one owner (the thread that receives from this peer). */
typedef struct {
    bool check_job;
    char job[FS_WIRE_NAME_MAX + 1];
    bool check_round;
    uint32_t round;
    bool check_step;
    uint32_t step;
    bool have_seq;
    uint64_t last_seq;
    /* counters */
    uint64_t n_accepted;
    uint64_t n_replays;  /* seq already seen: dropped */
    uint64_t n_rejected; /* wrong job/round/step */
    uint64_t n_garbage;  /* undecodable messages (fs_wire_session_garbage) */
    unsigned garbage_threshold; /* fs_wire_session_garbage returns true at this count (default 16) */
} fs_wire_session;

void fs_wire_session_init(fs_wire_session *s);
/* Sets the expected job/round/step (and turns the checks on). job may be "" for no job. */
void fs_wire_session_expect(fs_wire_session *s, const char *job, uint32_t round, uint32_t step);
/* 0: accept (last_seq updated); FS_EAGAIN: replay/duplicate, drop silently (counted);
 * FS_EPROTO: wrong job/round/step, d says which (counted; answer ERROR{code:"stale"}). */
int fs_wire_session_check(fs_wire_session *s, const fs_wire_msg *m, fs_diag *d);
/* Counts one undecodable message. Returns true if the peer crossed the garbage threshold and
 * should be disconnected/quarantined (STYLE C12). */
bool fs_wire_session_garbage(fs_wire_session *s);

/* ---- model transfer: MODEL_REQ / MODEL_CHUNK ------------------------------------------------ */

/* Receiver side: a buffer sized from the EXPECTED total (from JOB_OFFER), filled chunk by chunk in
 * order, verified by digest at the end. Never sized from a size a chunk declares. */
typedef struct {
    uint8_t digest[FS_WIRE_DIGEST_BYTES];
    uint64_t total;
    uint64_t received; /* bytes [0, received) are filled */
    uint8_t *buf;      /* total bytes, 64-byte aligned, free with fs_free; meaningful only after
                        * fs_model_rx_finish returned 0 (then the caller may take it) */
} fs_model_rx;

/* 0, FS_EINVAL (total 0 or > max_bytes) or FS_ENOMEM. */
FS_MUST_CHECK int fs_model_rx_init(fs_model_rx *rx, const uint8_t digest[FS_WIRE_DIGEST_BYTES],
                                   uint64_t expected_total, uint64_t max_bytes, fs_diag *d);
/* Adds a decoded MODEL_CHUNK: digest and total must equal the expected ones and offset must be
 * `received` (in-order transfer). 0 or FS_EPROTO (d says why). */
FS_MUST_CHECK int fs_model_rx_add(fs_model_rx *rx, const fs_wire_msg *chunk, fs_diag *d);
/* Next request to send: fills `req` as MODEL_REQ for up to `len` bytes from `received`.
 * Returns false when everything has been received. */
bool fs_model_rx_next_req(const fs_model_rx *rx, uint64_t len, fs_wire_msg *req);
/* Once received == total: verifies the digest. 0 or FS_EAUTH (digest mismatch; the buffer is
 * wiped) or FS_EAGAIN (not complete yet). */
FS_MUST_CHECK int fs_model_rx_finish(fs_model_rx *rx, fs_diag *d);
void fs_model_rx_free(fs_model_rx *rx);

/* Sender side: fills `chunk` as MODEL_CHUNK answering `req` from the model blob (borrowed).
 * 0 or FS_EPROTO if req's digest differs or its range is outside [0, total) (d says why). The
 * length is clipped to max_len and to the end of the blob. */
FS_MUST_CHECK int fs_model_make_chunk(const fs_wire_msg *req, const uint8_t *blob, uint64_t total,
                                      const uint8_t digest[FS_WIRE_DIGEST_BYTES], size_t max_len,
                                      fs_wire_msg *chunk, fs_diag *d);

/* ---- streamed replies: COMPUTE_HEAD + COMPUTE_PART ---------------------------------------- */

/* A reply too large to hold whole at the receiver travels as a COMPUTE_HEAD (count, scalars, the
 * tensors' names, dtypes and shapes, the number of parts) followed by `parts` COMPUTE_PART
 * messages, each carrying the next bytes of the announced tensors in announcement order, in slices
 * of at most one chunk (one raw frame each). The receiver adds each part into its sums and frees
 * it, so it holds one part per peer in flight instead of the whole reply. docs/protocol.md §4b. */

#define FS_WIRE_STREAM_MAX_SLICES 64 /* slices per part the sender makes */

/* Sender side. */
typedef struct {
    const fs_wire_msg *reply; /* borrowed */
    size_t part_bytes, chunk;
    uint32_t parts, next;
    size_t t;                 /* cursor: tensor, byte offset in it */
    uint64_t off;
    fs_wire_slice slices[FS_WIRE_STREAM_MAX_SLICES];
} fs_wire_stream_tx;

/* Prepares sending `reply` (a COMPUTE_REPLY with tensors; borrowed until the last part was sent)
 * as parts of at most `part_bytes` bytes (>= 1; a part holds at least one slice) in slices of at
 * most `chunk` bytes, slice boundaries on element boundaries. Fills *head (COMPUTE_HEAD; job,
 * round, step, count, scalars and tensors borrowed from reply). 0 or FS_EINVAL. */
FS_MUST_CHECK int fs_wire_stream_tx_init(fs_wire_stream_tx *tx, const fs_wire_msg *reply,
                                         size_t part_bytes, size_t chunk, fs_wire_msg *head,
                                         fs_diag *d);
/* Fills *part with the next COMPUTE_PART (slices point into tx and the reply's tensors). Returns
 * false when all parts were made. */
bool fs_wire_stream_tx_next(fs_wire_stream_tx *tx, fs_wire_msg *part);

/* Receiver side: checks that the parts arrive in order, each exactly once, slice by slice
 * continuing exactly where the previous one stopped, on element boundaries, and that the last
 * part completes every announced tensor. One per peer and reply. */
typedef struct {
    uint32_t parts, next;
    size_t n;                  /* announced tensors */
    struct fs_wire_stream_t *t; /* their names and sizes (owned) */
    size_t cur;                /* cursor: tensor, bytes of it received */
    uint64_t off;
    uint64_t received, total;  /* bytes */
} fs_wire_stream_rx;

/* Starts receiving the reply announced by `head` (COMPUTE_HEAD, borrowed: names are copied).
 * max_total: ceiling on the announced bytes. 0, FS_EPROTO or FS_ENOMEM. */
FS_MUST_CHECK int fs_wire_stream_rx_begin(fs_wire_stream_rx *rx, const fs_wire_msg *head,
                                          uint64_t max_total, fs_diag *d);
/* Checks a whole COMPUTE_PART before the caller uses any of it. 0: the slices are the next bytes
 * of the announced tensors (the caller may add them) and rx advanced; FS_EPROTO: rx unchanged,
 * d says which part/slice/tensor and why. */
FS_MUST_CHECK int fs_wire_stream_rx_part(fs_wire_stream_rx *rx, const fs_wire_msg *part,
                                         fs_diag *d);
/* Every announced byte has arrived (after the last part, or at once if nothing was announced). */
bool fs_wire_stream_rx_done(const fs_wire_stream_rx *rx);
void fs_wire_stream_rx_free(fs_wire_stream_rx *rx); /* NULL-safe; leaves rx zeroed */

#endif
