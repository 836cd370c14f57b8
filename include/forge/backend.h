// forge/backend.h - compute backends as the public API sees them: create one by name ("cpu",
// "cuda"), ask what it is, destroy it. A model is loaded onto one backend (forge/model.h).
// The op interface itself is internal (src/backend/backend.h).
#ifndef FORGE_BACKEND_H
#define FORGE_BACKEND_H

#include "forge/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fg_backend fg_backend;

typedef struct fg_backend_opts {
    int32_t n_threads; // CPU: worker threads (0: all cores)
    int32_t device;    // GPU index
    bool use_ref;      // CPU: the scalar reference kernels instead of the SIMD ones (tests)
} fg_backend_opts;

// name: "cpu", "cuda" or "auto" (the GPU when one is usable, else the CPU).
// FG_ERR_UNSUPPORTED for an unknown name or a backend not built in; FG_ERR_DEVICE when the
// device can't be used (no driver, no GPU).
fg_status fg_backend_create(const char *name, const fg_backend_opts *opts, fg_backend **out);
void fg_backend_destroy(fg_backend *be);
const char *fg_backend_name(const fg_backend *be);
// One line for people: "cpu (16 threads, avx2)", "cuda: NVIDIA H100 80GB HBM3 (device 0, 79.2 GiB)".
const char *fg_backend_describe(const fg_backend *be);
// Device memory (bytes): free and total. The CPU reports 0 for both (no separate pool).
fg_status fg_backend_mem_info(fg_backend *be, uint64_t *free_bytes, uint64_t *total_bytes);
// The device's copy bandwidth in GB/s (bytes read + written), measured over a copy of `bytes`
// (benchmarks: the decode bound is this over the bytes a token reads).
fg_status fg_backend_copy_bandwidth(fg_backend *be, size_t bytes, double *gb_per_s);

#ifdef __cplusplus
}
#endif

#endif // FORGE_BACKEND_H
