// comm_nccl.cu - the NCCL communicator (backend/comm.h, "nccl"): ncclAllReduce (float32 sum, in
// place) on the CUDA backend's stream, so it is ordered with the step's kernels and captured
// into the step's CUDA graph like them. Creation: the single-process group (one rank per GPU,
// ncclGetUniqueId + ncclCommInitRank for every rank inside ncclGroupStart/End, the pattern of
// NCCL's "one thread, several devices" example) and the pieces of a multi-process launch (the
// unique id, one rank). NVLink SHARP/multicast is kept off: NCCL_NVLS_ENABLE=0 is set before
// the first init unless the user set it (docs/ARCHITECTURE.md says why).
// Failures do not hang: the backend's step_wait polls poll() (ncclCommGetAsyncError and
// aborts requested by a failed rank) and aborts the communicator after the timeout, which makes
// kernels waiting on a dead peer return. Without NCCL (a build without nccl.h, or HIP, where
// RCCL would take its place) the entry points are FG_ERR_UNSUPPORTED saying so.
// Who calls it: registry.c (fg_comm_create_group), backend.c through the ops table.
#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "backend/comm.h"
#include "base/util.h"
}

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(FG_HAVE_NCCL) && !defined(__HIPCC__)
#include <nccl.h>

static_assert(sizeof(ncclUniqueId) == FG_NCCL_ID_BYTES, "ncclUniqueId size");

typedef struct nccl_ctx {
    ncclComm_t comm;
    int device;
    int abort_req; // set by any thread (__atomic), acted on by the owner's poll
    bool aborted;  // ncclCommAbort was called: nothing else may use comm
} nccl_ctx;

static fg_status nccl_error(ncclResult_t r, ncclComm_t comm, const char *what, int32_t rank) {
    const char *last = comm ? ncclGetLastError(comm) : NULL;
    return fg_fail(FG_ERR_DEVICE, "nccl: %s failed on rank %d: %s%s%s", what, rank, ncclGetErrorString(r),
                   last && *last ? ": " : "", last && *last ? last : "");
}

static fg_status aborted_error(int32_t rank) {
    return fg_fail(FG_ERR_DEVICE, "nccl: rank %d: the communicator was aborted (another rank failed or timed out)",
                   rank);
}

static void do_abort(nccl_ctx *n) {
    if (!n->aborted) {
        FG_GPU_IGNORE(gpuSetDevice(n->device));
        (void)ncclCommAbort(n->comm);
        n->aborted = true;
    }
}

static fg_status nccl_all_reduce(fg_comm *c, fg_backend *be, fg_tensor *x) {
    nccl_ctx *n = (nccl_ctx *)c->ctx;
    fg_cuda *cu = fg_cuda_ctx(be);
    if (n->aborted || __atomic_load_n(&n->abort_req, __ATOMIC_ACQUIRE))
        return aborted_error(c->rank);
    const size_t count = (size_t)x->ne[0] * (size_t)x->ne[1];
    ncclResult_t r = ncclAllReduce(x->data, x->data, count, ncclFloat32, ncclSum, n->comm, cu->stream);
    if (r != ncclSuccess) {
        cu->sticky = 1;
        return nccl_error(r, n->comm, "ncclAllReduce", c->rank);
    }
    return FG_OK;
}

static void nccl_abort(fg_comm *c) {
    nccl_ctx *n = (nccl_ctx *)c->ctx;
    __atomic_store_n(&n->abort_req, 1, __ATOMIC_RELEASE);
}

static fg_status nccl_poll(fg_comm *c) {
    nccl_ctx *n = (nccl_ctx *)c->ctx;
    if (n->aborted)
        return aborted_error(c->rank);
    if (__atomic_load_n(&n->abort_req, __ATOMIC_ACQUIRE)) {
        do_abort(n);
        return aborted_error(c->rank);
    }
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(n->comm, &async);
    if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
        fg_status st = nccl_error(r != ncclSuccess ? r : async, n->comm, "a collective (asynchronous error)", c->rank);
        do_abort(n);
        return st;
    }
    return FG_OK;
}

// Destroyed after every rank's backend finished its work (the group tears down its models
// first); an aborted or abort-requested communicator is aborted, not finalized, since
// finalizing waits for peers that may be gone.
static void nccl_destroy(fg_comm *c) {
    nccl_ctx *n = (nccl_ctx *)c->ctx;
    if (n) {
        if (__atomic_load_n(&n->abort_req, __ATOMIC_ACQUIRE))
            do_abort(n);
        if (!n->aborted && n->comm) {
            FG_GPU_IGNORE(gpuSetDevice(n->device));
            (void)ncclCommDestroy(n->comm);
        }
        free(n);
    }
    free(c);
}

static const fg_comm_ops k_nccl_ops = {
    "nccl", "cuda", nccl_destroy, nccl_all_reduce, nccl_abort, nccl_poll,
};

// Forge's NCCL settings, before the first communicator: NVLink SHARP (multicast) off unless
// the user chose otherwise (setenv without overwrite).
static void nccl_env(void) { setenv("NCCL_NVLS_ENABLE", "0", 0); }

static fg_status wrap(ncclComm_t raw, int device, int32_t rank, int32_t size, double timeout_s, fg_comm **out) {
    fg_comm *c = (fg_comm *)calloc(1, sizeof *c);
    nccl_ctx *n = (nccl_ctx *)calloc(1, sizeof *n);
    if (!c || !n) {
        free(c);
        free(n);
        return fg_fail(FG_ERR_NOMEM, "nccl: out of memory");
    }
    n->comm = raw;
    n->device = device;
    c->ops = &k_nccl_ops;
    c->rank = rank;
    c->size = size;
    c->timeout_s = timeout_s > 0 ? timeout_s : FG_TP_DEFAULT_TIMEOUT_S;
    c->ctx = n;
    *out = c;
    return FG_OK;
}

// One small all-reduce on every rank, waited for: connections are made now (at load, not in
// the first captured step) and a broken setup fails here, naming the rank.
static fg_status warm_up(fg_backend *const *bes, fg_comm **comms, int32_t n) {
    float *buf[FG_TP_MAX] = {0};
    fg_status st = FG_OK;
    for (int32_t r = 0; r < n && st == FG_OK; r++) {
        fg_cuda *cu = fg_cuda_ctx(bes[r]);
        void *p = NULL;
        if (gpuSetDevice(cu->device) != gpuSuccess || gpuMalloc(&p, 256 * sizeof(float)) != gpuSuccess ||
            gpuMemsetAsync(p, 0, 256 * sizeof(float), cu->stream) != gpuSuccess)
            st = fg_fail(FG_ERR_DEVICE, "nccl: warm-up buffer on device %d: %s", cu->device,
                         gpuGetErrorString(gpuGetLastError()));
        buf[r] = (float *)p;
    }
    if (st == FG_OK) {
        ncclResult_t r0 = ncclGroupStart();
        for (int32_t r = 0; r < n && r0 == ncclSuccess; r++) {
            fg_cuda *cu = fg_cuda_ctx(bes[r]);
            nccl_ctx *nc = (nccl_ctx *)comms[r]->ctx;
            r0 = ncclAllReduce(buf[r], buf[r], 256, ncclFloat32, ncclSum, nc->comm, cu->stream);
        }
        ncclResult_t r1 = ncclGroupEnd();
        if (r0 != ncclSuccess || r1 != ncclSuccess)
            st = nccl_error(r0 != ncclSuccess ? r0 : r1, NULL, "the warm-up all-reduce", 0);
    }
    double t0 = fg_time_s();
    for (int32_t r = 0; r < n && st == FG_OK; r++) {
        fg_cuda *cu = fg_cuda_ctx(bes[r]);
        FG_GPU_IGNORE(gpuSetDevice(cu->device));
        for (;;) {
            gpuError_t q = gpuStreamQuery(cu->stream);
            if (q == gpuSuccess)
                break;
            if (q != gpuErrorNotReady) {
                st = fg_fail(FG_ERR_DEVICE, "nccl: warm-up all-reduce on device %d: %s", cu->device,
                             gpuGetErrorString(q));
                break;
            }
            if ((st = nccl_poll(comms[r])) != FG_OK)
                break;
            if (fg_time_s() - t0 > comms[r]->timeout_s) {
                st = fg_fail(FG_ERR_DEVICE, "nccl: the warm-up all-reduce did not finish within %.0f s (rank %d)",
                             comms[r]->timeout_s, r);
                break;
            }
            usleep(100);
        }
    }
    for (int32_t r = 0; r < n; r++)
        if (buf[r]) {
            FG_GPU_IGNORE(gpuSetDevice(fg_cuda_ctx(bes[r])->device));
            FG_GPU_IGNORE(gpuStreamSynchronize(fg_cuda_ctx(bes[r])->stream));
            FG_GPU_IGNORE(gpuFree(buf[r]));
        }
    return st;
}

extern "C" fg_status fg_comm_nccl_create_group(fg_backend *const *bes, int32_t n, double timeout_s,
                                               fg_comm **comms) {
    if (!bes || !comms || n < 1 || n > FG_TP_MAX)
        return fg_fail(FG_ERR_INVALID_ARG, "nccl: %d ranks (1 to %d)", n, FG_TP_MAX);
    for (int32_t r = 0; r < n; r++) {
        if (strcmp(bes[r]->ops->name, "cuda") != 0)
            return fg_fail(FG_ERR_INVALID_ARG, "nccl: rank %d runs on the %s backend, not cuda", r, bes[r]->ops->name);
        for (int32_t q = 0; q < r; q++)
            if (fg_cuda_ctx(bes[q])->device == fg_cuda_ctx(bes[r])->device)
                return fg_fail(FG_ERR_INVALID_ARG, "nccl: ranks %d and %d are both on GPU %d (one rank per GPU)", q, r,
                               fg_cuda_ctx(bes[r])->device);
    }
    nccl_env();
    ncclUniqueId id;
    ncclResult_t res = ncclGetUniqueId(&id);
    if (res != ncclSuccess)
        return nccl_error(res, NULL, "ncclGetUniqueId", 0);
    ncclComm_t raw[FG_TP_MAX] = {0};
    res = ncclGroupStart();
    int32_t failed_rank = 0;
    for (int32_t r = 0; r < n && res == ncclSuccess; r++) {
        failed_rank = r;
        if (gpuSetDevice(fg_cuda_ctx(bes[r])->device) != gpuSuccess) {
            res = ncclUnhandledCudaError;
            break;
        }
        res = ncclCommInitRank(&raw[r], n, id, r);
    }
    ncclResult_t end = ncclGroupEnd();
    if (res == ncclSuccess && end != ncclSuccess) {
        res = end;
        failed_rank = 0;
    }
    if (res != ncclSuccess) {
        fg_status st = nccl_error(res, NULL, "ncclCommInitRank", failed_rank);
        for (int32_t r = 0; r < n; r++)
            if (raw[r])
                (void)ncclCommAbort(raw[r]);
        return st;
    }
    fg_comm *c[FG_TP_MAX] = {0};
    fg_status st = FG_OK;
    for (int32_t r = 0; r < n && st == FG_OK; r++)
        st = wrap(raw[r], fg_cuda_ctx(bes[r])->device, r, n, timeout_s, &c[r]);
    if (st == FG_OK)
        st = warm_up(bes, c, n);
    if (st != FG_OK) {
        for (int32_t r = 0; r < n; r++) {
            if (c[r]) {
                nccl_abort(c[r]);
                nccl_destroy(c[r]);
            } else if (raw[r]) {
                (void)ncclCommAbort(raw[r]);
            }
        }
        return st;
    }
    for (int32_t r = 0; r < n; r++)
        comms[r] = c[r];
    return FG_OK;
}

extern "C" fg_status fg_comm_nccl_unique_id(uint8_t id[FG_NCCL_ID_BYTES]) {
    nccl_env();
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return nccl_error(r, NULL, "ncclGetUniqueId", 0);
    memcpy(id, u.internal, FG_NCCL_ID_BYTES);
    return FG_OK;
}

// One rank of a multi-process group: blocks until every rank has joined (NCCL's bootstrap
// connects to the address inside the id).
extern "C" fg_status fg_comm_nccl_create(fg_backend *be, int32_t rank, int32_t size,
                                         const uint8_t id[FG_NCCL_ID_BYTES], double timeout_s, fg_comm **out) {
    if (!be || !out || !id || size < 1 || rank < 0 || rank >= size || strcmp(be->ops->name, "cuda") != 0)
        return fg_fail(FG_ERR_INVALID_ARG, "nccl: rank %d of %d on a %s backend", rank, size,
                       be ? be->ops->name : "NULL");
    nccl_env();
    ncclUniqueId u;
    memcpy(u.internal, id, FG_NCCL_ID_BYTES);
    fg_cuda *cu = fg_cuda_ctx(be);
    if (gpuSetDevice(cu->device) != gpuSuccess)
        return fg_fail(FG_ERR_DEVICE, "nccl: cannot use device %d", cu->device);
    ncclComm_t raw = NULL;
    ncclResult_t r = ncclCommInitRank(&raw, size, u, rank);
    if (r != ncclSuccess)
        return nccl_error(r, NULL, "ncclCommInitRank", rank);
    fg_status st = wrap(raw, cu->device, rank, size, timeout_s, out);
    if (st != FG_OK)
        (void)ncclCommAbort(raw);
    return st;
}

#else // no NCCL in this build

static fg_status no_nccl(void) {
#if defined(__HIPCC__)
    return fg_fail(FG_ERR_UNSUPPORTED, "tensor parallelism on the GPU needs NCCL; this HIP build has no RCCL "
                                       "communicator");
#else
    return fg_fail(FG_ERR_UNSUPPORTED, "tensor parallelism on the GPU needs NCCL; forge was built without it "
                                       "(nccl.h not found: make NCCL=1 NCCL_HOME=<dir with include/nccl.h>)");
#endif
}

extern "C" fg_status fg_comm_nccl_create_group(fg_backend *const *bes, int32_t n, double timeout_s,
                                               fg_comm **comms) {
    return no_nccl();
}
extern "C" fg_status fg_comm_nccl_unique_id(uint8_t id[FG_NCCL_ID_BYTES]) { return no_nccl(); }
extern "C" fg_status fg_comm_nccl_create(fg_backend *be, int32_t rank, int32_t size,
                                         const uint8_t id[FG_NCCL_ID_BYTES], double timeout_s, fg_comm **out) {
    return no_nccl();
}

#endif
