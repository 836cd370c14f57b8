// test_cuda_matmul_host.cu - replays the CUDA matmul kernels' index maths on the CPU, without a
// GPU: it includes cuda_matmul.cu with FG_MM_HOST_TEST (kernels and launchers left out) and
// runs the kernels' host-callable phases thread by thread, block by block, with the barriers
// between phases, against the scalar C reference (src/quant). Checks:
//   get_rows     every unit of every type bit-identical to the reference to_float
//   matvec       every type x rows 1..8, several chunks, misaligned and padded weight rows,
//                strided x and dst, bias, accumulate: against a double dot of the reference
//                dequantized weights and the (Q8_1-dequantized) activations
//   tiled (FMA)  every type x F32/F16 activations, 3..70 rows, partial tiles
//   direct mv    the same cases as the matvec, quantized types
//   mq           every quantized type x its 8-bit activations, 9..70 rows, partial tiles and K
//                steps, bias, accumulate: against the reference's arithmetic (double)
//   mqm          the same for the tensor-core kernel, 9..200 rows, odd n_out, with the mma
//                emulated per warp from the PTX ISA's fragment tables (and the kernel's fragment
//                helpers checked against those tables)
//   mqr          Q4_K and Q6_K x Q8_K, the register-fed tensor-core kernel's lanes with the same
//                mma emulation, 3..70 rows, every n-tile count, 1, 2 and 4 warps along K, Q6_K's
//                2-aligned blocks and rows
// Not checked here: warp shuffles, the wmma path, the mma instruction itself (its tables are),
// the convert kernel (it mirrors fg_quant_q8_1_act, which this test uses), anything about speed.
// Build and run (no GPU needed), from the repository root, with T a scratch directory:
//   for f in quant/quant_ref quant/quant_kquants quant/types base/status; do
//       gcc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc -c src/$f.c -o $T/${f#*/}.o; done
//   nvcc -std=c++17 -O1 -Iinclude -Isrc tests/unit/test_cuda_matmul_host.cu $T/*.o -o $T/t && $T/t
#define FG_MM_HOST_TEST 1
#include "backend/cuda/cuda_matmul.cu"

extern "C" {
#include "quant/quant.h"
#include "quant/quant_internal.h"
}

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#define SEED 20261206u

static uint64_t g_rng = ((uint64_t)SEED << 32) | 0x5eedu;
static uint64_t rng_next(void) {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_unif(void) { return (float)((rng_next() >> 40) + 0.5) / 16777216.0f; }
static float rng_gauss(void) {
    float u = rng_unif(), v = rng_unif();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static int g_fail = 0, g_checks = 0;
#define CHECK(cond, ...)                                     \
    do {                                                     \
        g_checks++;                                          \
        if (!(cond)) {                                       \
            if (g_fail++ < 30) {                             \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);  \
                printf(__VA_ARGS__);                         \
                printf("\n");                                \
            }                                                \
        }                                                    \
    } while (0)

// 256-aligned host memory (like cudaMalloc) holding `n` bytes at offset `off`.
struct buf {
    std::vector<uint8_t> raw;
    uint8_t *p;
    buf(size_t n, size_t off, uint8_t fill) : raw(n + off + 512, fill) {
        uintptr_t a = ((uintptr_t)raw.data() + 255) & ~(uintptr_t)255;
        p = (uint8_t *)a + off;
    }
};

// A weight matrix of type t: n_out rows of n_in, row stride nb1 >= row bytes, base offset off.
struct wmat {
    uint32_t t;
    int64_t n_out, n_in;
    size_t row_bytes, nb1;
    buf b;
    std::vector<float> deq; // [n_out][n_in] reference dequantization
    wmat(uint32_t t_, int64_t n_out_, int64_t n_in_, size_t pad, size_t off)
        : t(t_), n_out(n_out_), n_in(n_in_), row_bytes(fg_type_row_size_n(t_, n_in_)), nb1(row_bytes + pad),
          b(nb1 * (size_t)n_out_, off, 0xEE), deq((size_t)(n_out_ * n_in_)) {
        const fg_type_traits *tr = fg_type_traits_ref(t);
        std::vector<float> row((size_t)n_in);
        for (int64_t o = 0; o < n_out; o++) {
            float scale = 0.02f * (1.0f + (float)(o % 7));
            for (int64_t i = 0; i < n_in; i++)
                row[(size_t)i] = rng_gauss() * scale + (i % 97 == 3 ? 0.2f : 0.0f);
            tr->from_float(row.data(), b.p + (size_t)o * nb1, n_in);
            tr->to_float(b.p + (size_t)o * nb1, &deq[(size_t)(o * n_in)], n_in);
        }
    }
};

// ---------------------------------------------------------------- get_rows
template <int WT> static void test_get_rows_type(void) {
    const int64_t n_embd = WT == FG_TYPE_F32 || WT == FG_TYPE_F16 || WT == FG_TYPE_BF16 ? 67
                           : fg_qt<mm_is_float(WT) ? FG_TYPE_Q8_0 : WT>::QK == 256 ? 3 * 256
                                                                                  : 7 * 32;
    const size_t off = WT == FG_TYPE_MXFP4 ? 1 : WT == FG_TYPE_F32 ? 4 : 2;
    wmat w(WT, 11, n_embd, 2 * off, off);
    const int32_t tokens[4] = {3, 10, 0, 3};
    const size_t d_nb1 = (size_t)(n_embd + 3) * 4;
    buf d(d_nb1 * 4, 0, 0xFF);
    const int64_t per_row = mm_is_float(WT) ? n_embd : n_embd / 32;
    for (int t = 0; t < 4; t++)
        for (int64_t u = 0; u < per_row + 40; u++) // extra threads must do nothing
            gr_thread<WT>(w.b.p + (size_t)tokens[t] * w.nb1, (float *)(d.p + (size_t)t * d_nb1), u, (int)n_embd);
    int bad = 0;
    for (int t = 0; t < 4; t++) {
        const float *got = (const float *)(d.p + (size_t)t * d_nb1);
        const float *ref = &w.deq[(size_t)(tokens[t] * n_embd)];
        if (memcmp(got, ref, (size_t)n_embd * 4) != 0)
            bad++;
        for (int64_t i = n_embd; i < n_embd + 3; i++)
            if (((const uint32_t *)got)[i] != 0xFFFFFFFFu)
                bad++;
    }
    CHECK(bad == 0, "get_rows %s: %d rows differ from to_float (or guard overwritten)", fg_type_name(WT), bad);
}

// ---------------------------------------------------------------- matvec
template <int WT, int NR> static void emu_mv(const mv_args &a) {
    typedef mv_geo<WT, NR> G;
    buf smb(G::SMEM, 0, 0);
    uint8_t *sm = smb.p;
    std::vector<float> acc((size_t)G::NT * G::R * NR);
    const int n_chunks = mv_n_chunks<WT, NR>(a);
    for (int64_t o0 = 0; o0 < a.n_out; o0 += G::R) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int c = 0; c < n_chunks; c++) {
            memset(sm, 0xFF, G::SMEM); // unstaged bytes read as NaN / 0xFF: would show
            for (int tid = 0; tid < G::NT; tid++)
                mv_stage<WT, NR>(a, o0, c, tid, sm);
            for (int tid = 0; tid < G::NT; tid++) {
                float(&t)[MV_R][NR] = *(float(*)[MV_R][NR]) & acc[(size_t)tid * G::R * NR];
                if constexpr (G::FLT)
                    mv_f_compute<WT, NR>(a, o0, c, tid, sm, t);
                else
                    mv_q_compute<WT, NR>(a, o0, c, tid, sm, t);
            }
        }
        for (int r = 0; r < G::R; r++)
            for (int j = 0; j < NR; j++) {
                float s = 0.0f;
                for (int tid = 0; tid < G::NT; tid++)
                    s += acc[(size_t)tid * G::R * NR + r * NR + j];
                mv_write<WT, NR>(a, o0, r, j, s);
            }
    }
}

// The direct matvec: every thread of the block, then the block's sum.
template <int WT, int NR> static void emu_mw(const mv_args &a) {
    constexpr int R = mw_r<NR>::R;
    for (int64_t o0 = 0; o0 < a.n_out; o0 += R) {
        static float th[MW_NT][R][NR];
        for (int t = 0; t < MW_NT; t++) {
            for (int r = 0; r < R; r++)
                for (int j = 0; j < NR; j++)
                    th[t][r][j] = 0.0f;
            if constexpr (mm_is_float(WT))
                mwf_thread<WT, NR>(a, o0, t, th[t]);
            else if (mw_a4<WT>(a)) // as mw_go picks the reader
                mw_thread<WT, NR, true>(a, o0, t, th[t]);
            else
                mw_thread<WT, NR, false>(a, o0, t, th[t]);
        }
        for (int r = 0; r < R; r++)
            for (int j = 0; j < NR; j++) {
                float s = 0.0f;
                for (int t = 0; t < MW_NT; t++)
                    s += th[t][r][j];
                mv_write<WT, NR>(a, o0, r, j, s);
            }
    }
}

// The direct matvec where mv_rows takes it (returns false where it keeps the staged one).
template <int WT> static bool emu_mw_rows(const mv_args &a) {
    if constexpr (WT == FG_TYPE_F32) {
        return false;
    } else {
        if (mm_is_float(WT) && !mwf_ok<WT>(a))
            return false;
        if (a.nr <= 1)
            emu_mw<WT, 1>(a);
        else if (a.nr <= 2)
            emu_mw<WT, 2>(a);
        else if (a.nr <= 4)
            emu_mw<WT, 4>(a);
        else
            emu_mw<WT, 8>(a);
        return true;
    }
}

// The K-quant matvec (Q4_K/Q5_K, 1-2 rows, 16-aligned rows; mw_go's pick): the activation rows
// staged by every thread of a block into poisoned shared memory, then each 32-lane group's WR
// rows, every lane, the lanes' sums added. Returns false where mw_go keeps the direct matvec.
struct staged_nop { // (the kernel's PDL wait and staging: done above, for every thread)
    FG_HD void operator()() const {}
};
template <int WT, int NR, int WR> static void emu_mwk(const mv_args &a, int nt) {
    std::vector<uint8_t> sm((size_t)NR * mwk_row_smem(a.n_in) + 16);
    uint8_t *s = sm.data() + (16 - ((uintptr_t)sm.data() & 15)) % 16;
    memset(s, 0xFF, (size_t)NR * mwk_row_smem(a.n_in));
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < a.nr; j++)
            mwk_stage(a, j, t, nt, s);
    for (int64_t o0 = 0; o0 < a.n_out; o0 += WR) {
        float sum[WR][NR] = {};
        for (int lane = 0; lane < 32; lane++) {
            float acc[WR][NR] = {};
            mwk_lane<WT, NR, WR>(a, o0, lane, s, acc, staged_nop());
            for (int r = 0; r < WR; r++)
                for (int j = 0; j < NR; j++)
                    sum[r][j] += acc[r][j];
        }
        for (int r = 0; r < WR; r++)
            for (int j = 0; j < NR; j++)
                mv_write<WT, NR>(a, o0, r, j, sum[r][j]);
    }
}
// (nt: the block's threads, which stage the activation rows)
template <int WT, int WR> static bool emu_mwk_rows(const mv_args &a, int nt) {
    if constexpr (WT == FG_TYPE_Q4_K || WT == FG_TYPE_Q5_K) {
        if (a.nr <= 1 && mwk_ok<WT>(a, 1)) {
            emu_mwk<WT, 1, WR>(a, nt);
            return true;
        }
        if (a.nr == 2 && mwk_ok<WT>(a, 2)) {
            emu_mwk<WT, 2, WR>(a, nt);
            return true;
        }
    }
    return false;
}

// As mv_rows picks the kernel.
template <int WT> static void emu_mv_rows(const mv_args &a) {
    if (a.nr <= 1)
        emu_mv<WT, 1>(a);
    else if (a.nr <= 2)
        emu_mv<WT, 2>(a);
    else if (a.nr <= 4)
        emu_mv<WT, 4>(a);
    else
        emu_mv<WT, 8>(a);
}

// Compares dst [rows][n_out] (stride d_nb1) with ref (+ prior values when accumulating):
// every element within tol * (sum |w||x|) of the reference, guard columns untouched.
static void compare(const char *what, const uint8_t *d, size_t d_nb1, int64_t rows, int64_t n_out,
                    const std::vector<double> &ref, const std::vector<double> &mag, double tol) {
    int bad = 0;
    double worst = 0.0, num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = (const float *)(d + (size_t)r * d_nb1);
        for (int64_t o = 0; o < n_out; o++) {
            const double g = row[o], e = ref[(size_t)(r * n_out + o)];
            const double err = fabs(g - e) / (mag[(size_t)(r * n_out + o)] + 1e-30);
            num += (g - e) * (g - e);
            den += e * e;
            if (!(err <= tol)) {
                if (bad++ < 3)
                    printf("    %s: [%lld][%lld] got %.7g want %.7g (rel %.3g)\n", what, (long long)r, (long long)o,
                           g, e, err);
            }
            worst = err > worst ? err : worst;
        }
        if (((const uint32_t *)row)[n_out] != 0xEEEEEEEEu)
            bad++;
    }
    const double nmse = den > 0 ? num / den : num;
    CHECK(bad == 0 && nmse <= 5e-4, "%s: %d bad elements, worst rel %.3g, nmse %.3g", what, bad, worst, nmse);
}

// x rows F32 [rows][n_in] (stride x_nb1 floats * 4 + pad), converted as the kernels see them.
struct acts {
    int64_t rows, n_in;
    size_t nb1;
    buf b;
    std::vector<float> val; // [rows][n_in] the f32 values
    // misaligned rows (a 4-byte offset, a stride of n_in + 5 floats) unless a16: 16-byte aligned
    acts(int64_t rows_, int64_t n_in_, bool a16 = false)
        : rows(rows_), n_in(n_in_), nb1(a16 ? (size_t)(n_in_ + 8) / 4 * 16 : (size_t)(n_in_ + 5) * 4),
          b(nb1 * (size_t)rows_, a16 ? 0 : 4, 0xAB),
          val((size_t)(rows_ * n_in_)) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < n_in; i++) {
                float v = rng_gauss() * (1.0f + (float)(r % 3));
                val[(size_t)(r * n_in + i)] = v;
                memcpy(b.p + (size_t)r * nb1 + (size_t)i * 4, &v, 4);
            }
    }
};

// Reference: ref[r][o] = sum_i w[o][i] * xv[r][i] (double), mag = sum |w||x|; plus prior + bias.
static void reference(const wmat &w, const std::vector<float> &xv, int64_t rows, const float *bias,
                      const std::vector<float> *prior, std::vector<double> &ref, std::vector<double> &mag) {
    ref.assign((size_t)(rows * w.n_out), 0.0);
    mag.assign((size_t)(rows * w.n_out), 0.0);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < w.n_out; o++) {
            double s = 0.0, m = 0.0;
            for (int64_t i = 0; i < w.n_in; i++) {
                const double p = (double)w.deq[(size_t)(o * w.n_in + i)] * (double)xv[(size_t)(r * w.n_in + i)];
                s += p;
                m += fabs(p);
            }
            if (bias)
                s += bias[o], m += fabs(bias[o]);
            if (prior)
                s += (*prior)[(size_t)(r * w.n_out + o)], m += fabs((*prior)[(size_t)(r * w.n_out + o)]);
            ref[(size_t)(r * w.n_out + o)] = s;
            mag[(size_t)(r * w.n_out + o)] = m;
        }
}

// Q4_1/Q5_1 take the min term from the Q8_1 block's stored (f16) s, as the reference's vec_dot
// does: for them ref becomes that vec_dot over the same activation bytes (mag unchanged).
template <int WT>
static void reference_s(const wmat &w, const uint8_t *q, size_t qb, int64_t rows, const float *bias,
                        const std::vector<float> *prior, std::vector<double> &ref) {
    if constexpr (!mm_is_float(WT) && fg_qt<mm_is_float(WT) ? FG_TYPE_Q8_0 : WT>::MIN &&
                  fg_qt<mm_is_float(WT) ? FG_TYPE_Q8_0 : WT>::QK == 32) {
        const fg_type_traits *tr = fg_type_traits_ref(WT);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < w.n_out; o++) {
                float v;
                tr->vec_dot(w.n_in, &v, w.b.p + (size_t)o * w.nb1, q + (size_t)r * qb);
                double e = v;
                if (bias)
                    e += bias[o];
                if (prior)
                    e += (*prior)[(size_t)(r * w.n_out + o)];
                ref[(size_t)(r * w.n_out + o)] = e;
            }
    }
}

struct outbuf {
    size_t nb1;
    buf b;
    std::vector<float> prior;
    outbuf(int64_t rows, int64_t n_out, bool accumulate)
        : nb1((size_t)(n_out + 3) * 4), b(nb1 * (size_t)rows, 0, 0xEE), prior((size_t)(rows * n_out)) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < n_out; o++) {
                float v = accumulate ? rng_gauss() : NAN; // poison unless accumulating
                prior[(size_t)(r * n_out + o)] = accumulate ? v : 0.0f;
                memcpy(b.p + (size_t)r * nb1 + (size_t)o * 4, &v, 4);
            }
    }
};

template <int WT> static void test_mv_type(void) {
    const bool flt = mm_is_float(WT);
    const int qk = flt ? 1 : fg_qt<flt ? FG_TYPE_Q8_0 : WT>::QK;
    // n_in: one partial chunk, and several chunks (chunk = 2048 or 4096 elements; 512/1024 float),
    // misaligned; then an even number of blocks in 4-aligned rows (the direct matvec's 32-bit
    // reads: fg_rd_a4 and mw_image)
    // (float: a fourth size whose rows take the direct float matvec a second, partial batch)
    const int64_t n_ins[4] = {flt ? 67 : qk == 256 ? 2 * 256 : 7 * 32, flt ? 1103 : qk == 256 ? 21 * 256 : 139 * 32,
                              flt ? 256 : qk == 256 ? 6 * 256 : 70 * 32, flt ? 8 * (4 * MW_NT + 5) : 17 * 256};
    const int64_t n_outs[4] = {37, 9, 13, 5};
    int n_direct = 0, n_mwk = 0;
    const bool kq16 = WT == FG_TYPE_Q4_K || WT == FG_TYPE_Q5_K;
    // (Q4_K/Q5_K: a fourth size, 17 super-blocks, whose K-quant matvec lanes take a second batch)
    for (int si = 0; si < (flt || kq16 ? 4 : 3); si++) {
        const int64_t n_in = n_ins[si], n_out = n_outs[si];
        const size_t off = WT == FG_TYPE_MXFP4 ? 1 : WT == FG_TYPE_F32 ? 4 : 2;
        wmat w(WT, n_out, n_in, si == 1 ? off * 3 : 0, si == 1 ? off : 0);
        std::vector<float> bias((size_t)n_out);
        for (auto &v : bias)
            v = rng_gauss();
        for (int nr = 1; nr <= FG_MV_MAX_ROWS; nr++) {
            const bool accumulate = nr % 3 == 0, use_bias = nr % 2 == 1;
            acts x(nr, n_in, flt && si >= 2); // (the direct float matvec takes 16-aligned rows)
            outbuf d(nr, n_out, accumulate);
            mv_args a;
            a.w = w.b.p;
            a.w_nb1 = w.nb1;
            a.dst = (float *)d.b.p;
            a.d_nb1 = d.nb1;
            a.bias = use_bias ? bias.data() : NULL;
            a.n_out = n_out;
            a.n_in = (int)n_in;
            a.nr = nr;
            a.accumulate = accumulate;
            a.pipe = nr % 2; // the quantized direct matvec's two loops
            std::vector<float> xv = x.val; // what the kernel multiplies by
            const bool kq = mm_is_k(WT); // the K-quants take Q8_K activations (the reference's)
            buf q(mm_act_row_bytes(WT, n_in) * (size_t)nr, si == 1 ? 4 : 0, 0x77);
            if (flt) {
                a.x = x.b.p;
                a.x_nb1 = x.nb1;
                // the float matvec multiplies F16/BF16 weights by x on their own grid (the
                // reference's vec_dot_type), F32 weights by x itself
                for (float &v : xv)
                    v = WT == FG_TYPE_F16 ? fg_f16_to_f32(fg_f32_to_f16(v))
                        : WT == FG_TYPE_BF16 ? fg_bf16_to_f32(fg_f32_to_bf16(v)) : v;
            } else {
                const size_t qb = mm_act_row_bytes(WT, n_in);
                const uint32_t at = kq ? FG_TYPE_Q8_K : FG_TYPE_Q8_1;
                for (int r = 0; r < nr; r++) {
                    if (kq)
                        fg_type_traits_ref(FG_TYPE_Q8_K)->from_float(&x.val[(size_t)(r * n_in)], q.p + (size_t)r * qb, n_in);
                    else
                        fg_quant_q8_1_act(&x.val[(size_t)(r * n_in)], q.p + (size_t)r * qb, n_in);
                    fg_type_traits_ref(at)->to_float(q.p + (size_t)r * qb, &xv[(size_t)(r * n_in)], n_in);
                }
                a.x = q.p;
                a.x_nb1 = qb;
            }
            std::vector<uint8_t> before(d.b.raw); // the direct matvec runs on the same output
            emu_mv_rows<WT>(a);
            std::vector<double> ref, mag;
            reference(w, xv, nr, a.bias, accumulate ? &d.prior : NULL, ref, mag);
            reference_s<WT>(w, q.p, mm_act_row_bytes(WT, n_in), nr, a.bias, accumulate ? &d.prior : NULL, ref);
            char what[96];
            snprintf(what, sizeof what, "matvec %s n_in %lld n_out %lld rows %d", fg_type_name(WT), (long long)n_in,
                     (long long)n_out, nr);
            compare(what, d.b.p, d.nb1, nr, n_out, ref, mag, 1e-5);
            d.b.raw = before;
            if (emu_mw_rows<WT>(a)) {
                snprintf(what, sizeof what, "direct matvec %s n_in %lld n_out %lld rows %d", fg_type_name(WT),
                         (long long)n_in, (long long)n_out, nr);
                compare(what, d.b.p, d.nb1, nr, n_out, ref, mag, 1e-5);
                n_direct++;
            }
            for (int v = 0; v < 4; v++) { // 1 or 2 rows a group
                // (staged by the kernel's 128 threads; also by 256: any block stages alike)
                const int wr = 1 + v % 2, nt = v < 2 ? MWK_NT : 256;
                d.b.raw = before;
                const bool took = wr == 1 ? emu_mwk_rows<WT, 1>(a, nt) : emu_mwk_rows<WT, 2>(a, nt);
                if (took) {
                    snprintf(what, sizeof what, "K-quant matvec %s n_in %lld n_out %lld rows %d, %d a group, %d threads",
                             fg_type_name(WT), (long long)n_in, (long long)n_out, nr, wr, nt);
                    compare(what, d.b.p, d.nb1, nr, n_out, ref, mag, 1e-5);
                    n_mwk++;
                }
            }
        }
    }
    // every type but F32 has rows the direct matvec takes (the 16-aligned sizes)
    CHECK(WT == FG_TYPE_F32 ? n_direct == 0 : n_direct > 0, "direct matvec %s: %d cases", fg_type_name(WT), n_direct);
    // the K-quant matvec: Q4_K and Q5_K rows of 1 and 2 activation rows in 16-aligned rows (three
    // sizes of four: the second is misaligned), both group widths, staged by 128 and 256 threads
    CHECK(n_mwk == (kq16 ? 3 * 2 * 4 : 0), "K-quant matvec %s: %d cases", fg_type_name(WT), n_mwk);
}

// ---------------------------------------------------------------- tiled (FMA twin)
template <int WT, int XT> static void emu_tm(const tm_args &a) {
    buf smb(TM_SMEM, 0, 0);
    uint16_t *As = (uint16_t *)smb.p, *Bs = As + TM_BM * TM_LDA;
    float *Cs = (float *)smb.p;
    std::vector<float> acc((size_t)TM_NT * TM_TM * TM_TN);
    for (int64_t m0 = 0; m0 < a.n_out; m0 += TM_BM)
        for (int64_t n0 = 0; n0 < a.n_rows; n0 += TM_BN) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int k0 = 0; k0 < a.n_in; k0 += TM_BK) {
                memset(smb.p, 0xFF, TM_SMEM);
                for (int tid = 0; tid < TM_NT; tid++) {
                    tm_load_w<WT>(a, m0, k0, tid, As);
                    tm_load_x<XT>(a, n0, k0, tid, Bs);
                }
                for (int tid = 0; tid < TM_NT; tid++)
                    tm_fma(As, Bs, tid, *(float(*)[TM_TM][TM_TN]) & acc[(size_t)tid * TM_TM * TM_TN]);
            }
            memset(smb.p, 0xFF, TM_SMEM);
            for (int tid = 0; tid < TM_NT; tid++)
                tm_fma_store(*(float(*)[TM_TM][TM_TN]) & acc[(size_t)tid * TM_TM * TM_TN], tid, Cs);
            for (int tid = 0; tid < TM_NT; tid++)
                tm_write(a, m0, n0, tid, Cs);
        }
}

static float round_h(float f) { return fg_f16_to_f32(fg_f32_to_f16(f)); }

template <int WT, int XT> static void test_tm_case(int64_t rows, int64_t n_out, int64_t n_in, bool accumulate, bool use_bias) {
    const size_t off = WT == FG_TYPE_MXFP4 ? 1 : WT == FG_TYPE_F32 ? 4 : 2;
    wmat w(WT, n_out, n_in, off, off);
    for (auto &v : w.deq) // the kernel multiplies f16 copies of the weights
        v = round_h(v);
    acts x(rows, n_in);
    outbuf d(rows, n_out, accumulate);
    std::vector<float> bias((size_t)n_out);
    for (auto &v : bias)
        v = rng_gauss();
    tm_args a;
    a.w = w.b.p;
    a.w_nb1 = w.nb1;
    a.dst = (float *)d.b.p;
    a.d_nb1 = d.nb1;
    a.bias = use_bias ? bias.data() : NULL;
    a.n_out = n_out;
    a.n_rows = rows;
    a.n_in = (int)n_in;
    a.accumulate = accumulate;
    std::vector<float> xv((size_t)(rows * n_in));
    buf xb((size_t)n_in * 2 * (size_t)rows + 64, 4, 0x55);
    if (XT == FG_TYPE_F32) {
        a.x = x.b.p;
        a.x_nb1 = x.nb1;
        for (size_t i = 0; i < xv.size(); i++)
            xv[i] = round_h(x.val[i]);
    } else {
        a.x = xb.p;
        a.x_nb1 = (size_t)n_in * 2;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < n_in; i++) {
                uint16_t h = fg_f32_to_f16(x.val[(size_t)(r * n_in + i)]);
                memcpy(xb.p + a.x_nb1 * (size_t)r + (size_t)i * 2, &h, 2);
                xv[(size_t)(r * n_in + i)] = fg_f16_to_f32(h);
            }
    }
    emu_tm<WT, XT>(a);
    std::vector<double> ref, mag;
    reference(w, xv, rows, a.bias, accumulate ? &d.prior : NULL, ref, mag);
    char what[112];
    snprintf(what, sizeof what, "tiled %s x %s n_in %lld n_out %lld rows %lld", fg_type_name(WT), fg_type_name(XT),
             (long long)n_in, (long long)n_out, (long long)rows);
    compare(what, d.b.p, d.nb1, rows, n_out, ref, mag, 1e-5);
}

template <int WT> static void test_tm_type(void) {
    const bool flt = mm_is_float(WT);
    const int qk = flt ? 1 : fg_qt<flt ? FG_TYPE_Q8_0 : WT>::QK;
    const int64_t n_in = flt ? 67 : qk == 256 ? 2 * 256 : 7 * 32;
    test_tm_case<WT, FG_TYPE_F32>(9, 131, n_in, false, true);
    test_tm_case<WT, FG_TYPE_F16>(33, 37, n_in, true, false);
    test_tm_case<WT, FG_TYPE_F16>(70, 300, flt ? 96 : n_in, false, false);
    test_tm_case<WT, FG_TYPE_F32>(3, 129, qk == 256 ? 256 : 128, true, true); // few rows, F32
}

// ---------------------------------------------------------------- integer tiled (mq)
template <int WT> static void emu_mq(const mq_args &a) {
    buf smb(MQ_SMEM, 0, 0);
    std::vector<float> acc((size_t)MQ_NT * MQ_TM * MQ_TN);
    for (int64_t m0 = 0; m0 < a.n_out; m0 += MQ_BM)
        for (int64_t n0 = 0; n0 < a.n_rows; n0 += MQ_BN) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int ku0 = 0; ku0 < a.n_units; ku0 += MQ_BU) {
                memset(smb.p, 0xFF, MQ_SMEM); // every byte read must have been staged
                for (int tid = 0; tid < MQ_NT; tid++) {
                    mq_load_w<WT>(a, m0, ku0, tid, smb.p);
                    mq_load_x<WT>(a, n0, ku0, tid, smb.p);
                }
                for (int tid = 0; tid < MQ_NT; tid++)
                    mq_compute<WT>(smb.p, tid, *(float(*)[MQ_TM][MQ_TN]) & acc[(size_t)tid * MQ_TM * MQ_TN]);
            }
            for (int tid = 0; tid < MQ_NT; tid++)
                mq_write(a, m0, n0, tid, *(float(*)[MQ_TM][MQ_TN]) & acc[(size_t)tid * MQ_TM * MQ_TN]);
        }
}

// ---------------------------------------------------------------- integer tensor-core tiled (mqm)
// The mma is emulated per warp from the PTX ISA's fragment tables ("Matrix Fragments for
// mma.m16n8k32" and "mma.m16n8k16", .s8), transcribed here independently of the kernel's
// mqm_a_row/... helpers, so that a wrong helper (the kernel loading a register from the wrong
// place) shows as wrong results. groupID = lane >> 2, threadID_in_group = lane % 4; byte e of a
// lane's fragment is byte e % 4 of register e / 4.
static void ptx_k32_a(int lane, int e, int *row, int *col) { // e = 0..15
    const int g = lane >> 2, t = lane % 4;
    *row = (e < 4 || (e >= 8 && e < 12)) ? g : g + 8;
    *col = t * 4 + (e & 3) + (e >= 8 ? 16 : 0);
}
static void ptx_k32_b(int lane, int e, int *row, int *col) { // e = 0..7; row = k
    const int g = lane >> 2, t = lane % 4;
    *row = t * 4 + (e & 3) + (e >= 4 ? 16 : 0);
    *col = g;
}
static void ptx_k16_a(int lane, int e, int *row, int *col) { // e = 0..7
    const int g = lane >> 2, t = lane % 4;
    *row = e < 4 ? g : g + 8;
    *col = t * 4 + (e & 3);
}
static void ptx_k16_b(int lane, int e, int *row, int *col) { // e = 0..3
    *row = (lane % 4) * 4 + e;
    *col = lane >> 2;
}
static void ptx_c(int lane, int e, int *row, int *col) { // e = 0..3 (m16n8, s32)
    const int g = lane >> 2, t = lane % 4;
    *row = e < 2 ? g : g + 8;
    *col = t * 2 + (e & 1);
}
static int8_t frag_byte(const uint32_t *regs, int e) { return (int8_t)(regs[e / 4] >> (8 * (e % 4))); }

// D = A B + C over one warp, each lane's registers as the hardware reads and writes them.
// k32: a[lane][0..3], b[lane][0..1]; k16: a[lane][0..1], b[lane][0]. C is MQM_FBIAS everywhere.
static void emu_mma(bool k16, const uint32_t (*a)[4], const uint32_t (*b)[2], int (*d)[4]) {
    const int K = k16 ? 16 : 32;
    int A[16][32], B[32][8];
    for (int lane = 0; lane < 32; lane++) {
        for (int e = 0; e < K / 2; e++) {
            int r, c;
            (k16 ? ptx_k16_a : ptx_k32_a)(lane, e, &r, &c);
            A[r][c] = frag_byte(a[lane], e);
        }
        for (int e = 0; e < K / 4; e++) {
            int r, c;
            (k16 ? ptx_k16_b : ptx_k32_b)(lane, e, &r, &c);
            B[r][c] = frag_byte(b[lane], e);
        }
    }
    for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) {
            int r, c;
            ptx_c(lane, e, &r, &c);
            int s = MQM_FBIAS;
            for (int k = 0; k < K; k++)
                s += A[r][k] * B[k][c];
            d[lane][e] = s;
        }
}

// The same with the operands' signedness (.u8 / .s8) and C read from c (NULL: 0), as the chained
// mqr variant's instructions: D = A B + C.
static void emu_mma_x(bool k16, bool a_s8, bool b_s8, const uint32_t (*a)[4], const uint32_t (*b)[2], const int (*c)[4],
                      int (*d)[4]) {
    const int K = k16 ? 16 : 32;
    int A[16][32], B[32][8];
    for (int lane = 0; lane < 32; lane++) {
        for (int e = 0; e < K / 2; e++) {
            int r, col;
            (k16 ? ptx_k16_a : ptx_k32_a)(lane, e, &r, &col);
            A[r][col] = a_s8 ? frag_byte(a[lane], e) : (int)(uint8_t)frag_byte(a[lane], e);
        }
        for (int e = 0; e < K / 4; e++) {
            int r, col;
            (k16 ? ptx_k16_b : ptx_k32_b)(lane, e, &r, &col);
            B[r][col] = b_s8 ? frag_byte(b[lane], e) : (int)(uint8_t)frag_byte(b[lane], e);
        }
    }
    for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) {
            int r, col;
            ptx_c(lane, e, &r, &col);
            int s = c ? c[lane][e] : 0;
            for (int k = 0; k < K; k++)
                s += A[r][k] * B[k][col];
            d[lane][e] = s;
        }
}

// The kernel's helpers against the transcription: every register's row and word.
static void test_mqm_layout(void) {
    int bad = 0;
    for (int lane = 0; lane < 32; lane++) {
        for (int e = 0; e < 16; e++) {
            int r, c;
            ptx_k32_a(lane, e, &r, &c);
            bad += mqm_a_row(lane, e / 4) != r || 4 * mqm_a_word(lane, e / 4) + e % 4 != c;
        }
        for (int e = 0; e < 8; e++) {
            int r, c;
            ptx_k32_b(lane, e, &r, &c);
            bad += mqm_b_col(lane, e / 4) != c || 4 * mqm_b_word(lane, e / 4) + e % 4 != r;
        }
        for (int e = 0; e < 8; e++) { // k16 on {a0, a1} and on {a2, a3} (k 16..31 of the unit)
            int r, c;
            ptx_k16_a(lane, e, &r, &c);
            bad += mqm_a_row(lane, e / 4) != r || 4 * mqm_a_word(lane, e / 4) + e % 4 != c;
            bad += mqm_a_row(lane, 2 + e / 4) != r || 4 * mqm_a_word(lane, 2 + e / 4) + e % 4 != 16 + c;
        }
        for (int e = 0; e < 4; e++) {
            int r, c;
            ptx_k16_b(lane, e, &r, &c);
            bad += mqm_b_col(lane, 0) != c || 4 * mqm_b_word(lane, 0) + e != r;
            bad += mqm_b_col(lane, 1) != c || 4 * mqm_b_word(lane, 1) + e != 16 + r;
            ptx_c(lane, e, &r, &c);
            bad += mqm_c_row(lane, e) != r || mqm_c_col(lane, e) != c;
        }
    }
    // the swizzle is a permutation of each row's words, and a fragment load is bank-conflict free
    for (int r = 0; r < 16; r++)
        for (int w = 0; w < 8; w++)
            bad += mqm_word(r, w) / 8 != r || mqm_word(r, mqm_word(r, w) % 8) % 8 != w;
    for (int reg = 0; reg < 4; reg++) {
        int banks = 0;
        for (int lane = 0; lane < 32; lane++)
            banks |= 1 << (mqm_word(mqm_a_row(lane, reg), mqm_a_word(lane, reg)) % 32);
        bad += banks != -1;
    }
    CHECK(bad == 0, "mqm fragment helpers differ from the PTX ISA tables in %d places", bad);
}

// The kernel, block by block: staging by all threads, then each warp's units with its lanes'
// fragments gathered, the mma emulated, the scaling per lane (mqm_kernel's order).
// With a.part set, K in splits of a.ku_split units (grid z), each writing through
// mq_split_part, then mq_reduce_one over every output (mq_reduce_kernel).
// Per step: phase 2 (decode) of every thread, then phase 1 (staging) of the next step, then the
// compute: an order the kernel's barriers allow (a warp may stage the next step while others
// still compute), so staging that touched the tiles would show. Tiles are poisoned before each
// phase 2 and the slots before each phase 1: every byte read must have been written.
template <int WT> static void emu_mqm(const mq_args &a) {
    typedef mqm_raw<WT> G;
    buf smb(G::SMEM, 0, 0xFF);
    std::vector<fg_q8unit> xr((size_t)MQM_NT * MQM_PX);
    typedef fg_q8unit xr_t[MQM_PX];
    std::vector<float> acc((size_t)MQM_NT * MQM_NI * MQM_NJ * 4);
    std::vector<mqm_frag> f(32);
    typedef float acc_t[MQM_NI][MQM_NJ][4];
    const int n_split = a.part ? (a.n_units + a.ku_split - 1) / a.ku_split : 1;
    for (int z = 0; z < n_split; z++)
    for (int64_t m0 = 0; m0 < a.n_out; m0 += MQM_BM)
        for (int64_t n0 = 0; n0 < a.n_rows; n0 += MQM_BN) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            const int ku_lo = a.part ? z * a.ku_split : 0;
            const int ku_end = a.part && a.n_units - ku_lo >= a.ku_split ? ku_lo + a.ku_split : a.n_units;
            memset(smb.p + G::OFFS, 0xFF, (size_t)(G::SMEM - G::OFFS));
            for (int tid = 0; tid < MQM_NT; tid++)
                mqm_stage<WT>(a, m0, n0, ku_lo, ku_end, tid, smb.p, *(xr_t *)&xr[(size_t)tid * MQM_PX]);
            for (int ku0 = ku_lo; ku0 < ku_end; ku0 += MQM_BU) {
                memset(smb.p, 0xFF, MQM_SMEM);
                for (int tid = 0; tid < MQM_NT; tid++)
                    mqm_decode<WT>(a, m0, ku0, ku_end, tid, smb.p, *(const xr_t *)&xr[(size_t)tid * MQM_PX]);
                if (ku0 + MQM_BU < ku_end) {
                    memset(smb.p + G::OFFS, 0xFF, (size_t)(G::SMEM - G::OFFS));
                    for (int tid = 0; tid < MQM_NT; tid++)
                        mqm_stage<WT>(a, m0, n0, ku0 + MQM_BU, ku_end, tid, smb.p, *(xr_t *)&xr[(size_t)tid * MQM_PX]);
                }
                for (int warp = 0; warp < MQM_NT / 32; warp++)
                    for (int uu = 0; uu < MQM_BU; uu++) {
                        // the kernel's skip of mma tiles wholly past the last row
                        const int64_t wn0 = n0 + mqm_warp_n(warp);
                        for (int lane = 0; lane < 32; lane++)
                            mqm_frags<WT>(smb.p, uu, warp, lane, f[(size_t)lane]);
                        for (int i = 0; i < MQM_NI; i++)
                            for (int j = 0; j < MQM_NJ; j++) {
                                if (wn0 + 8 * j >= a.n_rows)
                                    continue;
                                uint32_t fa[32][4], fb[32][2];
                                int lo[32][4], hi[32][4];
                                for (int lane = 0; lane < 32; lane++) {
                                    memcpy(fa[lane], f[(size_t)lane].a[i], sizeof fa[lane]);
                                    memcpy(fb[lane], f[(size_t)lane].b[j], sizeof fb[lane]);
                                }
                                if (fg_qt<WT>::SPLIT) {
                                    uint32_t fa2[32][4], fb2[32][2];
                                    for (int lane = 0; lane < 32; lane++) {
                                        fa2[lane][0] = fa[lane][2], fa2[lane][1] = fa[lane][3];
                                        fb2[lane][0] = fb[lane][1];
                                    }
                                    emu_mma(true, fa, fb, lo);
                                    emu_mma(true, fa2, fb2, hi);
                                } else {
                                    emu_mma(false, fa, fb, lo);
                                    for (int lane = 0; lane < 32; lane++)
                                        for (int e = 0; e < 4; e++)
                                            hi[lane][e] = MQM_FBIAS;
                                }
                                for (int lane = 0; lane < 32; lane++)
                                    mqm_scale<WT>(f[(size_t)lane], i, j, lo[lane], hi[lane],
                                                  (*(acc_t *)&acc[(size_t)(warp * 32 + lane) * MQM_NI * MQM_NJ * 4])[i][j]);
                            }
                    }
            }
            for (int tid = 0; tid < MQM_NT; tid++)
                mqm_write(mq_split_part(a, z), m0, n0, tid / 32, tid % 32,
                          *(acc_t *)&acc[(size_t)tid * MQM_NI * MQM_NJ * 4]);
        }
    if (a.part)
        for (int64_t r = 0; r < a.n_rows; r++)
            for (int64_t o = 0; o < a.n_out; o++)
                mq_reduce_one(a, n_split, r, o);
}

// Split K of a tensor-core kernel's arguments into splits of `steps` K steps (0: whole K), the
// partial sums in a poisoned buffer of padded rows (their own stride).
struct split_k {
    int n;
    buf part;
    split_k(mq_args &a, int steps)
        : n(steps > 0 ? (a.n_units + MQM_BU * steps - 1) / (MQM_BU * steps) : 1),
          part((size_t)n * (size_t)a.n_rows * (size_t)(a.n_out + 3) * 4, 0, 0xFF) {
        if (steps > 0) {
            a.ku_split = MQM_BU * steps;
            a.part = part.p;
            a.part_nb1 = (size_t)(a.n_out + 3) * 4;
            a.split_nb = a.part_nb1 * (size_t)a.n_rows;
        }
    }
};

// rows x n_out x n_in with 8-bit activations on the weight's grid; against the double dot of
// the dequantized weights and the dequantized activation bytes (the reference's arithmetic).
template <int WT>
static void test_mq_case(int64_t rows, int64_t n_out, int64_t n_in, bool accumulate, bool use_bias, bool mma = false,
                         int split_steps = 0) {
    const size_t off = WT == FG_TYPE_MXFP4 ? 1 : 2;
    wmat w(WT, n_out, n_in, off * 3, off);
    std::vector<float> bias((size_t)n_out);
    for (auto &v : bias)
        v = rng_gauss();
    acts x(rows, n_in);
    outbuf d(rows, n_out, accumulate);
    std::vector<float> xv = x.val;
    const bool kq = mm_is_k(WT);
    const size_t qb = mm_act_row_bytes(WT, n_in);
    buf q(qb * (size_t)rows, 4, 0x77);
    for (int64_t r = 0; r < rows; r++) {
        if (kq)
            fg_type_traits_ref(FG_TYPE_Q8_K)->from_float(&x.val[(size_t)(r * n_in)], q.p + (size_t)r * qb, n_in);
        else
            fg_quant_q8_1_act(&x.val[(size_t)(r * n_in)], q.p + (size_t)r * qb, n_in);
        fg_type_traits_ref(kq ? FG_TYPE_Q8_K : FG_TYPE_Q8_1)->to_float(q.p + (size_t)r * qb, &xv[(size_t)(r * n_in)], n_in);
    }
    mq_args a = mq_args_make(w.b.p, w.nb1, q.p, qb, (float *)d.b.p, d.nb1, use_bias ? bias.data() : NULL, n_out, rows,
                             n_in, accumulate);
    split_k sk(a, split_steps);
    const int n_split = sk.n;
    if (mma)
        emu_mqm<WT>(a);
    else
        emu_mq<WT>(a);
    std::vector<double> ref, mag;
    reference(w, xv, rows, a.bias, accumulate ? &d.prior : NULL, ref, mag);
    reference_s<WT>(w, q.p, qb, rows, a.bias, accumulate ? &d.prior : NULL, ref);
    char what[96];
    snprintf(what, sizeof what, "%s %s n_in %lld n_out %lld rows %lld splits %d", mma ? "mqm" : "mq", fg_type_name(WT),
             (long long)n_in, (long long)n_out, (long long)rows, n_split);
    compare(what, d.b.p, d.nb1, rows, n_out, ref, mag, 1e-5);
}

template <int WT> static void test_mq_type(void) {
    const int qk = fg_qt<WT>::QK;
    test_mq_case<WT>(9, 131, qk == 256 ? 2 * 256 : 7 * 32, false, true);    // partial K step, tiles
    test_mq_case<WT>(70, 65, qk == 256 ? 3 * 256 : 13 * 32, true, false);   // 2 x 2 tiles, ragged
    test_mq_case<WT>(64, 64, qk == 256 ? 256 : 4 * 32, false, false);       // exact tile
    // the tensor-core kernel (tiles of 128 x 64, 4 units a step)
    const int64_t k1 = qk == 256 ? 256 : 7 * 32, k2 = qk == 256 ? 3 * 256 : 13 * 32;
    test_mq_case<WT>(9, 131, k1, false, true, true);    // one n tile, partial K step
    test_mq_case<WT>(33, 131, k2, true, true, true);    // 2 m tiles, ragged m
    test_mq_case<WT>(64, 128, k1, false, false, true);  // exact tile
    test_mq_case<WT>(65, 77, k2, true, false, true);    // one row into a second n tile
    test_mq_case<WT>(200, 259, k1, true, true, true);   // 4 n tiles, 3 m tiles
    // split K (batched decode): uneven last split, rows of one warp only, a warp past the rows
    const int64_t k3 = qk == 256 ? 5 * 256 : 37 * 32;
    test_mq_case<WT>(17, 131, k3, true, true, true, 2);  // 40/37 units in splits of 8 units
    test_mq_case<WT>(3, 77, k3, false, true, true, 1);   // splits of one step, 3 rows
    test_mq_case<WT>(40, 130, k2, true, false, true, 3); // a split of a partial step
}

// ---------------------------------------------------------------- F16 tensor-core kernel (mhm)
// ldmatrix.x4 (PTX ISA, "ldmatrix"): lane l gives the address of row l % 8 of matrix l / 8; lane
// l then holds in register q the two halves of matrix q at row l / 4, columns 2 (l % 4) and + 1.
static void emu_ldm4(const uint8_t *base, const int *off, uint32_t (*r)[4]) {
    for (int lane = 0; lane < 32; lane++)
        for (int q = 0; q < 4; q++)
            memcpy(&r[lane][q], base + off[8 * q + lane / 4] + 4 * (lane % 4), 4);
}

// mma.m16n8k16.row.col.f32.f16.f16.f32 from the PTX ISA's fragment tables (g = lane / 4,
// t = lane % 4): A register q holds row g + 8 (q & 1), columns 2t + 8 (q >> 1) and + 1; B
// register q rows (k) 2t + 8q and + 1 of column g; C element i row g + 8 (i >> 1), column
// 2t + (i & 1). Products summed in double (the hardware's order is not specified).
static void emu_hmma(const uint32_t (*a)[4], const uint32_t (*b)[2], float (*c)[4]) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int q = 0; q < 4; q++) {
            A[g + 8 * (q & 1)][2 * t + 8 * (q >> 1)] = fg_f16_to_f32((uint16_t)(a[lane][q] & 0xFFFF));
            A[g + 8 * (q & 1)][2 * t + 8 * (q >> 1) + 1] = fg_f16_to_f32((uint16_t)(a[lane][q] >> 16));
        }
        for (int q = 0; q < 2; q++) {
            B[2 * t + 8 * q][g] = fg_f16_to_f32((uint16_t)(b[lane][q] & 0xFFFF));
            B[2 * t + 8 * q + 1][g] = fg_f16_to_f32((uint16_t)(b[lane][q] >> 16));
        }
    }
    for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
            const int row = lane / 4 + 8 * (i >> 1), col = 2 * (lane % 4) + (i & 1);
            double sum = c[lane][i];
            for (int k = 0; k < 16; k++)
                sum += (double)A[row][k] * B[k][col];
            c[lane][i] = (float)sum;
        }
}

// The kernel, block by block, in mhm_kernel's order: the loads of the first step, then per
// step the slots stored, phase 2 (decode), the next step's loads, then every warp's ldmatrix
// and mma (tiles past the last row skipped). Slots and tiles are poisoned before they are
// written, so every byte read must have been. Split K and the epilogue as mqm.
template <int WT> static void emu_mhm(const mq_args &a) {
    typedef mqm_raw<WT> G;
    buf smb(mhm_smem<WT>::SMEM, 0, 0xFF);
    std::vector<uint4> v((size_t)MQM_NT * G::K), xv((size_t)MQM_NT * MHM_PX);
    typedef uint4 v_t[G::K];
    typedef uint4 xv_t[MHM_PX];
    std::vector<float> acc((size_t)MQM_NT * MQM_NI * MQM_NJ * 4);
    typedef float acc_t[MQM_NI][MQM_NJ][4];
    const int n_split = a.part ? (a.n_units + a.ku_split - 1) / a.ku_split : 1;
    for (int z = 0; z < n_split; z++)
        for (int64_t m0 = 0; m0 < a.n_out; m0 += MQM_BM)
            for (int64_t n0 = 0; n0 < a.n_rows; n0 += MQM_BN) {
                std::fill(acc.begin(), acc.end(), 0.0f);
                const int ku_lo = a.part ? z * a.ku_split : 0;
                const int ku_end = a.part && a.n_units - ku_lo >= a.ku_split ? ku_lo + a.ku_split : a.n_units;
                for (int tid = 0; tid < MQM_NT; tid++)
                    mhm_load<WT>(a, m0, n0, ku_lo, ku_end, tid, *(v_t *)&v[(size_t)tid * G::K],
                                 *(xv_t *)&xv[(size_t)tid * MHM_PX]);
                for (int ku0 = ku_lo; ku0 < ku_end; ku0 += MHM_BU) {
                    memset(smb.p + MHM_SMEM, 0xFF, (size_t)(mhm_smem<WT>::SMEM - MHM_SMEM));
                    for (int tid = 0; tid < MQM_NT; tid++)
                        mqm_stage_w_store<WT>(a, m0, ku0, ku_end, tid, smb.p + MHM_SMEM, *(const v_t *)&v[(size_t)tid * G::K]);
                    memset(smb.p, 0xFF, MHM_SMEM);
                    for (int tid = 0; tid < MQM_NT; tid++)
                        mhm_decode<WT>(a, m0, ku0, ku_end, tid, smb.p, *(const xv_t *)&xv[(size_t)tid * MHM_PX]);
                    if (ku0 + MHM_BU < ku_end)
                        for (int tid = 0; tid < MQM_NT; tid++)
                            mhm_load<WT>(a, m0, n0, ku0 + MHM_BU, ku_end, tid, *(v_t *)&v[(size_t)tid * G::K],
                                         *(xv_t *)&xv[(size_t)tid * MHM_PX]);
                    for (int warp = 0; warp < MQM_NT / 32; warp++) {
                        const int wm = mqm_warp_m(warp), wn = mqm_warp_n(warp);
                        const int64_t wn0 = n0 + wn;
                        for (int uu = 0; uu < MHM_BU; uu++)
                            for (int kh = 0; kh < 2; kh++) {
                                const uint8_t *wt = smb.p + MHM_WH + uu * MQM_BM * 64;
                                const uint8_t *xt = smb.p + MHM_XH + uu * MQM_BN * 64;
                                uint32_t af[MQM_NI][32][4], bf[MQM_NJ / 2][32][4];
                                int off[32];
                                for (int i = 0; i < MQM_NI; i++) {
                                    for (int lane = 0; lane < 32; lane++)
                                        off[lane] = mhm_a_off(wm, i, kh, lane);
                                    emu_ldm4(wt, off, af[i]);
                                }
                                for (int jp = 0; jp < MQM_NJ / 2; jp++) {
                                    for (int lane = 0; lane < 32; lane++)
                                        off[lane] = mhm_b_off(wn, jp, kh, lane);
                                    emu_ldm4(xt, off, bf[jp]);
                                }
                                for (int i = 0; i < MQM_NI; i++)
                                    for (int j = 0; j < MQM_NJ; j++) {
                                        if (wn0 + 8 * j >= a.n_rows)
                                            continue;
                                        uint32_t fb[32][2];
                                        float c[32][4];
                                        for (int lane = 0; lane < 32; lane++) {
                                            fb[lane][0] = bf[j / 2][lane][2 * (j % 2)];
                                            fb[lane][1] = bf[j / 2][lane][2 * (j % 2) + 1];
                                            memcpy(c[lane], (*(acc_t *)&acc[(size_t)(warp * 32 + lane) * MQM_NI * MQM_NJ * 4])[i][j],
                                                   sizeof c[lane]);
                                        }
                                        emu_hmma(af[i], fb, c);
                                        for (int lane = 0; lane < 32; lane++)
                                            memcpy((*(acc_t *)&acc[(size_t)(warp * 32 + lane) * MQM_NI * MQM_NJ * 4])[i][j], c[lane],
                                                   sizeof c[lane]);
                                    }
                            }
                    }
                }
                for (int tid = 0; tid < MQM_NT; tid++)
                    mqm_write(mq_split_part(a, z), m0, n0, tid / 32, tid % 32,
                              *(acc_t *)&acc[(size_t)tid * MQM_NI * MQM_NJ * 4]);
            }
    if (a.part)
        for (int64_t r = 0; r < a.n_rows; r++)
            for (int64_t o = 0; o < a.n_out; o++)
                mq_reduce_one(a, n_split, r, o);
}

// rows x n_out x n_in with F16 activation rows (16-byte aligned, padded stride) against the F16
// GEMM's arithmetic: the dequantized weights and the activations each rounded to F16, summed in
// double. Misaligned weight rows (base offset, padded stride) exercise the slots' head and tail.
template <int WT>
static void test_mhm_case(int64_t rows, int64_t n_out, int64_t n_in, bool accumulate, bool use_bias, int split_steps,
                          size_t w_off) {
    wmat w(WT, n_out, n_in, w_off * 3, w_off);
    for (auto &e : w.deq)
        e = round_h(e);
    std::vector<float> bias((size_t)n_out);
    for (auto &e : bias)
        e = rng_gauss();
    const size_t x_nb1 = (size_t)n_in * 2 + 32;
    buf xb(x_nb1 * (size_t)rows, 0, 0x5A);
    std::vector<float> xv((size_t)(rows * n_in));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n_in; i++) {
            const uint16_t h = fg_f32_to_f16(rng_gauss() * (1.0f + (float)(r % 3)));
            xv[(size_t)(r * n_in + i)] = fg_f16_to_f32(h);
            memcpy(xb.p + (size_t)r * x_nb1 + (size_t)i * 2, &h, 2);
        }
    outbuf d(rows, n_out, accumulate);
    mq_args a = mq_args_make(w.b.p, w.nb1, xb.p, x_nb1, (float *)d.b.p, d.nb1, use_bias ? bias.data() : NULL, n_out,
                             rows, n_in, accumulate);
    split_k sk(a, split_steps);
    const int n_split = sk.n;
    emu_mhm<WT>(a);
    std::vector<double> ref, mag;
    reference(w, xv, rows, a.bias, accumulate ? &d.prior : NULL, ref, mag);
    char what[96];
    snprintf(what, sizeof what, "mhm %s n_in %lld n_out %lld rows %lld splits %d", fg_type_name(WT), (long long)n_in,
             (long long)n_out, (long long)rows, n_split);
    compare(what, d.b.p, d.nb1, rows, n_out, ref, mag, 1e-5);
}

// ---------------------------------------------------------------- register-fed tensor-core (mqr)
// Q4_K only. The kernel's per-lane phases warp by warp (weights of a lane's two rows, their
// scales, A and B fragments, the sub-block sums, the super-block's scaling, the write), the mma
// emulated from the PTX tables (emu_mma, whose C starts at MQM_FBIAS: subtracted), the kw warps
// of a row group added in kw order as the kernel's shared-memory sum does.
// ST (Q4_K): the weights through a warp's stage (mqr_stage_copy by every lane into a poisoned
// stage, then each lane's mqr_load_w_stage), as the staged variant reads them.
template <int WT> static void emu_load(const mq_args &a, int64_t m0, int sb, bool st, std::vector<typename mqr_t<WT>::W> &w) {
    static uint8_t stage[MQR_STAGE_BYTES];
    if constexpr (WT == FG_TYPE_Q4_K) {
        if (st) {
            memset(stage, 0xA5, sizeof stage);
            for (int lane = 0; lane < 32; lane++)
                mqr_stage_copy(a, m0, sb, lane, stage);
            for (int lane = 0; lane < 32; lane++)
                mqr_load_w_stage(stage, lane, w[(size_t)lane].w);
            return;
        }
    }
    for (int lane = 0; lane < 32; lane++)
        mqr_t<WT>::load(a, m0, sb, lane, w[(size_t)lane]);
}

// The kernel's grid: blocks of MQR_WARPS warps (row groups x kw along K) by column groups of NT
// n tiles; body(m0, n0, sb0, sb1, acc) runs one warp over its super-blocks into acc [lane][j][e];
// the kw warps of a row group are then added in kw order, as the kernel's shared-memory sum does.
template <int NT, class F> static void emu_mqr_grid(const mq_args &a, int kw, F body) {
    const int64_t n_rb = fg_div_up(fg_div_up(a.n_out, 16), MQR_WARPS / kw), n_cg = fg_div_up(a.n_rows, 8 * NT);
    std::vector<float> part((size_t)MQR_WARPS * 32 * NT * 4);
    for (int64_t by = 0; by < n_rb; by++)
        for (int64_t bx = 0; bx < n_cg; bx++) {
            const int64_t n0 = bx * 8 * NT;
            for (int warp = 0; warp < MQR_WARPS; warp++) {
                const int rg = warp / kw, kwi = warp % kw;
                int sb0, sb1;
                mqr_range(a, kw, kwi, &sb0, &sb1);
                float *acc = &part[(size_t)warp * 32 * NT * 4];
                for (int i = 0; i < 32 * NT * 4; i++)
                    acc[i] = 0.0f;
                body((by * (MQR_WARPS / kw) + rg) * 16, n0, sb0, sb1, acc);
            }
            for (int warp = 0; warp < MQR_WARPS; warp += kw) {
                const int64_t m0 = (by * (MQR_WARPS / kw) + warp / kw) * 16;
                float *acc = &part[(size_t)warp * 32 * NT * 4];
                for (int k = 1; k < kw; k++)
                    for (int i = 0; i < 32 * NT * 4; i++)
                        acc[i] += part[(size_t)(warp + k) * 32 * NT * 4 + (size_t)i];
                for (int lane = 0; lane < 32; lane++)
                    for (int j = 0; j < NT; j++)
                        mqr_write(a, m0, n0 + 8 * j, lane, *(const float(*)[4]) & acc[((size_t)lane * NT + j) * 4]);
            }
        }
}

template <int WT, int NT, bool XP> static void emu_mqr(const mq_args &a, int kw, bool st = false) {
    typedef mqr_t<WT> T;
    std::vector<typename T::W> w(32);
    static uint32_t A[32][4], B[32][2];
    static int S[32][4], si[32][NT][4], mi[32][NT][4];
    emu_mqr_grid<NT>(a, kw, [&](int64_t m0, int64_t n0, int sb0, int sb1, float *acc) {
        for (int sb = sb0; sb < sb1; sb++) {
            emu_load<WT>(a, m0, sb, st, w);
            for (int lane = 0; lane < 32; lane++) {
                T::prep(w[(size_t)lane]);
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++)
                        si[lane][j][e] = mi[lane][j][e] = 0;
            }
            for (int g = 0; g < T::G; g++) {
                for (int lane = 0; lane < 32; lane++)
                    T::frag_a(w[(size_t)lane], g, A[lane]);
                for (int j = 0; j < NT; j++) {
                    for (int lane = 0; lane < 32; lane++)
                        T::template frag_b<XP>(a, n0 + 8 * j, sb, g, lane, B[lane]);
                    emu_mma(T::K16, A, B, S);
                    for (int lane = 0; lane < 32; lane++) {
                        int d[4];
                        for (int e = 0; e < 4; e++)
                            d[e] = S[lane][e] - MQM_FBIAS;
                        T::template unit<XP>(a, w[(size_t)lane], n0 + 8 * j, sb, g, lane, d, si[lane][j], mi[lane][j]);
                    }
                }
            }
            for (int lane = 0; lane < 32; lane++)
                for (int j = 0; j < NT; j++)
                    T::template close<XP>(a, w[(size_t)lane], n0 + 8 * j, sb, lane, si[lane][j], mi[lane][j],
                                          *(float(*)[4]) & acc[((size_t)lane * NT + j) * 4]);
        }
    });
}

// Q4_K's chained variant (FORGE_CUDA_MQR_CHAIN=1, repacked rows): A fragments with the scales in
// (mqr_a_c), two u8 x s8 chains a super-block through the mma's accumulator, the mins by two
// m16n8k16 over the packed bsum bytes (mqr_am, mqr_bm), mqr_close_c: the kernel's order.
template <int NT> static void emu_mqr_chain(const mq_args &a, int kw, bool st) {
    typedef mqr_t<FG_TYPE_Q4_K> T;
    std::vector<T::W> w(32);
    static uint32_t Al[32][4], Ah[32][4], B[32][2], Am[32][4], Bl[32][2], Bh[32][2];
    static int cl[32][NT][4], ch[32][NT][4], cin[32][4], tmp[32][4], ml[32][4], mh[32][4];
    // one chain's mma for n tile j: c[lane][j] = A B + c[lane][j]
    auto chain = [&](const uint32_t(*A)[4], int (*c)[NT][4], int j) {
        for (int lane = 0; lane < 32; lane++)
            memcpy(cin[lane], c[lane][j], sizeof cin[lane]);
        emu_mma_x(false, false, true, A, B, cin, tmp);
        for (int lane = 0; lane < 32; lane++)
            memcpy(c[lane][j], tmp[lane], sizeof tmp[lane]);
    };
    emu_mqr_grid<NT>(a, kw, [&](int64_t m0, int64_t n0, int sb0, int sb1, float *acc) {
        for (int sb = sb0; sb < sb1; sb++) {
            emu_load<FG_TYPE_Q4_K>(a, m0, sb, st, w);
            for (int lane = 0; lane < 32; lane++) {
                T::prep(w[(size_t)lane]);
                uint32_t am[2];
                mqr_am(w[(size_t)lane].s, lane, am);
                Am[lane][0] = am[0];
                Am[lane][1] = am[1];
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++)
                        cl[lane][j][e] = ch[lane][j][e] = 0;
            }
            for (int g = 0; g < T::G; g++) {
                for (int lane = 0; lane < 32; lane++)
                    mqr_a_c(w[(size_t)lane].w, w[(size_t)lane].s, g, Al[lane], Ah[lane]);
                for (int j = 0; j < NT; j++) {
                    for (int lane = 0; lane < 32; lane++)
                        T::template frag_b<true>(a, n0 + 8 * j, sb, g, lane, B[lane]);
                    chain(Al, cl, j);
                    chain(Ah, ch, j);
                }
            }
            for (int j = 0; j < NT; j++) {
                for (int lane = 0; lane < 32; lane++) {
                    const uint2 bm = mqr_bm(a, n0 + 8 * j, sb, lane);
                    Bl[lane][0] = bm.x;
                    Bh[lane][0] = bm.y;
                }
                emu_mma_x(true, false, false, Am, Bl, NULL, ml);
                emu_mma_x(true, false, true, Am, Bh, NULL, mh);
                for (int lane = 0; lane < 32; lane++)
                    mqr_close_c(a, w[(size_t)lane].s, n0 + 8 * j, sb, lane, cl[lane][j], ch[lane][j], ml[lane], mh[lane],
                                *(float(*)[4]) & acc[((size_t)lane * NT + j) * 4]);
            }
        }
    });
}

// rows x n_out x n_in of WT (Q4_K rows 16-aligned; Q6_K rows at a 2 mod 4 address with pad 2)
// against Q8_K rows (stride padded by 8 bytes), kw warps along K, NT n tiles a warp (rows past
// 8 NT: more column groups); against the reference's arithmetic.
template <int WT, int NT>
static void test_mqr_case(int64_t rows, int64_t n_out, int64_t n_in, int kw, bool accumulate, bool use_bias,
                          size_t pad = 16, size_t off = 16) {
    wmat w(WT, n_out, n_in, pad, off);
    std::vector<float> bias((size_t)n_out);
    for (auto &v : bias)
        v = rng_gauss();
    acts x(rows, n_in);
    std::vector<float> xv = x.val;
    const size_t qb = mm_q8_k_row_bytes(n_in), qs = qb + 8;
    buf q(qs * (size_t)rows, 4, 0x77);
    for (int64_t r = 0; r < rows; r++) {
        fg_type_traits_ref(FG_TYPE_Q8_K)->from_float(&x.val[(size_t)(r * n_in)], q.p + (size_t)r * qs, n_in);
        fg_type_traits_ref(FG_TYPE_Q8_K)->to_float(q.p + (size_t)r * qs, &xv[(size_t)(r * n_in)], n_in);
    }
    // the rows as they are, then repacked (FORGE_CUDA_MQR_PACK: mqr_pack_unit, every unit)
    for (int pack = 0; pack < 2; pack++) {
        outbuf d(rows, n_out, accumulate);
        std::vector<uint8_t> dc(d.b.p, d.b.p + d.nb1 * (size_t)rows); // the chained variant's: the same start
        mq_args a = mq_args_make(w.b.p, w.nb1, q.p, qs, (float *)d.b.p, d.nb1, use_bias ? bias.data() : NULL, n_out,
                                 rows, n_in, accumulate);
        const int tiles = (int)((rows + 7) / 8);
        const int64_t n_units = (int64_t)tiles * (n_in / 256) * MQR_XP_UNITS;
        buf xp((size_t)n_units * 16, 0, 0x5A); // poisoned: every unit must be written
        if (pack) {
            a.xp_tiles = tiles;
            for (int64_t i = 0; i < n_units; i++)
                mqr_pack_unit<WT>(a, xp.p, i);
            a.xp = xp.p;
        }
        if (pack)
            emu_mqr<WT, NT, true>(a, kw);
        else
            emu_mqr<WT, NT, false>(a, kw);
        std::vector<double> ref, mag;
        reference(w, xv, rows, a.bias, accumulate ? &d.prior : NULL, ref, mag);
        char what[112];
        snprintf(what, sizeof what, "mqr %s n_in %lld n_out %lld rows %lld kw %d nt %d%s", fg_type_name(WT),
                 (long long)n_in, (long long)n_out, (long long)rows, kw, NT, pack ? " packed" : "");
        compare(what, d.b.p, d.nb1, rows, n_out, ref, mag, 1e-5);
        // Q4_K's variants over the same packed rows (chained, staged, both): the same integers and
        // the same float order, so the same bits
        for (int v = 0; pack && WT == FG_TYPE_Q4_K && v < 3; v++) {
            std::vector<uint8_t> dv(dc);
            mq_args av = a;
            av.dst = (float *)dv.data();
            if (v == 1)
                emu_mqr<WT, NT, true>(av, kw, true);
            else
                emu_mqr_chain<NT>(av, kw, v == 2);
            int diff = 0;
            for (int64_t r = 0; r < rows; r++)
                diff += memcmp(d.b.p + (size_t)r * d.nb1, dv.data() + (size_t)r * d.nb1, (size_t)n_out * 4) != 0;
            CHECK(diff == 0, "%s: the %s variant differs from mqr in %d of %lld rows", what,
                  v == 0 ? "chained" : v == 1 ? "staged" : "chained staged", diff, (long long)rows);
        }
    }
}

static void test_mqr(void) {
    // the scales of a lane's rows, four sub-blocks at a time, against the reference's unpacking
    int bad = 0;
    for (int it = 0; it < 200; it++) {
        mqr_w w;
        uint8_t sb[16];
        for (int i = 0; i < 16; i++)
            sb[i] = (uint8_t)rng_next();
        memcpy(&w.h[0], sb, 16);
        memcpy(&w.h[1], sb, 16);
        mqr_s s;
        mqr_scales(w, s);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            fg_q_scale_min_k4<fg_rd_exact>(j, sb + 4, &sc, &m);
            bad += (int)((s.sc[1][j / 4] >> (8 * (j % 4))) & 0xFF) != sc || (int)((s.m[0][j / 4] >> (8 * (j % 4))) & 0xFF) != m;
        }
    }
    CHECK(bad == 0, "mqr_scales differs from fg_get_scale_min_k4 in %d places", bad);
    const uint32_t K4 = FG_TYPE_Q4_K, K6 = FG_TYPE_Q6_K;
    test_mqr_case<K4, 1>(3, 131, 2 * 256, 1, false, true);   // 3 rows, ragged weight rows
    test_mqr_case<K4, 2>(9, 131, 2 * 256, 1, false, true);   // one partial n tile
    test_mqr_case<K4, 2>(16, 64, 256, 2, true, false);       // a warp along K with no super-block
    test_mqr_case<K4, 4>(33, 77, 5 * 256, 4, true, true);    // 2 column groups of 32, uneven K parts
    test_mqr_case<K4, 8>(33, 77, 5 * 256, 2, false, true);   // one column group, a partial tile
    test_mqr_case<K4, 8>(64, 130, 3 * 256, 2, true, false);  // exact tiles
    test_mqr_case<K4, 8>(70, 45, 7 * 256, 4, true, true);    // 2 column groups, 7 super-blocks over 4
    test_mqr_case<K4, 8>(121, 45, 3 * 256, 4, false, true);  // 2 column groups, the second's last tile partial
    // Q6_K: 210-byte blocks, odd ones at 2 mod 4 (rows of 5 blocks + 2 bytes of pad: rows too)
    test_mqr_case<K6, 1>(5, 37, 5 * 256, 1, false, true, 2, 2);
    test_mqr_case<K6, 2>(16, 131, 5 * 256, 2, true, true, 2, 2);
    test_mqr_case<K6, 4>(33, 64, 3 * 256, 4, false, false, 0, 0);
    test_mqr_case<K6, 8>(70, 45, 7 * 256, 2, true, true, 2, 2);
    test_mqr_case<K6, 8>(128, 37, 3 * 256, 4, false, true, 2, 2); // 2 whole column groups
}

template <int WT> static void test_mhm_type(void) {
    const int qk = fg_qt<WT>::QK;
    const size_t off = WT == FG_TYPE_MXFP4 ? 1 : 2; // misaligned rows: the slots' head and tail bytes
    const int64_t k1 = qk == 256 ? 256 : 7 * 32, k2 = qk == 256 ? 3 * 256 : 13 * 32, k3 = qk == 256 ? 5 * 256 : 37 * 32;
    test_mhm_case<WT>(9, 131, k1, false, true, 0, 0);    // one n tile, partial K step, aligned rows
    test_mhm_case<WT>(33, 131, k2, true, true, 0, off);  // 2 m tiles, ragged m
    test_mhm_case<WT>(65, 77, k2, true, false, 0, 0);    // one row into a second n tile
    test_mhm_case<WT>(17, 131, k3, true, true, 2, off);  // split K, uneven last split
    test_mhm_case<WT>(3, 77, k3, false, true, 1, 0);     // splits of one step, 3 rows
}

// ---------------------------------------------------------------- decoders alone
// fg_q_dequant_unit through the shared-memory reader (funnel shifts) at every misalignment
// equals the exact reader's (and so the reference).
template <int WT> static void test_smem_reader(void) {
    typedef fg_qt<WT> Q;
    wmat w(WT, 1, Q::QK, 0, 0);
    int bad = 0;
    for (int mis = 0; mis < 4; mis++) {
        if (Q::ALIGN == 2 && (mis & 1))
            continue;
        buf s((size_t)Q::BYTES + 32, (size_t)mis, 0x99);
        memcpy(s.p, w.b.p, (size_t)Q::BYTES);
        for (int sub = 0; sub < Q::UPB; sub++) {
            float f[32];
            fg_q_dequant_unit<WT, fg_rd_smem>(s.p, sub, f);
            if (memcmp(f, &w.deq[(size_t)sub * 32], sizeof f) != 0)
                bad++;
        }
    }
    CHECK(bad == 0, "%s: smem reader decode differs from to_float in %d units", fg_type_name(WT), bad);
}

template <int WT> static void run_type(void) {
    printf("  %s\n", fg_type_name(WT));
    test_get_rows_type<WT>();
    if constexpr (!mm_is_float(WT))
        test_smem_reader<WT>();
    test_mv_type<WT>();
    test_tm_type<WT>();
    if constexpr (!mm_is_float(WT)) {
        test_mq_type<WT>();
        test_mhm_type<WT>();
    }
    if constexpr (WT == FG_TYPE_Q6_K)
        test_mqr();
}

int main(void) {
    printf("test_cuda_matmul_host: seed %u\n", SEED);
    // fg_type_traits_get is the scalar reference (the oracle) on the seam
    // dp4a fallback and the MXFP4 byte table
    CHECK(fg_dp4a(0x80FF017F, 0x7F01FF80, 5) == 5 + (-128 * 127) + (-1 * 1) + (1 * -1) + (127 * -128), "dp4a");
    for (uint32_t v = 0; v < 16; v++) {
        uint32_t r = fg_q_mxfp4_lut(v | (v << 8) | ((15 - v) << 16) | (((v + 3) & 15) << 24));
        CHECK((int8_t)(r & 0xFF) == fg_kvalues_mxfp4[v] && (int8_t)(r >> 8) == fg_kvalues_mxfp4[v] &&
                  (int8_t)(r >> 16) == fg_kvalues_mxfp4[15 - v] && (int8_t)(r >> 24) == fg_kvalues_mxfp4[(v + 3) & 15],
              "mxfp4 lut %u", v);
    }
    test_mqm_layout();
#define X(T) run_type<T>();
    MM_QTYPES(X)
    MM_FTYPES(X)
#undef X
    printf("%d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
