/*
 * fs_fed.h — the compression engine's data interface carried over the wire (ALGORITHMS.md g).
 *
 * Coordinator side: fs_fed_source is an fs_source whose every request becomes one COMPUTE_REQ
 * broadcast to the job's active agents; their COMPUTE_REPLY sums are added (in double, as they
 * arrive) and divided by nobody: the engine divides by the summed count, exactly as with a local
 * source. Transport, deadlines and dropping agents belong to the caller (fs_fed_transport).
 *
 * Agent side: fs_fed_serve answers one COMPUTE_REQ from its local data with fs_local. Everything it
 * puts in a reply is a sum over samples, a count, or a histogram: never a sample or a per-sample
 * value, and no reply grows with the number of samples.
 *
 * Compute kinds (COMPUTE_REQ.kind):
 *   "student"  tensors: "arch.json" (U8, the fedslim.arch JSON), "adaptors" (U8, lines
 *              "pre|after CONV"), then every parameter (F32). Reply: count only.
 *   "loss"     args: objective, temperature, mode, want_grad, batch, seed, step, pad, hflip,
 *              total_n; tensors: changed parameters, "trainable" (I32 parameter indices).
 *              Reply: scalars loss_sum; tensors "grad/NAME" (F32 sums) when want_grad.
 *   "moments"  args: nodes (node indices); tensors: changed parameters. Reply: "sum", "sumsq"
 *              (F64, per channel of each node's input), "count" (I64 per node).
 *   "hist"     args: nodes, lo, hi, bins; tensors: changed parameters. Reply: "counts" (I64).
 *   "eval"     tensors: changed parameters. Reply: scalars n, n_labeled, correct, agree, loss_sum.
 *   "local"    (FedAvg) args: objective, temperature, mode, batch, seed, step (the round), pad,
 *              hflip, total_n, steps (E), lr, momentum, weight_decay; tensors: changed parameters,
 *              "trainable". The agent runs E local SGD steps from the announced weights (fresh
 *              optimizer, fs_local_update) and restores them. Reply: count = its n_k (0 if its
 *              minibatch share is empty), scalars loss_sum and loss_count (its first local step),
 *              tensors "delta/NAME" (F32, n_k * (w_after - w_before)) for every trainable
 *              parameter: the size of the trainable set, whatever n_k is.
 *
 * Streamed replies: a "loss" request with want_grad, and every "local" request, carry the arg
 * `stream` (bytes per part) when the transport asks for it (fs_fed_transport.stream_bytes); the
 * agent then sends a gradient (or delta) reply
 * larger than one part as COMPUTE_HEAD + COMPUTE_PART messages (fs_fed_send_reply), and the
 * coordinator adds each part into its double sums as it arrives (fs_fed_feed), holding one model
 * sized sum plus the parts in flight instead of one reply per agent (docs/federation.md).
 */
#ifndef FS_FED_H
#define FS_FED_H

#include "fs_link.h"
#include "fs_local.h"
#include "fs_wire.h"

/* ---- coordinator side ---------------------------------------------------------------------- */

/* Called by the source for every reply that arrives; returns 0 to accept it. Through fs_fed_feed
 * it also sees streamed replies: the COMPUTE_HEAD (count, scalars, the tensors announced with
 * data NULL) before any of their bytes, then every COMPUTE_PART after fs_wire_stream_rx_part
 * validated it against the head. */
typedef int (*fs_fed_reply_fn)(void *cb_ud, const char *agent, const fs_wire_msg *reply,
                               fs_diag *d);

typedef struct {
    /* Sends `req` (kind, args and tensors filled; job/round/step/seq are the transport's) to every
     * active agent of the job and passes each reply to on_reply until every active agent has
     * answered or the step deadline passed (late agents are dropped from the job by the transport,
     * which records the phase and round). Fails when fewer than the quorum answered. */
    int (*exchange)(void *ud, fs_wire_msg *req, fs_fed_reply_fn on_reply, void *cb_ud,
                    fs_diag *d);
    /* Total samples of the agents currently active (for minibatch shares). */
    int64_t (*total_samples)(void *ud);
    void *ud;
    /* Bytes per COMPUTE_PART the agents are asked to stream gradient replies in (0: whole
     * COMPUTE_REPLY messages). exchange may then return FS_EAGAIN: an agent left after part of
     * its reply had been added, so the sums are wrong; the source zeroes them and asks again
     * (at most FS_FED_RETRIES times) without that agent. */
    size_t stream_bytes;
} fs_fed_transport;

#define FS_FED_RETRIES 3
/* The coordinator's ZMQ_RCVHWM (messages per agent): with streamed replies, the bytes queued per
 * agent are at most about this many parts (plus the kernel's socket buffers). */
#define FS_FED_COORD_RCVHWM 4
#define FS_FED_MORE 1 /* fs_fed_feed: accepted, more parts of this reply to come */

/* One agent's reply in flight, for transports (zero it, or fs_fed_inflight_reset, per exchange). */
typedef struct {
    int state;       /* 0 nothing yet, 1 streaming, 2 complete */
    int touched;     /* some of it was added into the sums (a head or part was accepted) */
    fs_wire_stream_rx rx;
} fs_fed_inflight;
void fs_fed_inflight_reset(fs_fed_inflight *st);

/* Passes one COMPUTE_REPLY / COMPUTE_HEAD / COMPUTE_PART from `agent` to `fn` after checking it
 * belongs where it arrives (a part only after a head, in order, exactly once, within the announced
 * tensors, which total at most max_total bytes). Returns 0 when the agent's reply is complete,
 * FS_FED_MORE when more parts are expected, or an error with d naming the agent and the problem
 * (the caller drops the agent; if st->touched the sums are incomplete: see stream_bytes).
 * This is the one path replies take into the sums: the coordinator and bench/bench_round use it. */
int fs_fed_feed(fs_fed_inflight *st, const char *agent, const fs_wire_msg *m, fs_fed_reply_fn fn,
                void *cb_ud, uint64_t max_total, fs_diag *d);

/* returns owned: fs_source_free. borrows the transport struct's ud for its lifetime. */
int fs_fed_source(fs_source **out, const fs_fed_transport *t, fs_diag *d);
/* Forget what the agents hold: the next request re-sends the graph and every parameter (after an
 * agent joined or the coordinator restarted). */
void fs_fed_source_reset(fs_source *s);

/* Sends `req` (borrowed) to each of the n peers from ONE shared copy of its tensor bytes, with
 * zero-copy sends: the coordinator holds one copy of the broadcast however many agents there are
 * (a copying send queues one per agent in libzmq until it is on the wire). The copy is freed,
 * possibly on a ZeroMQ I/O thread, when the last peer's message has left. rc[i] receives each
 * send's result (fs_link_server_send_zc). Returns 0, or FS_ENOMEM with nothing sent. */
int fs_fed_broadcast(fs_link_server *link, const fs_link_peer *peers, size_t n,
                     const fs_wire_msg *req, int *rc, fs_diag *d);

/* ---- agent side ---------------------------------------------------------------------------- */

typedef struct fs_fed_agent fs_fed_agent;

/* borrows teacher and data (they outlive it). site_tag: a per-site sampling stream. */
int fs_fed_agent_create(fs_fed_agent **out, const fs_model *teacher, const fs_dataset *data,
                        int max_batch, uint64_t site_tag, fs_diag *d);
void fs_fed_agent_free(fs_fed_agent *a);
/* Answers one COMPUTE_REQ: fills *reply (type, kind-specific scalars and tensors; memory owned by
 * the agent until the next call or free). Returns 0, or an error with d saying why (the caller
 * answers ERROR). */
int fs_fed_serve(fs_fed_agent *a, const fs_wire_msg *req, fs_wire_msg *reply, fs_diag *d);

/* Sends `reply` (borrowed; job, round and step already set) to the answer of `req` through `link`:
 * as one COMPUTE_REPLY, or — when req asks for streaming (arg "stream" = bytes per part) and the
 * reply's tensors are larger than one part — as a COMPUTE_HEAD followed by COMPUTE_PART messages
 * in slices of at most `chunk` bytes (the link's chunk size). Parts wait for room in the link's
 * queue (its send timeout, retried up to about a minute). 0 or the link's error. */
int fs_fed_send_reply(fs_link_client *link, const fs_wire_msg *req, const fs_wire_msg *reply,
                      size_t chunk, fs_diag *d);

#endif
