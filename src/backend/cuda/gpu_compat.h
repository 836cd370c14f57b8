// gpu_compat.h - the one header where vendor differences live (CUDA and HIP): neutral names
// for the runtime calls Forge uses, the warp width per target, shuffles, and the checked-call
// macros. Kernels and launchers use only these names; never a literal warp size of 32.
// Device code: FG_WARP is the compile target's width (32 NVIDIA and RDNA, 64 CDNA/GCN).
// Host code: the width of the device in use comes from its properties (fg_cuda.warp).
#ifndef FG_GPU_COMPAT_H
#define FG_GPU_COMPAT_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <utility> // std::forward (fg_launch)

#if defined(__HIPCC__)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define gpuError_t hipError_t
#define gpuSuccess hipSuccess
#define gpuErrorMemoryAllocation hipErrorOutOfMemory
#define gpuErrorNoDevice hipErrorNoDevice
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuErrorNotReady hipErrorNotReady
#define gpuEventQuery hipEventQuery
#define gpuGetErrorString hipGetErrorString
#define gpuGetLastError hipGetLastError
#define gpuPeekAtLastError hipPeekAtLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuSetDevice hipSetDevice
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMallocHost(p, n) hipHostMalloc((p), (n), hipHostMallocDefault)
#define gpuFreeHost hipHostFree
#define gpuMemGetInfo hipMemGetInfo
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuStream_t hipStream_t
#define gpuStreamCreate hipStreamCreate
#define gpuStreamCreateWithFlags hipStreamCreateWithFlags
#define gpuStreamNonBlocking hipStreamNonBlocking
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuStreamQuery hipStreamQuery
#define gpuEvent_t hipEvent_t
#define gpuEventCreate hipEventCreate
#define gpuEventCreateWithFlags hipEventCreateWithFlags
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuEventDisableTiming hipEventDisableTiming
#define gpuEventDestroy hipEventDestroy
#define gpuEventRecord hipEventRecord
#define gpuEventSynchronize hipEventSynchronize
#define gpuDeviceProp hipDeviceProp_t
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuFuncSetAttribute(f, a, v) hipFuncSetAttribute((const void *)(f), (a), (v))
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define gpuGraph_t hipGraph_t
#define gpuGraphExec_t hipGraphExec_t
#define gpuStreamBeginCapture hipStreamBeginCapture
#define gpuStreamEndCapture hipStreamEndCapture
#define gpuStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define gpuStreamCaptureModeRelaxed hipStreamCaptureModeRelaxed
#define gpuGraphInstantiate(e, g) hipGraphInstantiate((e), (g), NULL, NULL, 0)
#define gpuGraphLaunch hipGraphLaunch
#define gpuGraphExecDestroy hipGraphExecDestroy
#define gpuGraphDestroy hipGraphDestroy
typedef __half fg_half;
#define FG_GPU_VENDOR "hip"
// Device properties that differ: AMD has no opt-in shared memory beyond the per-block LDS
// limit, calls its multiprocessors CUs and names its architecture by string ("gfx90a:...").
#define FG_GPU_SMEM_OPTIN(prop) ((prop).sharedMemPerBlock)
#define FG_GPU_SM_WORD "CUs"
#define FG_GPU_ARCH_FMT(buf, n, prop) snprintf((buf), (n), "%.*s", (int)strcspn((prop).gcnArchName, ":"), (prop).gcnArchName)
#if defined(__HIP_DEVICE_COMPILE__)
#define FG_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define FG_WARP 64 // host pass: never used for launch geometry (fg_cuda.warp is)
#endif
typedef uint64_t fg_lane_mask;
#define FG_FULL_MASK (~(fg_lane_mask)0)
// HIP's shuffles take no mask: every active lane takes part.
#define fg_shfl_xor(v, m) __shfl_xor((v), (m))
#define fg_shfl(v, l) __shfl((v), (l))
#define fg_shfl_down(v, d) __shfl_down((v), (d))
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h> // nvcuda::wmma (tensor cores; used only under FG_GPU_HAS_MMA)
#define gpuError_t cudaError_t
#define gpuSuccess cudaSuccess
#define gpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define gpuErrorNoDevice cudaErrorNoDevice
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuErrorNotReady cudaErrorNotReady
#define gpuEventQuery cudaEventQuery
#define gpuGetErrorString cudaGetErrorString
#define gpuGetLastError cudaGetLastError
#define gpuPeekAtLastError cudaPeekAtLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuSetDevice cudaSetDevice
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMallocHost(p, n) cudaMallocHost((p), (n))
#define gpuFreeHost cudaFreeHost
#define gpuMemGetInfo cudaMemGetInfo
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuStream_t cudaStream_t
#define gpuStreamCreate cudaStreamCreate
#define gpuStreamCreateWithFlags cudaStreamCreateWithFlags
#define gpuStreamNonBlocking cudaStreamNonBlocking
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuStreamQuery cudaStreamQuery
#define gpuEvent_t cudaEvent_t
#define gpuEventCreate cudaEventCreate
#define gpuEventCreateWithFlags cudaEventCreateWithFlags
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuEventDisableTiming cudaEventDisableTiming
#define gpuEventDestroy cudaEventDestroy
#define gpuEventRecord cudaEventRecord
#define gpuEventSynchronize cudaEventSynchronize
#define gpuDeviceProp cudaDeviceProp
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuFuncSetAttribute(f, a, v) cudaFuncSetAttribute((f), (a), (v))
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define gpuGraph_t cudaGraph_t
#define gpuGraphExec_t cudaGraphExec_t
#define gpuStreamBeginCapture cudaStreamBeginCapture
#define gpuStreamEndCapture cudaStreamEndCapture
#define gpuStreamCaptureModeThreadLocal cudaStreamCaptureModeThreadLocal
#define gpuStreamCaptureModeRelaxed cudaStreamCaptureModeRelaxed
#define gpuGraphInstantiate(e, g) cudaGraphInstantiate((e), (g), 0)
#define gpuGraphLaunch cudaGraphLaunch
#define gpuGraphExecDestroy cudaGraphExecDestroy
#define gpuGraphDestroy cudaGraphDestroy
typedef __half fg_half;
#define FG_GPU_VENDOR "cuda"
#define FG_GPU_SMEM_OPTIN(prop) ((prop).sharedMemPerBlockOptin)
#define FG_GPU_SM_WORD "SMs"
#define FG_GPU_ARCH_FMT(buf, n, prop) snprintf((buf), (n), "sm_%d%d", (prop).major, (prop).minor)
#define FG_WARP 32
typedef uint32_t fg_lane_mask;
#define FG_FULL_MASK 0xffffffffu
#define fg_shfl_xor(v, m) __shfl_xor_sync(FG_FULL_MASK, (v), (m))
#define fg_shfl(v, l) __shfl_sync(FG_FULL_MASK, (v), (l))
#define fg_shfl_down(v, d) __shfl_down_sync(FG_FULL_MASK, (v), (d))
// Tensor-core (mma.sync) fast paths exist for NVIDIA sm_80+ only; each has a portable twin.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FG_GPU_HAS_MMA 1
#endif
#endif

// 16 bytes global -> shared memory (both 16-aligned): asynchronous on NVIDIA sm_80+ (cp.async,
// complete and visible to the issuing thread after fg_cp_commit + fg_cp_wait), a plain copy elsewhere (HIP,
// the host pass of host-side tests).
static __host__ __device__ __forceinline__ void fg_cp16(void *dst, const void *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(__HIPCC__)
    const unsigned sa = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(src) : "memory");
#else
    *(uint4 *)dst = *(const uint4 *)src;
#endif
}
// The same with a source size: n = 16 copies, n = 0 writes 16 zero bytes and reads nothing.
static __host__ __device__ __forceinline__ void fg_cp16_zfill(void *dst, const void *src, int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(__HIPCC__)
    const unsigned sa = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(sa), "l"(src), "r"(n) : "memory");
#else
    const uint4 zero = {0u, 0u, 0u, 0u};
    *(uint4 *)dst = n ? *(const uint4 *)src : zero;
#endif
}
// Groups of those copies: fg_cp_commit closes the thread's group; fg_cp_wait<N> waits until at
// most N of its groups are still in flight (the older ones complete and visible to the thread).
static __host__ __device__ __forceinline__ void fg_cp_commit(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(__HIPCC__)
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> static __host__ __device__ __forceinline__ void fg_cp_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(__HIPCC__)
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Kernel launch bounds: at most `threads` per block and, on NVIDIA, at least `min_blocks`
// blocks resident per SM (registers capped at 64K / (threads * min_blocks)). HIP reads a
// second argument differently (waves per execution unit), so there it is dropped.
#if defined(__HIPCC__)
#define FG_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads)
#else
#define FG_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads, min_blocks)
#endif

// ---- programmatic dependent launch (PDL; NVIDIA sm_90+, a no-op elsewhere)
// A kernel launched through fg_launch(pdl = true, ...) may start while the kernel before it in
// the stream still runs. Before its fg_pdl_wait() it may only read memory no kernel of the step
// writes (weights); after it, everything the earlier kernels wrote is visible. fg_pdl_trigger()
// lets the next PDL kernel's blocks be scheduled (once every block of this grid has called it
// or exited); without it that happens when this grid ends. Both are no-ops in a kernel launched
// without the attribute, so a kernel may call them whichever way it is launched.
static __host__ __device__ __forceinline__ void fg_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIPCC__)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __host__ __device__ __forceinline__ void fg_pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIPCC__)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute when pdl (the caller
// passes it only where the device has sm_90+: fg_cuda.pdl). Check with FG_GPU_LAUNCH_CHECK.
#if defined(__CUDACC__) && !defined(__HIPCC__)
template <typename... P, typename... A>
static inline void fg_launch(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, gpuStream_t stream,
                             A &&...args) {
    if (pdl) {
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...); // error: gpuGetLastError
        return;
    }
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
}
#else
template <typename... P, typename... A>
static inline void fg_launch(bool, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, gpuStream_t stream,
                             A &&...args) {
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
}
#endif

// Kept for code that says "warp size": the compile target's width.
#define FG_WARP_SIZE FG_WARP

// Evaluates a runtime call; on failure records the sticky device error and returns
// FG_ERR_DEVICE from the enclosing function, naming the call and the vendor's message.
#define FG_GPU_CHECK(ctx, call)                                                               \
    do {                                                                                      \
        gpuError_t fg_gpu_err_ = (call);                                                      \
        if (fg_gpu_err_ != gpuSuccess) {                                                      \
            (ctx)->sticky = 1;                                                                \
            return fg_fail(FG_ERR_DEVICE, "%s: %s failed at %s:%d: %s", FG_GPU_VENDOR, #call,  \
                           __FILE__, __LINE__, gpuGetErrorString(fg_gpu_err_));               \
        }                                                                                     \
    } while (0)

// After a kernel launch: a launch error (bad configuration, missing image) is sticky too.
#define FG_GPU_LAUNCH_CHECK(ctx, what)                                                        \
    do {                                                                                      \
        gpuError_t fg_gpu_err_ = gpuGetLastError();                                           \
        if (fg_gpu_err_ != gpuSuccess) {                                                      \
            (ctx)->sticky = 1;                                                                \
            return fg_fail(FG_ERR_DEVICE, "%s: launch of %s failed at %s:%d: %s",             \
                           FG_GPU_VENDOR, (what), __FILE__, __LINE__,                         \
                           gpuGetErrorString(fg_gpu_err_));                                   \
        }                                                                                     \
    } while (0)

// Calls whose failure cannot be acted on (frees in destroy paths): the result is read and
// dropped explicitly (HIP marks every runtime call nodiscard).
#define FG_GPU_IGNORE(call)              \
    do {                                 \
        gpuError_t fg_gpu_ign_ = (call); \
        (void)fg_gpu_ign_;               \
    } while (0)

// ---- integer and exactly rounded arithmetic (host-callable too, for host-side kernel tests)
// fg_dp4a(a, b, c): c + the dot product of the four signed bytes of a and of b.
// fg_fmul_rn / fg_fadd_rn / fg_fsub_rn: one IEEE-rounded operation that is never contracted
// into an FMA (bit-exact dequantization). CUDA's __f*_rn intrinsics are never contracted; HIP's
// are plain operators compiled with -ffp-contract=fast, so contraction is switched off in the
// helper's own scope (verified: an add of two such results stays v_mul + v_add).
static __host__ __device__ __forceinline__ int fg_dp4a_portable(int a, int b, int c) {
    for (int i = 0; i < 4; i++)
        c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
#if defined(__HIPCC__)
static __host__ __device__ __forceinline__ int fg_dp4a(int a, int b, int c) {
#if defined(__HIP_DEVICE_COMPILE__) &&                                                          \
    (defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || \
     defined(__gfx941__) || defined(__gfx942__) || defined(__gfx1030__) || defined(__gfx1031__) || \
     defined(__gfx1032__) || defined(__gfx1033__) || defined(__gfx1034__) || defined(__gfx1035__) || defined(__gfx1036__))
    return __builtin_amdgcn_sdot4(a, b, c, false); // v_dot4_i32_i8 (dot1-insts)
#else
    return fg_dp4a_portable(a, b, c);
#endif
}
static __host__ __device__ __forceinline__ float fg_fmul_rn(float a, float b) {
#pragma clang fp contract(off)
    return a * b;
}
static __host__ __device__ __forceinline__ float fg_fadd_rn(float a, float b) {
#pragma clang fp contract(off)
    return a + b;
}
static __host__ __device__ __forceinline__ float fg_fsub_rn(float a, float b) {
#pragma clang fp contract(off)
    return a - b;
}
#else
static __host__ __device__ __forceinline__ int fg_dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    return __dp4a(a, b, c);
#else
    return fg_dp4a_portable(a, b, c);
#endif
}
#if defined(__CUDA_ARCH__)
#define FG_RN_OP(name, intr, op) \
    static __host__ __device__ __forceinline__ float name(float a, float b) { return intr(a, b); }
#else // host pass (host-side tests): x86-64 without -mfma does not contract
#define FG_RN_OP(name, intr, op) \
    static __host__ __device__ __forceinline__ float name(float a, float b) { return a op b; }
#endif
FG_RN_OP(fg_fmul_rn, __fmul_rn, *)
FG_RN_OP(fg_fadd_rn, __fadd_rn, +)
FG_RN_OP(fg_fsub_rn, __fsub_rn, -)
#undef FG_RN_OP
#endif

#endif // FG_GPU_COMPAT_H
