// cuda_backend.cu - the CUDA backend: one device, one stream, created once; device memory is
// allocated at load (weights, KV pages, scratch) and never per token. This tranche provides
// the device lifecycle, buffers, copies and sticky error handling; the op kernels (matmul on
// quantized blocks, paged attention, ...) are the next tranche's work: until they land,
// supports_type() reports no weight type, so a model load on "cuda" is refused with a clear
// message instead of running anything half-done. Every runtime call is checked.
extern "C" {
#include "backend/backend.h"
#include "base/status.h"
}
#include "backend/cuda/gpu_compat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cuda_ctx {
    int device;
    int sticky; // a device error happened: every later call fails
    gpuStream_t stream;
    char name[256];
} cuda_ctx;

struct fg_buffer {
    void *dev;
    size_t size;
};

static cuda_ctx *ctx_of(fg_backend *be) { return (cuda_ctx *)be->ctx; }

static fg_status sticky_error(cuda_ctx *c) {
    return fg_fail(FG_ERR_DEVICE, "cuda: device %d is in an error state from an earlier failure", c->device);
}

static void cuda_destroy(fg_backend *be) {
    if (!be)
        return;
    cuda_ctx *c = ctx_of(be);
    if (c) {
        if (c->stream)
            gpuStreamDestroy(c->stream);
        free(c);
    }
    free(be);
}

static fg_status cuda_buf_alloc(fg_backend *be, size_t n_bytes, fg_buffer **out) {
    cuda_ctx *c = ctx_of(be);
    if (c->sticky)
        return sticky_error(c);
    void *p = NULL;
    gpuError_t err = gpuMalloc(&p, n_bytes ? n_bytes : 1);
    if (err != gpuSuccess) {
        gpuGetLastError(); // an allocation failure is not sticky
        return fg_fail(FG_ERR_NOMEM, "cuda: cannot allocate %zu bytes on device %d: %s", n_bytes,
                       c->device, gpuGetErrorString(err));
    }
    fg_buffer *b = (fg_buffer *)calloc(1, sizeof *b);
    if (!b) {
        gpuFree(p);
        return fg_fail(FG_ERR_NOMEM, "cuda: out of host memory");
    }
    b->dev = p;
    b->size = n_bytes;
    *out = b;
    return FG_OK;
}

static void cuda_buf_free(fg_backend *be, fg_buffer *buf) {
    (void)be;
    if (!buf)
        return;
    gpuFree(buf->dev);
    free(buf);
}

static void *cuda_buf_base(fg_buffer *buf) { return buf->dev; }

static fg_status check_range(const fg_tensor *t, size_t off, size_t n, const char *what) {
    size_t total = fg_tensor_nbytes(t);
    if (off > total || n > total - off)
        return fg_fail(FG_ERR_INVALID_ARG, "cuda: %s of %zu bytes at offset %zu exceeds the tensor's %zu bytes",
                       what, n, off, total);
    return FG_OK;
}

static fg_status cuda_upload(fg_backend *be, const fg_tensor *dst, size_t off, const void *src, size_t n) {
    cuda_ctx *c = ctx_of(be);
    if (c->sticky)
        return sticky_error(c);
    FG_TRY(check_range(dst, off, n, "upload"));
    FG_GPU_CHECK(c, gpuMemcpyAsync((char *)dst->data + off, src, n, gpuMemcpyHostToDevice, c->stream));
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream)); // src may be reused by the caller at once
    return FG_OK;
}

static fg_status cuda_download(fg_backend *be, const fg_tensor *src, size_t off, void *dst, size_t n) {
    cuda_ctx *c = ctx_of(be);
    if (c->sticky)
        return sticky_error(c);
    FG_TRY(check_range(src, off, n, "download"));
    FG_GPU_CHECK(c, gpuMemcpyAsync(dst, (const char *)src->data + off, n, gpuMemcpyDeviceToHost, c->stream));
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    return FG_OK;
}

static fg_status cuda_sync(fg_backend *be) {
    cuda_ctx *c = ctx_of(be);
    if (c->sticky)
        return sticky_error(c);
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    FG_GPU_CHECK(c, gpuGetLastError());
    return FG_OK;
}

// No weight type has kernels yet (next tranche): model loading refuses cleanly.
static bool cuda_supports_type(fg_backend *be, uint32_t type) {
    (void)be;
    (void)type;
    return false;
}

// The op table: set_step and the ops stay NULL until their kernels land (supports_type keeps
// models away from them). Filled field by field so new interface members default to NULL.
static fg_backend_ops make_cuda_ops(void) {
    fg_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.destroy = cuda_destroy;
    o.buf_alloc = cuda_buf_alloc;
    o.buf_free = cuda_buf_free;
    o.buf_base = cuda_buf_base;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.sync = cuda_sync;
    o.supports_type = cuda_supports_type;
    return o;
}
static const fg_backend_ops k_cuda_ops = make_cuda_ops();

extern "C" fg_status fg_backend_cuda_create(const fg_backend_opts *opts, fg_backend **out) {
    int n = 0;
    gpuError_t err = gpuGetDeviceCount(&n);
    if (err != gpuSuccess || n == 0)
        return fg_fail(FG_ERR_DEVICE, "cuda: no usable CUDA device (%s)",
                       err != gpuSuccess ? gpuGetErrorString(err) : "device count is 0");
    int dev = opts ? opts->device : 0;
    if (dev < 0 || dev >= n)
        return fg_fail(FG_ERR_INVALID_ARG, "cuda: device %d requested but %d device(s) present", dev, n);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    fg_backend *be = (fg_backend *)calloc(1, sizeof *be);
    if (!c || !be) {
        free(c);
        free(be);
        return fg_fail(FG_ERR_NOMEM, "cuda: out of host memory");
    }
    c->device = dev;
    be->ops = &k_cuda_ops;
    be->ctx = c;
    gpuDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    fg_status st = FG_OK;
    if ((err = gpuSetDevice(dev)) != gpuSuccess || (err = gpuGetDeviceProperties(&prop, dev)) != gpuSuccess ||
        (err = gpuStreamCreate(&c->stream)) != gpuSuccess) {
        st = fg_fail(FG_ERR_DEVICE, "cuda: cannot initialise device %d: %s", dev, gpuGetErrorString(err));
        cuda_destroy(be);
        return st;
    }
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    *out = be;
    return FG_OK;
}
