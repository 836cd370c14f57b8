// cuda_sample.cu - the sample op on the GPU: a block per output row (a row that draws greedily
// or with top-k 1..1,024 split over up to 64 blocks, see "the kernels") samples (or scores) from
// the row's raw logits with the reference's chain (src/backend/sample_ref.c): logit bias and
// penalties from the row's entries -> top-k -> top-p -> min-p -> temperature -> draw with the
// uniform the host passed in, and the log-softmax / top-N of the raw row. Only the
// fg_sample_result rows leave the device. Not here: the step metadata (cuda_backend.cu).
//
// Design (FG_WARP lanes, never a literal 32; SAMP_THREADS threads a block):
//  * An element's value is computed on the fly: the raw logit, and for a token with an entry
//    (a bit in a shared-memory filter of the row's entry tokens, then a binary search) the
//    bias and penalty with the reference's float operations, never contracted (fg_*_rn).
//  * The order of the reference's sorted candidates (value descending, ties to the lower id)
//    is the order of a 64-bit key: a monotone map of the value (-0 as +0) above the id, so
//    every "k-th best", "first whose cumulative weight reaches t" is a radix select on that
//    key (8-bit digits from the top, block histograms, a one-thread scan of 256 buckets,
//    stopping early when one element is left) without sorting the vocabulary.
//  * Exact path: when the candidates that matter number at most SAMP_CAP (top-k <= 1024, or
//    after top-p/min-p), they are gathered, bitonic-sorted in shared memory, their weights
//    computed in parallel and summed in the reference's order by one thread: the same
//    top-p cut, min-p cut and draw as the reference given the same exp() results (CUDA's
//    double exp is within 1 ulp of glibc's: a draw can differ only when u * sum lies within
//    ~1e-16 relative of a cumulative boundary).
//  * Large path (top-k off or > 1024 and more than SAMP_CAP candidates left): the masses are
//    summed in 128-bit fixed point (weight * 2^62, exact and order-free, so deterministic),
//    and the top-p cut and the draw are radix selects on the cumulative mass; they differ from
//    the reference's sequential double sums by rounding only (~1e-15 relative).
//  * Greedy is one pass (block min of the key: first maximum, lowest id). The log-softmax uses
//    a block max and a double sum in a fixed tree order (1 ulp of the reference's float
//    result, typically exact); its top-N is a radix select of the N-th best raw logit (NaN as
//    -inf) and a sort of the N.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_internal.h"

#include <math.h>

#define SAMP_THREADS 512                   // a multiple of every warp width
#define SAMP_WARPS (SAMP_THREADS / FG_WARP) // warps of a block (device code: this target's width)
#define SAMP_CAP 1024                      // candidates sorted in shared memory
#define SAMP_FILTER_WORDS 4096             // 131072 filter bits for the entry tokens
#define SAMP_RADIX 256
#define SAMP_SLICE 2048        // logits a block of the split pass reads (at least)
#define SAMP_MAX_SLICES 64     // blocks a row is split over
#define SAMP_SCAN_CANDS 2048   // candidate keys of a split row (slices x top-k), sorted in shared memory
#define KEY_NONE (~0ull)

typedef unsigned long long u64;
typedef unsigned int u32;

struct samp_shared {
    union {
        u32 filter[SAMP_FILTER_WORDS]; // the entry tokens' bits (where logits are adjusted)
        u64 cand[SAMP_SCAN_CANDS];     // a split row's candidates (samp_pick_kernel: no adjusting)
    } f;
    union {
        struct {
            u64 keys[SAMP_CAP];
            double w[SAMP_CAP];
        } c;
        u32 whist[SAMP_WARPS][SAMP_RADIX]; // per-warp counts during a select
    } u;
    float vals[SAMP_CAP];
    u32 hcnt[SAMP_RADIX];
    u64 hlo[SAMP_RADIX], hhi[SAMP_RADIX]; // 128-bit fixed-point masses per bucket
    u64 red_u64[SAMP_WARPS * 2];
    u32 red_u32[SAMP_WARPS * 4];
    double red_d[SAMP_WARPS * 2];
    // broadcasts
    u64 b_prefix, b_key, b_lo, b_hi, b_base_lo, b_base_hi;
    u32 b_cnt, b_base_cnt;
    int b_int, b_flag, b_n;
};

// ------------------------------------------------------------------------ small helpers

static __device__ __forceinline__ u32 desc_key(float v) {
    if (v == 0.0f)
        v = 0.0f; // -0 ranks with +0 (the reference compares with == and >)
    const u32 b = __float_as_uint(v);
    const u32 asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ~asc;
}

static __device__ __forceinline__ float key_value(u64 k) {
    const u32 asc = ~(u32)(k >> 32);
    const u32 b = (asc & 0x80000000u) ? (asc & 0x7fffffffu) : ~asc;
    return __uint_as_float(b);
}

static __device__ __forceinline__ void add128(u64 &lo, u64 &hi, u64 v) {
    const u64 o = lo;
    lo += v;
    hi += lo < o;
}

// The 128-bit fixed-point mass (scale 2^62) as a double; monotone in the mass.
static __device__ __forceinline__ double mass_d(u64 lo, u64 hi) {
    return (double)hi * 4.0 + (double)lo * 0x1p-62;
}

static __device__ __forceinline__ u64 fixed_w(double w) { return (u64)(w * 0x1p62); }

// ------------------------------------------------------------------------ block reductions
// Every thread of the block calls them (uniform control flow); all get the result.

static __device__ u64 block_min_u64(u64 v, samp_shared &sh) {
    const int lane = threadIdx.x % FG_WARP, w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1) {
        const u64 o = fg_shfl_xor(v, off);
        v = o < v ? o : v;
    }
    __syncthreads();
    if (lane == 0)
        sh.red_u64[w] = v;
    __syncthreads();
    u64 r = sh.red_u64[0];
    for (int i = 1; i < nw; i++)
        r = sh.red_u64[i] < r ? sh.red_u64[i] : r;
    return r;
}

static __device__ u64 block_max_u64(u64 v, samp_shared &sh) {
    return ~block_min_u64(~v, sh);
}

static __device__ u32 block_sum_u32(u32 v, samp_shared &sh) {
    const int lane = threadIdx.x % FG_WARP, w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1)
        v += fg_shfl_xor(v, off);
    __syncthreads();
    if (lane == 0)
        sh.red_u32[w] = v;
    __syncthreads();
    u32 r = 0;
    for (int i = 0; i < nw; i++)
        r += sh.red_u32[i];
    return r;
}

// A double sum in a fixed order (per-thread strided partials, a xor tree, the warps in order).
static __device__ double block_sum_d(double v, samp_shared &sh) {
    const int lane = threadIdx.x % FG_WARP, w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1)
        v += fg_shfl_xor(v, off);
    __syncthreads();
    if (lane == 0)
        sh.red_d[w] = v;
    __syncthreads();
    double r = 0.0;
    for (int i = 0; i < nw; i++)
        r += sh.red_d[i];
    return r;
}

// A 128-bit sum (order-free: exact).
static __device__ void block_sum_128(u64 lo, u64 hi, samp_shared &sh, u64 *olo, u64 *ohi) {
    __syncthreads();
    if (threadIdx.x == 0)
        sh.b_lo = sh.b_hi = 0;
    __syncthreads();
    const u64 old = atomicAdd(&sh.b_lo, lo);
    atomicAdd(&sh.b_hi, hi + (old + lo < old ? 1ull : 0ull));
    __syncthreads();
    *olo = sh.b_lo;
    *ohi = sh.b_hi;
}

// ------------------------------------------------------------------------ the row's elements

struct samp_row {
    const float *x;
    int i0, n; // the elements [i0, n) (a split pass's slice; else 0 and the vocabulary)
    const fg_sample_entry *ent;
    int n_ent;
    const u32 *filter;
    float rp, fp, pp; // penalties
};

static __device__ __forceinline__ const fg_sample_entry *find_entry(const samp_row &R, int i) {
    if (R.n_ent == 0 || !((R.filter[(i >> 5) & (SAMP_FILTER_WORDS - 1)] >> (i & 31)) & 1u))
        return NULL;
    int lo = 0, hi = R.n_ent;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (R.ent[mid].token < i)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < R.n_ent && R.ent[lo].token == i ? &R.ent[lo] : NULL;
}

// The logit after the bias and the penalties, as the reference computes it; *fb: not NaN
// after the bias (the reference's fallback candidate).
static __device__ __forceinline__ float adjust(const samp_row &R, int i, bool *fb) {
    float l = R.x[i];
    const fg_sample_entry *e = find_entry(R, i);
    if (e && (e->flags & FG_SAMPLE_ENTRY_BIAS))
        l = fg_fadd_rn(l, e->bias);
    *fb = !isnan(l);
    if (e && e->count > 0 && *fb) {
        if (l <= 0.0f)
            l = fg_fmul_rn(l, R.rp);
        else
            l = l / R.rp;
        l = fg_fsub_rn(l, fg_fadd_rn(fg_fmul_rn((float)e->count, R.fp), R.pp));
    }
    return l;
}

// How the elements are seen: raw (log-softmax: NaN as -inf, all valid) or adjusted (valid:
// neither NaN nor -inf; in inf mode only the +inf ones, valued 0), keyed by (value, id) or by
// id alone, optionally restricted to values >= thr.
struct samp_view {
    samp_row R;
    bool raw, inf_mode, id_order, thr_on;
    float thr;
};

static __device__ __forceinline__ bool elem(const samp_view &V, int i, float *ev, u64 *key) {
    float l;
    if (V.raw) {
        const float x = V.R.x[i];
        l = isnan(x) ? -INFINITY : x;
    } else {
        bool fb;
        l = adjust(V.R, i, &fb);
        if (V.inf_mode) {
            if (l != INFINITY)
                return false;
            l = 0.0f;
        } else if (isnan(l) || l == -INFINITY) {
            return false;
        }
        if (V.thr_on && !(l >= V.thr))
            return false;
    }
    *ev = l;
    *key = V.id_order ? (u64)i : (((u64)desc_key(l) << 32) | (u64)(u32)i);
    return true;
}

// Weight kinds of a mass select: exp((v - mx) * inv) (inv 1: top-p's exp(v - mx)).
struct samp_weight {
    double mx, inv;
};

static __device__ __forceinline__ double weight_of(const samp_weight &W, float v) {
    return W.inv == 1.0 ? exp((double)v - W.mx) : exp(((double)v - W.mx) * W.inv);
}

// Number of elements with key <= kmax, and (mass) their 128-bit fixed-point mass.
static __device__ u32 count_mass(const samp_view &V, u64 kmax, const samp_weight *W, samp_shared &sh, u64 *lo,
                                 u64 *hi) {
    u32 cnt = 0;
    u64 l = 0, h = 0;
    for (int i = V.R.i0 + (int)threadIdx.x; i < V.R.n; i += blockDim.x) {
        float v;
        u64 k;
        if (elem(V, i, &v, &k) && k <= kmax) {
            cnt++;
            if (W)
                add128(l, h, fixed_w(weight_of(*W, v)));
        }
    }
    cnt = block_sum_u32(cnt, sh);
    if (W)
        block_sum_128(l, h, sh, lo, hi);
    return cnt;
}

// The radix select: among the elements with key <= kmax, in ascending key order, the first
// whose cumulative weight through it exceeds the target (count: more than t_cnt elements,
// i.e. the element of index t_cnt; mass: mass_d(cum) > t, or >= t when ge). Returns its key
// (KEY_NONE: no such element) and in *n_before the number of elements before it.
static __device__ u64 radix_select(const samp_view &V, u64 kmax, const samp_weight *W, double t, bool ge,
                                   u32 t_cnt, samp_shared &sh, u32 *n_before) {
    const int w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
    // digits, most significant first: the value's four (unless keyed by id), then the id's
    // (ids < 2^24: at most three; bits 24..31 are zero)
    int shifts[7], n_shifts = 0;
    if (!V.id_order)
        for (int s = 56; s >= 32; s -= 8)
            shifts[n_shifts++] = s;
    int id_digits = 1;
    while (id_digits < 3 && ((V.R.n - 1) >> (8 * id_digits)) != 0)
        id_digits++;
    for (int s = 8 * (id_digits - 1); s >= 0; s -= 8)
        shifts[n_shifts++] = s;
    __syncthreads(); // callers may still read the broadcasts of the previous call
    if (threadIdx.x == 0) {
        sh.b_prefix = 0;
        sh.b_base_cnt = 0;
        sh.b_base_lo = sh.b_base_hi = 0;
        sh.b_flag = 0; // 0: going on, 1: found by a find pass, 2: not found, 3: prefix complete
    }
    for (int si = 0; si < n_shifts; si++) {
        const int shift = shifts[si];
        for (int j = threadIdx.x; j < SAMP_RADIX; j += blockDim.x) {
            sh.hcnt[j] = 0;
            sh.hlo[j] = sh.hhi[j] = 0;
        }
        for (int j = threadIdx.x; j < nw * SAMP_RADIX; j += blockDim.x)
            sh.u.whist[j / SAMP_RADIX][j % SAMP_RADIX] = 0;
        __syncthreads();
        const u64 prefix = sh.b_prefix;
        const u64 hmask = shift + 8 >= 64 ? 0ull : ~0ull << (shift + 8);
        for (int i = V.R.i0 + (int)threadIdx.x; i < V.R.n; i += blockDim.x) {
            float v;
            u64 k;
            if (!elem(V, i, &v, &k) || k > kmax || (k & hmask) != (prefix & hmask))
                continue;
            const int d = (int)((k >> shift) & (SAMP_RADIX - 1));
            atomicAdd(&sh.u.whist[w][d], 1u);
            if (W) {
                const u64 f = fixed_w(weight_of(*W, v));
                const u64 old = atomicAdd(&sh.hlo[d], f);
                if (old + f < old)
                    atomicAdd(&sh.hhi[d], 1ull);
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < SAMP_RADIX; j += blockDim.x) {
            u32 s = 0;
            for (int q = 0; q < nw; q++)
                s += sh.u.whist[q][j];
            sh.hcnt[j] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 bc = sh.b_base_cnt;
            u64 blo = sh.b_base_lo, bhi = sh.b_base_hi;
            int chosen = -1;
            for (int d = 0; d < SAMP_RADIX; d++) {
                const u32 c = sh.hcnt[d];
                if (c == 0)
                    continue;
                bool hit;
                u64 nlo = blo, nhi = bhi;
                if (W) {
                    add128(nlo, nhi, sh.hlo[d]);
                    nhi += sh.hhi[d];
                    const double m = mass_d(nlo, nhi);
                    hit = ge ? m >= t : m > t;
                } else {
                    hit = bc + c > t_cnt;
                }
                if (hit) {
                    chosen = d;
                    sh.b_cnt = c;
                    break;
                }
                bc += c;
                blo = nlo;
                bhi = nhi;
            }
            sh.b_base_cnt = bc;
            sh.b_base_lo = blo;
            sh.b_base_hi = bhi;
            if (chosen < 0) {
                sh.b_flag = 2;
            } else {
                sh.b_prefix |= (u64)chosen << shift;
                if (shift == 0)
                    sh.b_flag = 3;
                else if (sh.b_cnt == 1)
                    sh.b_flag = 1;
            }
            sh.b_key = KEY_NONE;
        }
        __syncthreads();
        const int flag = sh.b_flag;
        if (flag == 2) {
            *n_before = sh.b_base_cnt;
            return KEY_NONE;
        }
        if (flag == 3) {
            *n_before = sh.b_base_cnt;
            return sh.b_prefix;
        }
        if (flag == 1) { // one element left under the prefix: find it
            const u64 pm = ~0ull << shift, pre = sh.b_prefix;
            for (int i = V.R.i0 + (int)threadIdx.x; i < V.R.n; i += blockDim.x) {
                float v;
                u64 k;
                if (elem(V, i, &v, &k) && k <= kmax && (k & pm) == (pre & pm))
                    sh.b_key = k;
            }
            __syncthreads();
            *n_before = sh.b_base_cnt;
            return sh.b_key;
        }
    }
    // not reached: the last digit sets flag 3 or 2
    *n_before = sh.b_base_cnt;
    return sh.b_prefix;
}

// Sorts keys[0..p2) ascending in shared memory (p2 a power of two; every thread calls it, after
// a barrier; ends with one).
static __device__ void bitonic_sort(u64 *keys, int p2) {
    for (int k = 2; k <= p2; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int t = threadIdx.x; t < p2; t += blockDim.x) {
                const int o = t ^ j;
                if (o > t) {
                    const u64 a = keys[t], b = keys[o];
                    if ((a > b) == ((t & k) == 0)) {
                        keys[t] = b;
                        keys[o] = a;
                    }
                }
            }
            __syncthreads();
        }
}

// The keys <= kmax of the view's elements (m of them, the caller counted) into out[0..m), in
// no order (sh.b_n counts them: the caller zeroes it before a barrier).
static __device__ void gather_keys(const samp_view &V, u64 kmax, int m, u64 *out, samp_shared &sh) {
    for (int i = V.R.i0 + (int)threadIdx.x; i < V.R.n && m > 0; i += blockDim.x) {
        float v;
        u64 k;
        if (elem(V, i, &v, &k) && k <= kmax) {
            const int at = atomicAdd(&sh.b_n, 1);
            if (at < m)
                out[at] = k;
        }
    }
}

// Gathers the m elements with key <= kmax (m <= SAMP_CAP, the caller counted them) into
// sh.u.c.keys[0..m), ascending; their values into sh.vals.
static __device__ void collect(const samp_view &V, u64 kmax, int m, samp_shared &sh) {
    int p2 = 1;
    while (p2 < m)
        p2 <<= 1;
    __syncthreads();
    if (threadIdx.x == 0)
        sh.b_n = 0;
    for (int j = threadIdx.x; j < p2; j += blockDim.x)
        sh.u.c.keys[j] = KEY_NONE;
    __syncthreads();
    gather_keys(V, kmax, m, sh.u.c.keys, sh);
    __syncthreads();
    bitonic_sort(sh.u.c.keys, p2);
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        const u64 k = sh.u.c.keys[j];
        float v;
        u64 kk;
        if (V.id_order) {
            const bool ok = elem(V, (int)k, &v, &kk);
            (void)ok;
        } else {
            v = V.inf_mode ? 0.0f : key_value(k);
        }
        sh.vals[j] = v;
    }
    __syncthreads();
}

// The reference's draw over the m gathered candidates (in their order): weights
// exp((v - mx) * inv_t) in parallel, the sums in order on thread 0. Returns the id.
static __device__ int draw_gathered(int m, double mx, double inv_t, double u, samp_shared &sh) {
    for (int j = threadIdx.x; j < m; j += blockDim.x)
        sh.u.c.w[j] = exp(((double)sh.vals[j] - mx) * inv_t);
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int j = 0; j < m; j++)
            sum += sh.u.c.w[j];
        const double target = u * sum;
        double cum = 0.0;
        int pick = -1;
        for (int j = 0; j < m && pick < 0; j++) {
            cum += sh.u.c.w[j];
            if (target < cum)
                pick = j;
        }
        if (pick < 0) { // rounding left u at the very end: the last candidate with weight
            pick = 0;
            for (int j = m - 1; j > 0; j--)
                if (sh.u.c.w[j] > 0.0) {
                    pick = j;
                    break;
                }
        }
        sh.b_int = (int)(sh.u.c.keys[pick] & 0xffffffffu);
    }
    __syncthreads();
    return sh.b_int;
}

// The draw over every element with key <= kmax when there are more than SAMP_CAP: the first
// whose fixed-point cumulative mass exceeds u times the total, else the last with weight.
static __device__ int draw_large(const samp_view &V, u64 kmax, double mx, double inv_t, double u, samp_shared &sh) {
    const samp_weight W = {mx, inv_t};
    u64 lo, hi;
    count_mass(V, kmax, &W, sh, &lo, &hi);
    const double target = u * mass_d(lo, hi);
    u32 nb;
    u64 k = radix_select(V, kmax, &W, target, false, 0, sh, &nb);
    if (k == KEY_NONE) { // the last element with a non-zero weight
        u64 best = 0;
        bool any = false;
        for (int i = V.R.i0 + (int)threadIdx.x; i < V.R.n; i += blockDim.x) {
            float v;
            u64 kk;
            if (elem(V, i, &v, &kk) && kk <= kmax && fixed_w(weight_of(W, v)) > 0) {
                best = kk > best || !any ? kk : best;
                any = true;
            }
        }
        k = block_max_u64(any ? best : 0ull, sh);
    }
    return (int)(k & 0xffffffffu);
}

// The reference's top-p cut, min-p cut and draw over the n (<= SAMP_CAP) sorted candidates in
// sh.u.c.keys / sh.vals (the best first; mxf: the best value, 0 in inf mode).
static __device__ int sorted_tail(u32 n, float mxf, const fg_sample_row &P, samp_shared &sh, bool *used) {
    const double mx = (double)mxf;
    if (P.top_p < 1.0f && n > 1) {
        for (int j = threadIdx.x; j < (int)n; j += blockDim.x)
            sh.u.c.w[j] = exp((double)sh.vals[j] - mx);
        __syncthreads();
        if (threadIdx.x == 0) {
            double sum = 0.0;
            for (u32 j = 0; j < n; j++)
                sum += sh.u.c.w[j];
            double cum = 0.0, target = (double)P.top_p * sum;
            u32 cut = n;
            for (u32 j = 0; j < n; j++) {
                cum += sh.u.c.w[j];
                if (cum >= target) {
                    cut = j + 1;
                    break;
                }
            }
            sh.b_n = (int)cut;
        }
        __syncthreads();
        n = (u32)sh.b_n;
    }
    if (P.min_p > 0.0f && n > 1) {
        const float thr = mxf + P.log_min_p;
        u32 m = 0; // a prefix: the candidates are sorted by value
        while (m < n && sh.vals[m] >= thr)
            m++;
        n = m > 0 ? m : 1;
    }
    if (n == 1)
        return (int)(sh.u.c.keys[0] & 0xffffffffu);
    *used = true;
    return draw_gathered((int)n, mx, P.inv_temp, P.uniform, sh);
}

// ------------------------------------------------------------------------ the kernel

struct samp_stats {
    u64 kbest;    // smallest key of a valid element (first maximum); KEY_NONE: none
    u32 n_valid;  // neither NaN nor -inf after bias and penalties
    u32 n_inf;    // +inf among them
    int fvalid;   // lowest valid id
    int fallback; // lowest id not NaN after the bias
    int pad[2];   // 32 bytes (a split row's slices keep theirs in the scratch)
};

// The block's statistics from each thread's share (fv, fb_min: ids, KEY_NONE for none).
static __device__ samp_stats stats_reduce(u64 kb, u32 nv, u32 ni, u64 fv, u64 fb_min, samp_shared &sh) {
    samp_stats s;
    s.kbest = block_min_u64(kb, sh);
    s.n_valid = block_sum_u32(nv, sh);
    s.n_inf = block_sum_u32(ni, sh);
    const u64 f1 = block_min_u64(fv, sh), f2 = block_min_u64(fb_min, sh);
    s.fvalid = f1 == KEY_NONE ? -1 : (int)f1;
    s.fallback = f2 == KEY_NONE ? -1 : (int)f2;
    s.pad[0] = s.pad[1] = 0;
    return s;
}

static __device__ samp_stats row_stats(const samp_row &R, samp_shared &sh) {
    u64 kb = KEY_NONE;
    u32 nv = 0, ni = 0;
    u64 fv = KEY_NONE, fb_min = KEY_NONE;
    for (int i = R.i0 + (int)threadIdx.x; i < R.n; i += blockDim.x) {
        bool fb;
        const float l = adjust(R, i, &fb);
        if (fb && (u64)i < fb_min)
            fb_min = (u64)i;
        if (isnan(l) || l == -INFINITY)
            continue;
        nv++;
        ni += l == INFINITY;
        if ((u64)i < fv)
            fv = (u64)i;
        const u64 k = ((u64)desc_key(l) << 32) | (u64)(u32)i;
        kb = k < kb ? k : kb;
    }
    return stats_reduce(kb, nv, ni, fv, fb_min, sh);
}

// A split row's n best candidates (value descending, ties to the lower id) from the m slots of
// its slices' candidates (KEY_NONE: empty), into sh.u.c.keys / sh.vals, through a bitonic sort
// in shared memory. Inf mode: only the +inf ones, each valued 0 (their order: by id).
static __device__ void gather_split(const u64 *cand, int m, u32 n, bool inf_mode, samp_shared &sh) {
    int p2 = 1;
    while (p2 < m)
        p2 <<= 1;
    for (int j = threadIdx.x; j < p2; j += blockDim.x) {
        u64 k = j < m ? cand[j] : KEY_NONE;
        if (inf_mode && k != KEY_NONE && key_value(k) != INFINITY)
            k = KEY_NONE; // the +inf keys (one value) are in id order
        sh.f.cand[j] = k;
    }
    __syncthreads();
    bitonic_sort(sh.f.cand, p2);
    for (int j = threadIdx.x; j < (int)n; j += blockDim.x) {
        const u64 k = sh.f.cand[j];
        sh.u.c.keys[j] = k;
        sh.vals[j] = inf_mode ? 0.0f : key_value(k);
    }
    __syncthreads();
}

// The reference's draw (sample_ref.c: draw) from the row's statistics. *used: the uniform was
// consumed. cand (a split row: greedy, or top-k in 1..SAMP_CAP): the m slots of its slices'
// candidates, every one of the n best among them; the row's logits are not read.
static __device__ int sample_row(const samp_row &R, const fg_sample_row &P, const samp_stats &st, samp_shared &sh,
                                 bool *used, const u64 *cand, int m) {
    *used = false;
    const bool greedy = P.temperature <= 0.0f;
    const int best = st.kbest == KEY_NONE ? -1 : (int)(st.kbest & 0xffffffffu);
    if (greedy || best < 0)
        return best >= 0 ? best : st.fallback < 0 ? 0 : st.fallback;
    const float maxv = key_value(st.kbest);
    const bool inf_mode = maxv == INFINITY;
    const float mxf = inf_mode ? 0.0f : maxv;
    const double mx = (double)mxf;
    const int k = P.top_k > 0 && P.top_k < R.n ? P.top_k : 0;
    const u32 n_cand = inf_mode ? st.n_inf : st.n_valid;
    u32 n = k > 0 && (u32)k < n_cand ? (u32)k : n_cand;
    samp_view V;
    V.R = R;
    V.raw = false;
    V.inf_mode = inf_mode;
    V.thr_on = false;
    V.thr = 0.0f;
    const bool sorted = k > 0 || (P.top_p < 1.0f && n > 1);
    V.id_order = !sorted;
    // the first candidate in id order (the reference's c[0] when nothing was sorted)
    const int first = inf_mode ? best : st.fvalid;
    if (!sorted) { // the candidates in id order: min-p filters them, the draw walks them
        if (n == 1)
            return first;
        u32 nf = n;
        if (P.min_p > 0.0f) {
            V.thr_on = true;
            V.thr = mxf + P.log_min_p;
            nf = count_mass(V, KEY_NONE, NULL, sh, NULL, NULL);
            if (nf == 0)
                return first; // c[0]
        }
        if (nf == 1) {
            collect(V, KEY_NONE, 1, sh);
            return (int)(sh.u.c.keys[0] & 0xffffffffu);
        }
        *used = true;
        if (nf <= SAMP_CAP) {
            collect(V, KEY_NONE, (int)nf, sh);
            return draw_gathered((int)nf, mx, P.inv_temp, P.uniform, sh);
        }
        return draw_large(V, KEY_NONE, mx, P.inv_temp, P.uniform, sh);
    }
    // sorted: the candidates C are the n best (value descending, ties to the lower id)
    if (cand) { // a split row: k in 1..SAMP_CAP, so n <= SAMP_CAP
        gather_split(cand, m, n, inf_mode, sh);
        return sorted_tail(n, mxf, P, sh, used);
    }
    u32 nb;
    const u64 kc = n < n_cand ? radix_select(V, KEY_NONE, NULL, 0.0, false, n - 1, sh, &nb) : KEY_NONE;
    if (n <= SAMP_CAP) { // exact path: the reference's loops over the sorted candidates
        collect(V, kc, (int)n, sh);
        return sorted_tail(n, mxf, P, sh, used);
    }
    // large path: C has more than SAMP_CAP elements
    u64 kf = kc;
    u32 nf = n;
    if (P.top_p < 1.0f && n > 1) {
        const samp_weight W0 = {mx, 1.0};
        u64 lo, hi;
        count_mass(V, kc, &W0, sh, &lo, &hi);
        const double target = (double)P.top_p * mass_d(lo, hi);
        const u64 kp = radix_select(V, kc, &W0, target, true, 0, sh, &nb);
        if (kp != KEY_NONE) {
            kf = kp;
            nf = nb + 1;
        }
    }
    if (P.min_p > 0.0f && nf > 1) {
        V.thr_on = true;
        V.thr = mxf + P.log_min_p;
        const u32 m = count_mass(V, kf, NULL, sh, NULL, NULL);
        if (m == 0)
            return best; // c[0]
        nf = m < nf ? m : nf;
    }
    if (nf == 1)
        return best;
    *used = true;
    if (nf <= SAMP_CAP) {
        collect(V, kf, (int)nf, sh);
        return draw_gathered((int)nf, mx, P.inv_temp, P.uniform, sh);
    }
    return draw_large(V, kf, mx, P.inv_temp, P.uniform, sh);
}

// The log-softmax of the raw row at `token` and its n_top best (NaN as -inf), into *res.
static __device__ void logprobs_row(const samp_row &R, int token, int n_top, samp_shared &sh,
                                    fg_sample_result *res) {
    samp_view V;
    V.R = R;
    V.raw = true;
    V.inf_mode = V.id_order = V.thr_on = false;
    V.thr = 0.0f;
    u64 kb = KEY_NONE;
    for (int i = R.i0 + (int)threadIdx.x; i < R.n; i += blockDim.x) {
        const float x = R.x[i];
        const u64 k = ((u64)desc_key(isnan(x) ? -INFINITY : x) << 32) | (u64)(u32)i;
        kb = k < kb ? k : kb;
    }
    kb = block_min_u64(kb, sh);
    const double maxv = (double)key_value(kb);
    double lse;
    if (maxv == -INFINITY || maxv == INFINITY) {
        lse = maxv;
    } else {
        double s = 0.0;
        for (int i = R.i0 + (int)threadIdx.x; i < R.n; i += blockDim.x) {
            const float x = R.x[i];
            if (!isnan(x))
                s += exp((double)x - maxv);
        }
        lse = maxv + log(block_sum_d(s, sh));
    }
    int nt = n_top < FG_MAX_TOP_LOGPROBS ? n_top : FG_MAX_TOP_LOGPROBS;
    nt = nt < R.n ? nt : R.n;
    if (nt > 0) {
        u32 nb;
        const u64 kn = nt < R.n ? radix_select(V, KEY_NONE, NULL, 0.0, false, (u32)nt - 1, sh, &nb) : KEY_NONE;
        collect(V, kn, nt, sh);
        if ((int)threadIdx.x < nt) {
            res->top[threadIdx.x].token = (int32_t)(sh.u.c.keys[threadIdx.x] & 0xffffffffu);
            res->top[threadIdx.x].logprob = (float)((double)sh.vals[threadIdx.x] - lse);
        }
    }
    if (threadIdx.x == 0) {
        res->n_top = nt;
        res->logprob = token < 0 || token >= R.n || isnan(R.x[token]) ? -INFINITY
                                                                        : (float)((double)R.x[token] - lse);
    }
}

// ------------------------------------------------------------------------ the kernels
// A row is split over several blocks when it draws greedily or with top-k in 1..SAMP_CAP from
// a vocabulary of more than one slice: samp_scan_kernel reduces each slice to its statistics
// and (top-k) its k best keys, samp_pick_kernel merges them and draws from the candidates
// (the k best of the row are among them: each is among its slice's k best), sample_kernel then
// adds the log-probabilities such a row asks for. Other rows: one block of sample_kernel.
// Scratch per row: SAMP_MAX_SLICES statistics, SAMP_SCAN_CANDS keys.

#define SAMP_SCAN_THREADS 256
#define SAMP_ROW_SCRATCH (SAMP_MAX_SLICES * sizeof(samp_stats) + SAMP_SCAN_CANDS * sizeof(u64))

// Slices of a split row (0: the row is not split). slice: the fewest logits of a slice.
static __host__ __device__ __forceinline__ int samp_slices(const fg_sample_row &P, int n, int slice) {
    if (slice <= 0 || P.mode != FG_SAMPLE_DRAW)
        return 0;
    const bool greedy = P.temperature <= 0.0f;
    if (!greedy && !(P.top_k >= 1 && P.top_k <= SAMP_CAP && P.top_k < n))
        return 0;
    int s = (n + slice - 1) / slice;
    const int by_cands = greedy ? SAMP_MAX_SLICES : SAMP_SCAN_CANDS / P.top_k;
    s = s < by_cands ? s : by_cands;
    s = s < SAMP_MAX_SLICES ? s : SAMP_MAX_SLICES;
    return s >= 2 ? s : 0;
}

// The entry filter of a row (every thread; nothing when the row has no entries).
static __device__ void build_filter(const samp_row &R, samp_shared &sh) {
    if (R.n_ent == 0)
        return;
    for (int j = threadIdx.x; j < SAMP_FILTER_WORDS; j += blockDim.x)
        sh.f.filter[j] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < R.n_ent; j += blockDim.x) {
        const int t = R.ent[j].token;
        atomicOr(&sh.f.filter[(t >> 5) & (SAMP_FILTER_WORDS - 1)], 1u << (t & 31));
    }
    __syncthreads();
}

static __device__ samp_row row_of(const float *logits, size_t ld, int n_vocab, const fg_sample_row &P,
                                  const fg_sample_entry *ents, int r, samp_shared &sh) {
    samp_row R;
    R.x = logits + (size_t)r * ld;
    R.i0 = 0;
    R.n = n_vocab;
    R.ent = ents + P.first_entry;
    R.n_ent = P.mode == FG_SAMPLE_DRAW ? P.n_entries : 0;
    R.filter = sh.f.filter;
    R.rp = P.repeat_penalty;
    R.fp = P.frequency_penalty;
    R.pp = P.presence_penalty;
    return R;
}

// grid (rows, SAMP_MAX_SLICES at most): block (r, s) reduces slice s of split row r.
static __global__ void FG_LAUNCH_BOUNDS(SAMP_SCAN_THREADS, 2)
samp_scan_kernel(const float *logits, size_t ld, int n_vocab, const fg_sample_row *rows, const fg_sample_entry *ents,
                 int slice, char *scratch) {
    __shared__ samp_shared sh;
    const int r = blockIdx.x, s = blockIdx.y;
    const fg_sample_row P = rows[r];
    const int n_s = samp_slices(P, n_vocab, slice);
    if (s >= n_s)
        return;
    samp_row R = row_of(logits, ld, n_vocab, P, ents, r, sh);
    const int len = (n_vocab + n_s - 1) / n_s;
    R.i0 = s * len < n_vocab ? s * len : n_vocab;
    R.n = R.i0 + len < n_vocab ? R.i0 + len : n_vocab;
    build_filter(R, sh);
    const samp_stats st = row_stats(R, sh);
    char *mine = scratch + (size_t)r * SAMP_ROW_SCRATCH;
    if (threadIdx.x == 0)
        ((samp_stats *)mine)[s] = st;
    if (P.temperature <= 0.0f)
        return; // greedy: the statistics say it all
    // the slice's kc best keys (every valid one, as the reference sees them), KEY_NONE after
    const int k = P.top_k;
    const u32 kc = st.n_valid < (u32)k ? st.n_valid : (u32)k;
    u64 *out = (u64 *)(mine + SAMP_MAX_SLICES * sizeof(samp_stats)) + (size_t)s * k;
    samp_view V;
    V.R = R;
    V.raw = V.inf_mode = V.id_order = V.thr_on = false;
    V.thr = 0.0f;
    u32 nb;
    const u64 kmax = kc > 0 && kc < st.n_valid ? radix_select(V, KEY_NONE, NULL, 0.0, false, kc - 1, sh, &nb) : KEY_NONE;
    __syncthreads();
    if (threadIdx.x == 0)
        sh.b_n = 0;
    __syncthreads();
    gather_keys(V, kmax, (int)kc, out, sh);
    for (int j = (int)kc + (int)threadIdx.x; j < k; j += blockDim.x)
        out[j] = KEY_NONE;
}

// grid rows: block r merges split row r's slices and draws; other rows return at once.
static __global__ void FG_LAUNCH_BOUNDS(SAMP_THREADS, 2)
samp_pick_kernel(int n_vocab, const fg_sample_row *rows, int slice, const char *scratch, fg_sample_result *out) {
    __shared__ samp_shared sh;
    const int r = blockIdx.x;
    const fg_sample_row P = rows[r];
    const int n_s = samp_slices(P, n_vocab, slice);
    if (n_s == 0)
        return;
    const char *mine = scratch + (size_t)r * SAMP_ROW_SCRATCH;
    u64 kb = KEY_NONE, fv = KEY_NONE, fb = KEY_NONE;
    u32 nv = 0, ni = 0;
    for (int s = threadIdx.x; s < n_s; s += blockDim.x) {
        const samp_stats q = ((const samp_stats *)mine)[s];
        kb = q.kbest < kb ? q.kbest : kb;
        nv += q.n_valid;
        ni += q.n_inf;
        if (q.fvalid >= 0 && (u64)q.fvalid < fv)
            fv = (u64)q.fvalid;
        if (q.fallback >= 0 && (u64)q.fallback < fb)
            fb = (u64)q.fallback;
    }
    const samp_stats st = stats_reduce(kb, nv, ni, fv, fb, sh);
    samp_row R = {}; // only its size is read
    R.n = n_vocab;
    const u64 *cand = (const u64 *)(mine + SAMP_MAX_SLICES * sizeof(samp_stats));
    bool used;
    const int token = sample_row(R, P, st, sh, &used, cand, P.temperature > 0.0f ? n_s * P.top_k : 0);
    if (threadIdx.x == 0) {
        fg_sample_result *res = out + r;
        res->token = token;
        res->flags = used ? FG_SAMPLE_USED_UNIFORM : 0;
        res->logprob = 0.0f;
        res->n_top = 0;
    }
}

// grid rows: the rows that are not split, and a split row's log-probabilities.
static __global__ void FG_LAUNCH_BOUNDS(SAMP_THREADS, 2)
sample_kernel(const float *logits, size_t ld, int n_vocab, const fg_sample_row *rows, const fg_sample_entry *ents,
              int slice, fg_sample_result *out) {
    __shared__ samp_shared sh;
    const int r = blockIdx.x;
    const fg_sample_row P = rows[r];
    fg_sample_result *res = out + r;
    if (P.mode == FG_SAMPLE_NONE) {
        if (threadIdx.x == 0) {
            res->token = -1;
            res->flags = 0;
            res->logprob = 0.0f;
            res->n_top = 0;
        }
        return;
    }
    const samp_row R = row_of(logits, ld, n_vocab, P, ents, r, sh);
    int token = P.token;
    if (samp_slices(P, n_vocab, slice) > 0) { // drawn by samp_pick_kernel
        if (P.n_top < 0)
            return;
        token = res->token; // (the row's other fields: logprobs_row)
    } else {
        bool used = false;
        if (P.mode == FG_SAMPLE_DRAW) {
            build_filter(R, sh);
            const samp_stats st = row_stats(R, sh);
            token = sample_row(R, P, st, sh, &used, NULL, 0);
        }
        if (threadIdx.x == 0) {
            res->token = token;
            res->flags = used ? FG_SAMPLE_USED_UNIFORM : 0;
            res->logprob = 0.0f;
            res->n_top = 0;
        }
    }
    if (P.n_top >= 0)
        logprobs_row(R, token, P.n_top, sh, res);
}

size_t fg_cuda_sample_scratch_bytes(const fg_backend_limits *lim) {
    // rows of a step: at most its tokens; a vocabulary of one slice is never split
    if (lim->max_cols <= SAMP_SLICE || lim->max_tokens <= 0)
        return 0;
    return (size_t)lim->max_tokens * SAMP_ROW_SCRATCH + FG_CUDA_ARENA_ALIGN;
}

fg_status fg_cuda_sample(fg_cuda *c, fg_tensor *out, const fg_tensor *logits, int64_t row0) {
    FG_ASSERT(c->step.sample && logits->type == FG_TYPE_F32 && logits->nb[0] == 4);
    const int64_t rows = logits->ne[1], n_vocab = logits->ne[0];
    FG_ASSERT(row0 >= 0 && row0 + rows <= c->step.n_out && n_vocab <= (1 << 24));
    FG_ASSERT(SAMP_THREADS % c->warp == 0 && SAMP_SCAN_THREADS % c->warp == 0);
    if (rows == 0)
        return FG_OK;
    const float *x = (const float *)logits->data;
    const size_t ld = logits->nb[1] / sizeof(float);
    const fg_sample_row *prow = c->step.sample + row0;
    fg_sample_result *res = (fg_sample_result *)out->data;
    // the split pass where the vocabulary spans slices and the scratch holds the rows (the
    // reserve sizes it for a step's tokens); else every row takes one block
    int slice = c->sample_slice > 0 ? c->sample_slice : c->sample_slice < 0 ? 0 : SAMP_SLICE;
    const int64_t max_slices = slice > 0 ? (n_vocab + slice - 1) / slice : 0;
    const size_t need = (size_t)rows * SAMP_ROW_SCRATCH;
    char *scratch = NULL;
    if (max_slices >= 2 && need + FG_CUDA_ARENA_ALIGN <= c->mm.size)
        FG_TRY(fg_cuda_op_scratch(c, need, (void **)&scratch));
    else
        slice = 0;
    if (slice > 0) {
        const dim3 grid((unsigned)rows, (unsigned)(max_slices < SAMP_MAX_SLICES ? max_slices : SAMP_MAX_SLICES));
        samp_scan_kernel<<<grid, SAMP_SCAN_THREADS, 0, c->stream>>>(x, ld, (int)n_vocab, prow,
                                                                   c->step.sample_entries, slice, scratch);
        FG_GPU_LAUNCH_CHECK(c, "sample (split pass)");
        samp_pick_kernel<<<(unsigned)rows, SAMP_THREADS, 0, c->stream>>>((int)n_vocab, prow, slice, scratch, res);
        FG_GPU_LAUNCH_CHECK(c, "sample (split rows' draw)");
    }
    sample_kernel<<<(unsigned)rows, SAMP_THREADS, 0, c->stream>>>(x, ld, (int)n_vocab, prow, c->step.sample_entries,
                                                                 slice, res);
    FG_GPU_LAUNCH_CHECK(c, "sample");
    return FG_OK;
}
