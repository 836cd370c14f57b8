// comm.h - the communicator tensor parallelism reduces through: a group of `size` ranks, each
// with its own backend and model shard, and one collective, an in-place F32 sum over the ranks
// enqueued as an op of the current step (fg_op_all_reduce in backend.c). Implementations:
//   comm.c            "local": ranks are threads of one process on the CPU backend; the sum is
//                     taken in a fixed rank order behind a barrier (deterministic, every rank
//                     gets the same bits), the barrier has a timeout and can be aborted
//   cuda/comm_nccl.cu "nccl": ncclAllReduce on the CUDA backend's stream (libnccl from the CUDA
//                     toolkit); a stub saying so when the build has no NCCL
// Not here: who runs the ranks (src/model/tp_group.c), what is reduced (src/model/forward.c).
// Who calls it: backend.c (the op), the model's tensor-parallel group, registry.c (creation).
#ifndef FG_BACKEND_COMM_H
#define FG_BACKEND_COMM_H

#include "backend/backend.h"

typedef struct fg_comm fg_comm;

typedef struct fg_comm_ops {
    const char *name;    // "local", "nccl"
    const char *backend; // the backend whose tensors it reduces ("cpu", "cuda")
    void (*destroy)(fg_comm *c);
    // x = the sum of every rank's x, in place; x is F32 with contiguous rows (checked by
    // fg_op_all_reduce). Enqueued on be's queue: the CPU returns when the sum is done, a GPU
    // when it is launched. FG_ERR_DEVICE when a peer failed, the group was aborted or a rank
    // did not arrive within the timeout.
    fg_status (*all_reduce_sum)(fg_comm *c, fg_backend *be, fg_tensor *x);
    // Any thread: makes every rank's pending and later collectives fail instead of waiting
    // (a rank failed). Asynchronous: the owning rank acts on it in poll or its next collective.
    void (*abort)(fg_comm *c);
    // The rank's own thread, while it waits for a step: FG_OK, or the error that ended the
    // group (an abort, a peer's failure, an asynchronous NCCL error); NCCL aborts its
    // communicator here so that kernels waiting on a dead peer return.
    fg_status (*poll)(fg_comm *c);
} fg_comm_ops;

struct fg_comm {
    const fg_comm_ops *ops;
    int32_t rank, size;
    double timeout_s; // a collective (or a step containing one) waits at most this long
    void *ctx;        // the implementation's state
};

// Defaults and limits of tensor-parallel groups.
#define FG_TP_MAX 8                // ranks in one group
#define FG_TP_DEFAULT_TIMEOUT_S 120.0

// The in-process group of n ranks (threads of this process, CPU backend): comms[r] is rank r's
// handle; they share one state freed with the last handle. timeout_s <= 0: the default.
fg_status fg_comm_local_create_group(int32_t n, double timeout_s, fg_comm **comms);
void fg_comm_destroy(fg_comm *c); // NULL: no-op
static inline void fg_comm_abort(fg_comm *c) {
    if (c)
        c->ops->abort(c);
}
static inline fg_status fg_comm_poll(fg_comm *c) { return c ? c->ops->poll(c) : FG_OK; }

// NCCL (src/backend/cuda/comm_nccl.cu; FG_ERR_UNSUPPORTED in a build without CUDA or NCCL).
// The single-process group: one communicator per backend (bes[r] drives GPU r's rank), made
// with ncclGetUniqueId and ncclCommInitRank for every rank inside one ncclGroupStart/End.
fg_status fg_comm_nccl_create_group(fg_backend *const *bes, int32_t n, double timeout_s, fg_comm **comms);
// The pieces of a multi-process launch (docs/ARCHITECTURE.md, "multi-host"): rank 0 makes the
// id (NCCL's bootstrap address inside), hands its FG_NCCL_ID_BYTES bytes to every process
// (over TCP, a file, the launcher's environment), and each process creates its own rank.
#define FG_NCCL_ID_BYTES 128
fg_status fg_comm_nccl_unique_id(uint8_t id[FG_NCCL_ID_BYTES]);
fg_status fg_comm_nccl_create(fg_backend *be, int32_t rank, int32_t size, const uint8_t id[FG_NCCL_ID_BYTES],
                              double timeout_s, fg_comm **out);

// The group for these backends (registry.c, which knows which backends this build has): local
// for "cpu", NCCL for "cuda"; every backend of one kind. comms[r] belongs to bes[r].
fg_status fg_comm_create_group(fg_backend *const *bes, int32_t n, double timeout_s, fg_comm **comms);

#endif // FG_BACKEND_COMM_H
