// backend.c - the backend registry: fg_backend_create picks an implementation by name
// ("cpu"; "cuda" when built with FG_HAVE_CUDA), plus destroy and name. The tensor helpers
// declared in backend.h are in tensor.c (so code that only needs views does not link the
// CUDA constructor). Who calls it: the CLI, the model tests, embedders.
#include "backend/backend.h"

#include "base/status.h"

#include <string.h>

fg_status fg_backend_create(const char *name, const fg_backend_opts *opts, fg_backend **out) {
    static const fg_backend_opts k_default = {0, 0};
    if (!out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_backend_create: out is NULL");
    if (!opts)
        opts = &k_default;
    if (!name)
        name = "cpu";
    if (strcmp(name, "cpu") == 0)
        return fg_backend_cpu_create(opts, out);
    if (strcmp(name, "cuda") == 0) {
#ifdef FG_HAVE_CUDA
        return fg_backend_cuda_create(opts, out);
#else
        return FG_FAIL(FG_ERR_UNSUPPORTED, "forge was built without CUDA");
#endif
    }
    return FG_FAIL(FG_ERR_UNSUPPORTED, "unknown backend '%s' (expected cpu or cuda)", name);
}

void fg_backend_destroy(fg_backend *be) {
    if (be)
        be->ops->destroy(be);
}

const char *fg_backend_name(const fg_backend *be) { return be ? be->ops->name : "none"; }
