// emu_rt.h - a minimal SIMT emulator for checking CUDA kernels on a machine without a GPU:
// every thread of a block is a ucontext fiber, blocks run one after another; __syncthreads
// and warp shuffles are barriers, fibers run in a random order between barriers (a missing
// barrier shows as wrong results), and a barrier some threads never reach aborts as a
// deadlock. Not a performance model, no memory-model or alignment checks. Used by run.sh.
#pragma once
#include <ucontext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <vector>
#include <random>
#include <algorithm>
#include <type_traits>
#include <tuple>
extern "C" {
#include "base/half.h"
}
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
struct __half { uint16_t x; };
typedef __half fg_half;
static inline __half __ushort_as_half(uint16_t h) { return __half{h}; }
static inline uint16_t __half_as_ushort(__half h) { return h.x; }
static inline float __half2float(__half h) { return fg_f16_to_f32(h.x); }
static inline __half __float2half_rn(float f) { return __half{fg_f32_to_f16(f)}; }
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
typedef int gpuStream_t;
typedef int gpuError_t;
#define gpuSuccess 0
static inline int gpuGetLastError() { return 0; }
static inline const char *gpuGetErrorString(int) { return "ok"; }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; *p += v; return o; }
static inline int atomicAdd(int *p, int v) { int o = *p; *p += v; return o; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned o = *p; *p += v; return o; }
static inline unsigned atomicOr(unsigned *p, unsigned v) { unsigned o = *p; *p |= v; return o; }
static inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; if (v < o) *p = v; return o; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); } // the default mode: ties to even

struct emu_fiber { ucontext_t ctx; int state; uint3 tid; std::vector<char> stack; };
struct emu_barrier { int count = 0; std::vector<int> waiters; };
struct emu_state {
    std::vector<emu_fiber> f; int cur = -1; ucontext_t sched;
    emu_barrier block; std::vector<emu_barrier> warp; std::vector<std::vector<unsigned long long>> xbuf;
    dim3 bdim, gdim; uint3 bidx; std::vector<char> smem; std::mt19937 rng{12345};
    int warp_size;
};
inline emu_state &emu() { static emu_state s; return s; }
#define threadIdx (emu().f[emu().cur].tid)
#define blockIdx (emu().bidx)
#define blockDim (emu().bdim)
#define gridDim (emu().gdim)
inline void *emu_dyn_smem() { return emu().smem.data(); }
inline void emu_wait(emu_barrier &b, int expected) {
    emu_state &s = emu();
    if (++b.count == expected) {
        b.count = 0;
        for (int w : b.waiters) s.f[w].state = 0;
        b.waiters.clear();
        return;
    }
    b.waiters.push_back(s.cur);
    s.f[s.cur].state = 1;
    swapcontext(&s.f[s.cur].ctx, &s.sched);
}
inline void __syncthreads() { emu_wait(emu().block, (int)(emu().bdim.x * emu().bdim.y * emu().bdim.z)); }
template <typename T> inline T emu_xchg(T v, int src_lane_xor, bool is_xor) {
    static_assert(sizeof(T) <= 8, "");
    emu_state &s = emu();
    const int W = FG_WARP, tid = (int)threadIdx.x, w = tid / W, lane = tid % W;
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T));
    s.xbuf[w][lane] = bits;
    emu_wait(s.warp[w], W);
    int src = is_xor ? (lane ^ src_lane_xor) : src_lane_xor;
    unsigned long long r = s.xbuf[w][src];
    emu_wait(s.warp[w], W);
    T out; memcpy(&out, &r, sizeof(T));
    return out;
}
template <typename T> inline T emu_shfl_xor(T v, int m) { return emu_xchg(v, m, true); }
template <typename T> inline T emu_shfl(T v, int l) { return emu_xchg(v, l, false); }

template <typename K, typename... A> struct emu_call { static void tramp(); };
struct emu_job { void (*run)(void *); void *arg; };
inline emu_job &emu_cur_job() { static emu_job j; return j; }
inline void emu_fiber_main() {
    emu_state &s = emu();
    emu_cur_job().run(emu_cur_job().arg);
    s.f[s.cur].state = 2;
    swapcontext(&s.f[s.cur].ctx, &s.sched);
}
inline void emu_run_grid(dim3 g, dim3 b, size_t smem, void (*run)(void *), void *arg) {
    emu_state &s = emu();
    const int nt = (int)(b.x * b.y * b.z);
    if (nt % FG_WARP) { fprintf(stderr, "emu: block of %d threads is not a multiple of the warp\n", nt); abort(); }
    s.bdim = b; s.gdim = g;
    s.f.assign(nt, emu_fiber());
    s.warp.assign(nt / FG_WARP, emu_barrier());
    s.xbuf.assign(nt / FG_WARP, std::vector<unsigned long long>(FG_WARP));
    emu_cur_job() = emu_job{run, arg};
    for (unsigned bz = 0; bz < g.z; bz++)
    for (unsigned by = 0; by < g.y; by++)
    for (unsigned bx = 0; bx < g.x; bx++) {
        s.bidx = uint3{bx, by, bz};
        s.smem.assign(smem + 64, (char)0xFF); // NaN poison: reading unwritten shared memory shows
        s.block = emu_barrier();
        for (int i = 0; i < nt; i++) {
            emu_fiber &f = s.f[i];
            f.state = 0;
            f.tid = uint3{(unsigned)(i % b.x), (unsigned)((i / b.x) % b.y), (unsigned)(i / (b.x * b.y))};
            f.stack.resize(256 * 1024);
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, (void (*)())emu_fiber_main, 0);
        }
        std::vector<int> order(nt);
        for (;;) {
            int runnable = 0, done = 0;
            order.clear();
            for (int i = 0; i < nt; i++) { if (s.f[i].state == 0) order.push_back(i); if (s.f[i].state == 2) done++; }
            runnable = (int)order.size();
            if (done == nt) break;
            if (runnable == 0) { fprintf(stderr, "emu: deadlock in block (%u,%u,%u): a barrier was not reached by all threads\n", bx, by, bz); abort(); }
            std::shuffle(order.begin(), order.end(), s.rng);
            for (int i : order) {
                if (s.f[i].state != 0) continue;
                s.cur = i;
                swapcontext(&s.sched, &s.f[i].ctx);
            }
        }
        for (auto &w : s.warp) if (w.count) { fprintf(stderr, "emu: warp barrier left half-entered\n"); abort(); }
    }
    s.cur = -1;
}
template <typename... P> struct emu_launch_t {
    void (*k)(P...); dim3 g, b; size_t smem;
    template <typename... A> void operator()(A &&...a) {
        struct pack { void (*k)(P...); std::tuple<std::decay_t<P>...> args; };
        pack pk{k, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
        emu_run_grid(g, b, smem, [](void *p) { pack *q = (pack *)p; std::apply(q->k, q->args); }, &pk);
    }
};
template <typename... P> emu_launch_t<P...> emu_launcher(void (*k)(P...), dim3 g, dim3 b, size_t smem, gpuStream_t) {
    return emu_launch_t<P...>{k, g, b, smem};
}
