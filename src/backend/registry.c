// registry.c - fg_backend_create: the table of backends this build has ("cpu" always, "cuda"
// when built with FG_HAVE_CUDA) and "auto" (the GPU when one is usable, else the CPU). It is
// its own library above the backends so that no backend links another (the CUDA backend uses
// the shared backend code; the shared code never calls the CUDA backend).
// Also fg_comm_create_group: the communicator of a tensor-parallel group for its backends.
// Who calls it: the CLI, the server, the model (tensor-parallel groups), tests, embedders.
#include "backend/backend.h"

#include "backend/comm.h"
#include "base/status.h"

#include <string.h>

#ifdef FG_HAVE_CUDA
fg_status fg_backend_cuda_create(const fg_backend_opts *opts, fg_backend **out);
#endif

typedef struct backend_entry {
    const char *name;
    fg_status (*create)(const fg_backend_opts *opts, fg_backend **out);
} backend_entry;

static const backend_entry k_backends[] = {
#ifdef FG_HAVE_CUDA
    {"cuda", fg_backend_cuda_create},
#endif
    {"cpu", fg_backend_cpu_create},
};

fg_status fg_backend_create(const char *name, const fg_backend_opts *opts, fg_backend **out) {
    static const fg_backend_opts k_default = {0, 0, false};
    if (!out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_backend_create: out is NULL");
    if (!opts)
        opts = &k_default;
    if (!name)
        name = "cpu";
    if (strcmp(name, "auto") == 0) {
        // the first backend in the table that starts (the GPU before the CPU)
        fg_status st = FG_ERR_UNSUPPORTED;
        for (size_t i = 0; i < sizeof k_backends / sizeof k_backends[0]; i++)
            if ((st = k_backends[i].create(opts, out)) == FG_OK)
                return FG_OK;
        return st;
    }
    for (size_t i = 0; i < sizeof k_backends / sizeof k_backends[0]; i++)
        if (strcmp(name, k_backends[i].name) == 0)
            return k_backends[i].create(opts, out);
    if (strcmp(name, "cuda") == 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "forge was built without CUDA");
    return FG_FAIL(FG_ERR_UNSUPPORTED, "unknown backend '%s' (expected cpu or cuda)", name);
}

fg_status fg_comm_create_group(fg_backend *const *bes, int32_t n, double timeout_s, fg_comm **comms) {
    if (!bes || !comms || n < 1 || n > FG_TP_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "tensor parallel: %d ranks (1 to %d)", n, FG_TP_MAX);
    for (int32_t r = 1; r < n; r++)
        if (strcmp(bes[r]->ops->name, bes[0]->ops->name) != 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "tensor parallel: rank %d runs on %s, rank 0 on %s", r,
                           bes[r]->ops->name, bes[0]->ops->name);
    if (strcmp(bes[0]->ops->name, "cpu") == 0)
        return fg_comm_local_create_group(n, timeout_s, comms);
#ifdef FG_HAVE_CUDA
    if (strcmp(bes[0]->ops->name, "cuda") == 0)
        return fg_comm_nccl_create_group(bes, n, timeout_s, comms);
#endif
    return FG_FAIL(FG_ERR_UNSUPPORTED, "tensor parallel: no communicator for the %s backend", bes[0]->ops->name);
}
