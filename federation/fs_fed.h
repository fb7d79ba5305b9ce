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
 */
#ifndef FS_FED_H
#define FS_FED_H

#include "fs_local.h"
#include "fs_wire.h"

/* ---- coordinator side ---------------------------------------------------------------------- */

/* Called by the source for every reply that arrives; returns 0 to accept it. */
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
} fs_fed_transport;

/* returns owned: fs_source_free. borrows the transport struct's ud for its lifetime. */
int fs_fed_source(fs_source **out, const fs_fed_transport *t, fs_diag *d);
/* Forget what the agents hold: the next request re-sends the graph and every parameter (after an
 * agent joined or the coordinator restarted). */
void fs_fed_source_reset(fs_source *s);

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

#endif
