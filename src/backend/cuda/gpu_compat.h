// gpu_compat.h - the one header where vendor differences live (CUDA today, HIP next):
// neutral names for the runtime calls Forge uses, the warp width, and the checked-call macro.
// Kernels and launchers use only these names; never a literal warp size of 32.
#ifndef FG_GPU_COMPAT_H
#define FG_GPU_COMPAT_H

#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#define gpuError_t hipError_t
#define gpuSuccess hipSuccess
#define gpuGetErrorString hipGetErrorString
#define gpuGetLastError hipGetLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuSetDevice hipSetDevice
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuStream_t hipStream_t
#define gpuStreamCreate hipStreamCreate
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuDeviceProp hipDeviceProp_t
#define gpuGetDeviceProperties hipGetDeviceProperties
#define FG_WARP_SIZE 64
#else
#include <cuda_runtime.h>
#define gpuError_t cudaError_t
#define gpuSuccess cudaSuccess
#define gpuGetErrorString cudaGetErrorString
#define gpuGetLastError cudaGetLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuSetDevice cudaSetDevice
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuStream_t cudaStream_t
#define gpuStreamCreate cudaStreamCreate
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuDeviceProp cudaDeviceProp
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define FG_WARP_SIZE 32
#endif

// Evaluates a runtime call; on failure records the sticky device error and returns
// FG_ERR_DEVICE from the enclosing function, naming the call and the vendor's message.
#define FG_GPU_CHECK(ctx, call)                                                               \
    do {                                                                                      \
        gpuError_t fg_gpu_err_ = (call);                                                      \
        if (fg_gpu_err_ != gpuSuccess) {                                                      \
            (ctx)->sticky = 1;                                                                \
            return fg_fail(FG_ERR_DEVICE, "cuda: %s failed at %s:%d: %s", #call, __FILE__,    \
                           __LINE__, gpuGetErrorString(fg_gpu_err_));                        \
        }                                                                                     \
    } while (0)

#endif // FG_GPU_COMPAT_H
