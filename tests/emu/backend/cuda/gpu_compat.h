// gpu_compat.h stand-in for the emulator (tests/emu): found before the real one by the
// include order of run.sh, it maps the vendor-neutral names onto emu_rt.h.
#ifndef FG_GPU_COMPAT_H
#define FG_GPU_COMPAT_H
#include <stdint.h>
#include <stddef.h>
#include <math.h>
#include "emu_rt.h"
#define FG_GPU_VENDOR "emu"
#define FG_GPU_EMU 1 // kernels with tensor-core paths leave them out
#ifndef FG_WARP
#define FG_WARP 32
#endif
#define FG_WARP_SIZE FG_WARP
#define FG_LAUNCH_BOUNDS(...)
typedef uint64_t fg_lane_mask;
typedef void *gpuGraphExec_t; // fg_cuda members the attention code never touches
typedef void *gpuEvent_t;
#define FG_FULL_MASK (~(fg_lane_mask)0)
#define fg_shfl_xor(v, m) emu_shfl_xor((v), (m))
#define fg_shfl(v, l) emu_shfl((v), (l))
#define FG_GPU_CHECK(ctx, call) do { (void)(call); } while (0)
#define FG_GPU_LAUNCH_CHECK(ctx, what) do { (void)(ctx); (void)(what); } while (0)
#define FG_GPU_IGNORE(call) do { (void)(call); } while (0)
// programmatic dependent launch: the emulator runs grids one after the other
static inline void fg_pdl_wait(void) {}
static inline void fg_pdl_trigger(void) {}
template <typename... P, typename... A>
static inline void fg_launch(bool, void (*k)(P...), dim3 g, dim3 b, size_t smem, gpuStream_t s, A &&...a) {
    emu_launcher(k, g, b, smem, s)(std::forward<A>(a)...);
}
// never contracted: g++ without -mfma has no fused multiply-add to contract into
static inline float fg_fmul_rn(float a, float b) { return a * b; }
// c + the dot product of the four signed bytes of a and of b
static inline int fg_dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++)
        c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
static inline float fg_fadd_rn(float a, float b) { return a + b; }
static inline float fg_fsub_rn(float a, float b) { return a - b; }
#endif
