// test_attn_emu.cpp - cuda_attn.cu run in the SIMT emulator (emu_rt.h) against a double
// precision reference: kv_store bit-exact, kv_copy_page, attention at NMSE <= 5e-4 over mixed
// steps (decode, prefill chunks, many sequences), shuffled and shared pages, odd page sizes,
// GQA 1/4/8 and MQA, causal and not, head sizes 7..512, F16, F32 and Q8_0, forced splits. The
// cache outside written slots, unused page-table entries and dst are poisoned (NaN / -1).
// Q8_0: the expected cache is the CPU reference quantizer's bytes (fg_quantize_row, linked
// from src/quant), the reference attention takes q on the same Q8_0 grid, NMSE <= 1e-9.
// Usage (via run.sh): test_attn_emu [scenario index]
#include "backend/cuda/cuda_internal.h"
extern "C" {
#include "base/half.h"
#include "quant/quant.h"
}
#include "quant/blocks.h"
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <vector>
#include <random>
#include <algorithm>
#include <chrono>

struct Scn {
    const char *name;
    int page_size, n_head, n_head_kv, hd;
    uint32_t type;
    bool causal;
    std::vector<std::pair<int, int>> seqs; // (n_kv after the step, tokens in the step)
    int n_sm = 4;
    long long arena = -1; // -1: fg_cuda_attn_scratch_bytes; else bytes
    bool share = true;
    unsigned seed = 1;
    bool stale_max = false; // step.max_n_kv left at 1 (a replayed graph): the grid is too small
    int n_rot = 0;          // > 0: rope_kv_attention (rope of q and k over n_rot dims, then the store
    bool neox = false;      // and attention in one op; decode steps: inside the decode kernel)
    bool ff = false;        // frequency factors
};

static float nanf_() { return __builtin_nanf(""); }

// The backend's convert (cuda_matmul.cu, not built here) for the paths of rope_kv_attention that
// convert after the attention: the reference's activation quantizer.
fg_status fg_cuda_convert(fg_cuda *, fg_tensor *dst, const fg_tensor *x) {
    for (int64_t r = 0; r < x->ne[1]; r++)
        fg_quantize_row(dst->type, (const float *)((const char *)x->data + r * x->nb[1]), (char *)dst->data + r * dst->nb[1],
                        x->ne[0]);
    return FG_OK;
}

static int run(const Scn &sc) {
    auto t0 = std::chrono::steady_clock::now();
    std::mt19937 rng(sc.seed);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    const int ps = sc.page_size, nkvh = sc.n_head_kv, hd = sc.hd, nh = sc.n_head, n_layer = 2, layer = 1;
    const int ns = (int)sc.seqs.size();
    const bool q8 = sc.type == FG_TYPE_Q8_0;
    const int row = nkvh * hd;
    const size_t row_b = fg_type_row_size_n(sc.type, row); // bytes of one slot
    // page tables
    int max_pages = 0, n_pages_needed = 0;
    for (auto &s : sc.seqs) { int pg = (s.first + ps - 1) / ps; max_pages = std::max(max_pages, pg); n_pages_needed += pg; }
    const int n_pages = n_pages_needed + 3;
    std::vector<int> pool(n_pages);
    for (int i = 0; i < n_pages; i++) pool[i] = i;
    std::shuffle(pool.begin(), pool.end(), rng);
    std::vector<int32_t> pt((size_t)ns * max_pages, -1);
    int next = 0;
    for (int s = 0; s < ns; s++) {
        int n_kv = sc.seqs[s].first, nt = sc.seqs[s].second, pg = (n_kv + ps - 1) / ps;
        int shared = 0;
        if (sc.share && s % 2 == 1) {
            int hp = (n_kv - nt) / ps, hp0 = (sc.seqs[s - 1].first - sc.seqs[s - 1].second) / ps;
            shared = std::min(hp, hp0);
            for (int p = 0; p < shared; p++) pt[(size_t)s * max_pages + p] = pt[(size_t)(s - 1) * max_pages + p];
        }
        for (int p = shared; p < pg; p++) pt[(size_t)s * max_pages + p] = pool[next++];
    }
    // cache: NaN everywhere (all-ones bytes: a NaN in F32, F16 and as a Q8_0 block's scale),
    // history rows random
    const size_t cache_rows = (size_t)n_layer * n_pages * ps;
    std::vector<char> kc(cache_rows * row_b, (char)0xFF), vc(cache_rows * row_b, (char)0xFF);
    // slot r (a row of `row` elements) <- x, stored as the CPU reference stores it
    auto put_row = [&](std::vector<char> &c, size_t r, const float *x) {
        char *d = c.data() + r * row_b;
        if (q8) fg_quantize_row(FG_TYPE_Q8_0, x, d, row);
        else if (sc.type == FG_TYPE_F16) for (int e = 0; e < row; e++) ((uint16_t *)d)[e] = fg_f32_to_f16(x[e]);
        else memcpy(d, x, (size_t)row * 4);
    };
    // element idx = slot * row + e, dequantized
    auto get = [&](const std::vector<char> &c, size_t idx) -> double {
        const char *d = c.data() + idx / row * row_b;
        const int e = (int)(idx % row);
        if (q8) {
            const fg_block_q8_0 *b = (const fg_block_q8_0 *)d + e / 32;
            return (double)b->qs[e % 32] * fg_f16_to_f32(b->d);
        }
        return sc.type == FG_TYPE_F16 ? (double)fg_f16_to_f32(((const uint16_t *)d)[e]) : (double)((const float *)d)[e];
    };
    auto slot_row = [&](int l, int page, int slot) { return ((size_t)l * n_pages + page) * ps + slot; };
    auto slot_idx = [&](int l, int page, int slot) { return slot_row(l, page, slot) * row; };
    std::vector<float> tmp(row);
    for (int s = 0; s < ns; s++) {
        int n_kv = sc.seqs[s].first, nt = sc.seqs[s].second;
        for (int j = 0; j < n_kv - nt; j++) {
            int page = pt[(size_t)s * max_pages + j / ps];
            for (int l = 0; l < n_layer; l++) {
                for (auto &x : tmp) x = U(rng);
                put_row(kc, slot_row(l, page, j % ps), tmp.data());
                for (auto &x : tmp) x = U(rng);
                put_row(vc, slot_row(l, page, j % ps), tmp.data());
            }
        }
    }
    // step
    std::vector<int32_t> tokens, pos, seq, seq_n_kv(ns), seq_first(ns), seq_n_tokens(ns);
    for (int s = 0; s < ns; s++) {
        int n_kv = sc.seqs[s].first, nt = sc.seqs[s].second;
        seq_n_kv[s] = n_kv; seq_first[s] = (int)pos.size(); seq_n_tokens[s] = nt;
        for (int i = 0; i < nt; i++) { tokens.push_back(1); pos.push_back(n_kv - nt + i); seq.push_back(s); }
    }
    const int n_tokens = (int)pos.size();
    const size_t k_stride = row + 5, q_stride = (size_t)nh * hd + 7, d_stride = (size_t)nh * hd + 1;
    std::vector<float> kin((size_t)n_tokens * k_stride), vin((size_t)n_tokens * k_stride), qin((size_t)n_tokens * q_stride);
    for (auto &x : kin) x = U(rng);
    for (auto &x : vin) x = U(rng);
    for (auto &x : qin) x = 2.0f * U(rng);
    std::vector<float> dst((size_t)n_tokens * d_stride, nanf_());
    // rope: q and k rotated here as the CPU reference rotates them (angles by repeated float
    // multiplication, pairs without contraction) for the expected cache and attention
    const float freq_base = 10000.0f, freq_scale = 0.75f;
    std::vector<float> qr = qin, kr = kin, ffv;
    if (sc.n_rot > 0) {
        const int half = sc.n_rot / 2;
        const float theta_scale = powf(freq_base, -2.0f / (float)sc.n_rot);
        if (sc.ff) { ffv.resize(half); for (auto &x : ffv) x = 1.0f + 1.5f * (U(rng) + 1.0f); }
        for (int t = 0; t < n_tokens; t++) {
            std::vector<float> cs(half), sn(half);
            for (int i = 0; i < half; i++) {
                float theta = (float)pos[t];
                for (int j = 0; j < i; j++) theta *= theta_scale;
                const float th = freq_scale * (theta / (sc.ff ? ffv[i] : 1.0f));
                cs[i] = cosf(th); sn[i] = sinf(th);
            }
            auto rot = [&](float *x, int heads) {
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < half; i++) {
                        float *v = x + (size_t)h * hd;
                        const int i0 = sc.neox ? i : 2 * i, i1 = sc.neox ? i + half : 2 * i + 1;
                        const float a = v[i0], b = v[i1];
                        volatile float ac = a * cs[i], bs = b * sn[i], as = a * sn[i], bc = b * cs[i];
                        v[i0] = ac - bs; v[i1] = as + bc;
                    }
            };
            rot(&qr[t * q_stride], nh);
            rot(&kr[t * k_stride], nkvh);
        }
    }
    // expected cache after kv_store
    std::vector<char> kx = kc, vx = vc;
    for (int t = 0; t < n_tokens; t++) {
        int page = pt[(size_t)seq[t] * max_pages + pos[t] / ps];
        put_row(kx, slot_row(layer, page, pos[t] % ps), &kr[t * k_stride]);
        put_row(vx, slot_row(layer, page, pos[t] % ps), &vin[t * k_stride]);
    }
    // backend context
    fg_cuda c;
    memset(&c, 0, sizeof c);
    c.attn_dec = getenv("FORGE_CUDA_ATTN_DEC") == NULL || strcmp(getenv("FORGE_CUDA_ATTN_DEC"), "0") != 0; // as the backend
    c.warp = FG_WARP;
    c.n_sm = sc.n_sm;
    c.step.n_tokens = n_tokens; c.step.n_seqs = ns; c.step.max_pages = max_pages;
    c.step.tokens = tokens.data(); c.step.pos = pos.data(); c.step.seq = seq.data();
    c.step.seq_n_kv = seq_n_kv.data(); c.step.seq_first = seq_first.data(); c.step.seq_n_tokens = seq_n_tokens.data();
    c.step.page_table = pt.data();
    for (int s = 0; s < ns; s++) {
        c.step.max_n_kv = std::max(c.step.max_n_kv, seq_n_kv[s]);
        c.step.max_seq_tokens = std::max(c.step.max_seq_tokens, seq_n_tokens[s]);
    }
    if (sc.stale_max)
        c.step.max_n_kv = 1;
    fg_backend_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.max_tokens = n_tokens; lim.max_seqs = ns; lim.max_pages = max_pages; lim.max_heads = nh; lim.max_head_dim = hd;
    lim.max_kv_len = max_pages * ps;
    size_t arena = sc.arena < 0 ? fg_cuda_attn_scratch_bytes(&lim) : (size_t)sc.arena;
    std::vector<char> arena_mem(arena + 64);
    memset(arena_mem.data(), 0xFF, arena_mem.size());
    c.attn.base = arena_mem.data(); c.attn.size = arena;
    fg_kv_view kv;
    memset(&kv, 0, sizeof kv);
    kv.n_layer = n_layer; kv.n_pages = n_pages; kv.page_size = ps; kv.n_head_kv = nkvh; kv.head_dim = hd; kv.type = sc.type;
    for (fg_tensor *t : {&kv.k, &kv.v}) {
        t->type = sc.type;
        t->ne[0] = row; t->ne[1] = ps; t->ne[2] = n_pages; t->ne[3] = n_layer;
        t->nb[0] = fg_type_block_bytes(sc.type); t->nb[1] = row_b; t->nb[2] = t->nb[1] * ps; t->nb[3] = t->nb[2] * n_pages;
    }
    kv.k.data = kc.data(); kv.v.data = vc.data();
    auto f32t = [](void *data, int64_t cols, int64_t rows, size_t nb1) {
        fg_tensor t; memset(&t, 0, sizeof t);
        t.type = FG_TYPE_F32; t.ne[0] = cols; t.ne[1] = rows; t.ne[2] = t.ne[3] = 1;
        t.nb[0] = 4; t.nb[1] = nb1; t.nb[2] = t.nb[3] = nb1 * rows; t.data = data; return t;
    };
    fg_tensor kt = f32t(kin.data(), row, n_tokens, k_stride * 4), vt = f32t(vin.data(), row, n_tokens, k_stride * 4);
    fg_tensor qt = f32t(qin.data(), (int64_t)nh * hd, n_tokens, q_stride * 4), dt = f32t(dst.data(), (int64_t)nh * hd, n_tokens, d_stride * 4);
    fg_attn_params p;
    p.layer = layer; p.n_head = nh; p.scale = 1.0f / sqrtf((float)hd); p.causal = sc.causal;
    fg_tensor fft = f32t(ffv.data(), (int64_t)ffv.size(), 1, ffv.size() * 4);
    fg_rope_params rp = {nh, hd, sc.n_rot, sc.neox ? FG_ROPE_NEOX : FG_ROPE_NORMAL, freq_base, freq_scale,
                         sc.ff ? &fft : NULL};
    const std::vector<float> qin0 = qin, kin0 = kin; // (the two ops rotate them in place)
    if (sc.n_rot > 0) {
        c.dec_rope = getenv("FORGE_CUDA_DEC_ROPE") == NULL || strcmp(getenv("FORGE_CUDA_DEC_ROPE"), "0") != 0;
        c.dec_quant = 2; // (Q8_K too)
        c.dec_l_min = sc.n_sm >= 32 ? 0 : 1 << 20; // the small-grid scenarios unsplit: the quantizing kernel
        if (fg_cuda_rope_kv_attention(&c, &dt, NULL, &qt, &kt, &vt, &rp, nkvh, &kv, &p) != FG_OK) {
            printf("  FAIL rope_kv_attention: %s\n", fg_last_error());
            return 1;
        }
    } else if (fg_cuda_kv_store(&c, &kv, layer, &kt, &vt) != FG_OK) { printf("kv_store failed\n"); return 1; }
    int fails = 0;
    if (memcmp(kc.data(), kx.data(), kc.size()) || memcmp(vc.data(), vx.data(), vc.size())) {
        size_t at = 0;
        bool kdiff = memcmp(kc.data(), kx.data(), kc.size()) != 0;
        const std::vector<char> &g = kdiff ? kc : vc, &w = kdiff ? kx : vx;
        while (g[at] == w[at]) at++;
        printf("  FAIL kv_store: %s cache differs from the expected bits at byte %zu (slot %zu, byte %zu of the row)\n",
               kdiff ? "k" : "v", at, at / row_b, at % row_b);
        fails++;
    }
    if (sc.n_rot == 0) {
        fg_status st = fg_cuda_attention(&c, &dt, &qt, &kv, &p);
        if (st != FG_OK) { printf("  FAIL attention: status %d\n", (int)st); return 1; }
    }
    const int *hdr = (const int *)arena_mem.data();
    // reference
    const int G = nh / nkvh;
    double num = 0, den = 0; long bad = 0;
    for (int t = 0; t < n_tokens; t++) {
        int s = seq[t], n_kv = seq_n_kv[s], end = sc.causal ? pos[t] + 1 : n_kv;
        for (int h = 0; h < nh; h++) {
            int hk = h / G;
            std::vector<double> sc_(end), qv(hd);
            const float *qh = &qr[t * q_stride + (size_t)h * hd];
            if (q8) { // the reference's Q8_0 grid
                std::vector<fg_block_q8_0> qb(hd / 32);
                fg_quantize_row(FG_TYPE_Q8_0, qh, qb.data(), hd);
                for (int e = 0; e < hd; e++) qv[e] = (double)qb[e / 32].qs[e % 32] * fg_f16_to_f32(qb[e / 32].d);
            } else {
                for (int e = 0; e < hd; e++) qv[e] = qh[e];
            }
            double mx = -INFINITY;
            for (int j = 0; j < end; j++) {
                int page = pt[(size_t)s * max_pages + j / ps];
                size_t base = slot_idx(layer, page, j % ps) + (size_t)hk * hd;
                double d = 0;
                for (int e = 0; e < hd; e++) d += qv[e] * get(kc, base + e);
                sc_[j] = d * p.scale; mx = std::max(mx, sc_[j]);
            }
            double sum = 0;
            for (int j = 0; j < end; j++) { sc_[j] = exp(sc_[j] - mx); sum += sc_[j]; }
            for (int e = 0; e < hd; e++) {
                double o = 0;
                for (int j = 0; j < end; j++) {
                    int page = pt[(size_t)s * max_pages + j / ps];
                    o += sc_[j] / sum * get(vc, slot_idx(layer, page, j % ps) + (size_t)hk * hd + e);
                }
                float g = dst[t * d_stride + (size_t)h * hd + e];
                if (!isfinite(g)) { if (bad++ < 5) printf("  non-finite dst t=%d h=%d e=%d: %g\n", t, h, e, g); }
                num += (g - o) * (g - o); den += o * o;
            }
        }
        if (!isnan(dst[t * d_stride + (size_t)nh * hd])) { printf("  FAIL: row padding of dst written (t=%d)\n", t); fails++; }
    }
    // the output projection's activations from the same op (dq): the rows of dst quantized as
    // the reference quantizes activations, bit for bit (Q8_K where a kv head's outputs are whole
    // Q8_K blocks, else Q8_1); the cache already holds this step's K/V (stored again, the same)
    if (sc.n_rot > 0 && hd % 32 == 0) {
        const int G_ = nh / nkvh;
        const uint32_t qt_ = (G_ * hd) % 256 == 0 ? FG_TYPE_Q8_K : FG_TYPE_Q8_1;
        const size_t qrow = fg_type_row_size_n(qt_, (int64_t)nh * hd);
        std::vector<uint8_t> dqb((size_t)n_tokens * qrow, 0xA5), want((size_t)n_tokens * qrow);
        std::vector<float> dst2((size_t)n_tokens * d_stride, nanf_());
        fg_tensor d2 = f32t(dst2.data(), (int64_t)nh * hd, n_tokens, d_stride * 4), dqt = d2;
        dqt.type = qt_; dqt.data = dqb.data(); dqt.nb[0] = fg_type_block_bytes(qt_); dqt.nb[1] = qrow;
        dqt.nb[2] = dqt.nb[3] = qrow * n_tokens;
        qin = qin0;
        kin = kin0;
        if (fg_cuda_rope_kv_attention(&c, &d2, &dqt, &qt, &kt, &vt, &rp, nkvh, &kv, &p) != FG_OK) {
            printf("  FAIL rope_kv_attention (dq): %s\n", fg_last_error());
            return 1;
        }
        for (int t = 0; t < n_tokens; t++)
            fg_quantize_row(qt_, &dst[t * d_stride], want.data() + t * qrow, (int64_t)nh * hd);
        if (memcmp(dqb.data(), want.data(), dqb.size())) {
            size_t at = 0;
            while (dqb[at] == want[at]) at++;
            printf("  FAIL dq %s differs from the quantized output at byte %zu (token %zu)\n", fg_type_name(qt_), at, at / qrow);
            fails++;
        }
    }
    double nmse = den > 0 ? num / den : num;
    if (bad) { printf("  FAIL: %ld non-finite outputs\n", bad); fails++; }
    const double tol = q8 ? 1e-9 : 5e-4; // Q8_0: q on the reference's grid, no f16 rounding anywhere
    if (!(nmse <= tol)) { printf("  FAIL: nmse %.3g > %.3g\n", nmse, tol); fails++; }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("%-44s tokens %4d seqs %2d items/head %4d L %10d nmse %.2e %s (%.1fs)\n", sc.name, n_tokens, ns, hdr[0], hdr[1], nmse, fails ? "FAIL" : "ok", secs);
    return fails;
}

static int test_copy_page(uint32_t type) {
    // kv_copy_page: all layers, K and V; other pages untouched
    const int n_layer = 3, n_pages = 5, ps = 7, hd = type == FG_TYPE_Q8_0 ? 32 : 6, row = 2 * hd;
    const size_t row_b = fg_type_row_size_n(type, row);
    std::vector<char> k((size_t)n_layer * n_pages * ps * row_b), v(k.size());
    std::mt19937 rng(7);
    for (auto &b : k) b = (char)rng();
    for (auto &b : v) b = (char)rng();
    std::vector<char> k0 = k, v0 = v;
    fg_kv_view kv; memset(&kv, 0, sizeof kv);
    kv.n_layer = n_layer; kv.n_pages = n_pages; kv.page_size = ps; kv.n_head_kv = 2; kv.head_dim = hd; kv.type = type;
    for (fg_tensor *t : {&kv.k, &kv.v}) {
        t->nb[0] = fg_type_block_bytes(type); t->nb[1] = row_b; t->nb[2] = t->nb[1] * ps; t->nb[3] = t->nb[2] * n_pages;
        t->ne[0] = row; t->ne[1] = ps; t->ne[2] = n_pages; t->ne[3] = n_layer;
    }
    kv.k.data = k.data(); kv.v.data = v.data();
    fg_cuda c; memset(&c, 0, sizeof c); c.warp = FG_WARP;
    fg_cuda_kv_copy_page(&c, &kv, 3, 1);
    int fails = 0;
    for (int l = 0; l < n_layer; l++)
        for (int p = 0; p < n_pages; p++) {
            size_t off = ((size_t)l * n_pages + p) * kv.k.nb[2], src = ((size_t)l * n_pages + (p == 3 ? 1 : p)) * kv.k.nb[2];
            if (memcmp(k.data() + off, k0.data() + src, kv.k.nb[2]) || memcmp(v.data() + off, v0.data() + src, kv.k.nb[2])) fails++;
        }
    printf("kv_copy_page %s: %s\n", fg_type_name(type), fails ? "FAIL" : "ok");
    return fails != 0;
}

int main(int argc, char **argv) {
    int only = argc > 1 ? atoi(argv[1]) : -1;
    std::vector<Scn> v;
    // name, ps, nh, nkvh, hd, type, causal, seqs
    v.push_back({"decode mix gqa4 hd64 f16 ps16", 16, 8, 2, 64, FG_TYPE_F16, true, {{40, 1}, {17, 1}, {1, 1}, {100, 1}, {33, 1}}});
    v.push_back({"prefill+decode gqa1 hd16 f16 ps7", 7, 4, 4, 16, FG_TYPE_F16, true, {{30, 30}, {50, 1}, {23, 9}, {9, 1}, {64, 5}}});
    v.push_back({"mix gqa8 hd8 f32 ps7 noncausal", 7, 8, 1, 8, FG_TYPE_F32, false, {{30, 12}, {50, 1}, {23, 9}, {8, 8}}});
    v.push_back({"mqa hd64 f16 ps16 (G=32)", 16, 32, 1, 64, FG_TYPE_F16, true, {{45, 3}, {70, 1}, {20, 20}}});
    v.push_back({"gqa7 hd80 f16 ps16 (generic)", 16, 14, 2, 80, FG_TYPE_F16, true, {{50, 6}, {31, 1}, {66, 2}}});
    v.push_back({"gqa4 hd128 f16 ps16", 16, 8, 2, 128, FG_TYPE_F16, true, {{90, 4}, {130, 1}, {33, 33}}});
    v.push_back({"gqa2 hd256 f32 ps16", 16, 4, 2, 256, FG_TYPE_F32, true, {{70, 2}, {40, 1}}});
    v.push_back({"gqa2 hd96 f16 ps7 noncausal", 7, 4, 2, 96, FG_TYPE_F16, false, {{70, 5}, {40, 1}}});
    v.push_back({"hd 7 (odd, scalar loads) ps5", 5, 6, 3, 7, FG_TYPE_F16, true, {{26, 4}, {11, 11}}});
    v.push_back({"hd 300 f16 (cap 512)", 16, 2, 1, 300, FG_TYPE_F16, true, {{40, 3}, {19, 1}}});
    v.push_back({"hd 512 f32", 16, 2, 2, 512, FG_TYPE_F32, false, {{35, 2}}});
    // splits: long decode (flash-decoding) with many SMs, and a mix
    {
        Scn s{"split decode 3000 + short, gqa4 hd64", 16, 8, 2, 64, FG_TYPE_F16, true, {{3000, 1}, {20, 1}, {700, 1}}};
        s.n_sm = 64; v.push_back(s);
    }
    {
        Scn s{"split prefill chunk over long ctx hd16 ps7", 7, 4, 1, 16, FG_TYPE_F16, true, {{1500, 20}, {600, 1}}};
        s.n_sm = 64; v.push_back(s);
    }
    {
        Scn s{"split noncausal f32 hd128", 16, 4, 4, 128, FG_TYPE_F32, false, {{1200, 3}, {300, 1}}};
        s.n_sm = 32; v.push_back(s);
    }
    {
        Scn s{"split, stale max_n_kv (grid too small)", 16, 8, 2, 64, FG_TYPE_F16, true, {{2000, 1}, {900, 3}}};
        s.n_sm = 64; s.stale_max = true; v.push_back(s);
    }
    {
        Scn s{"split, arena small (memory bound on L)", 16, 8, 2, 64, FG_TYPE_F16, true, {{3000, 1}, {2000, 2}}};
        s.n_sm = 64; s.arena = 40000; v.push_back(s);
    }
    {
        Scn s{"no partial room (header only)", 16, 8, 2, 64, FG_TYPE_F16, true, {{1000, 1}, {20, 1}}};
        s.n_sm = 64; s.arena = 2048; v.push_back(s);
    }
    {
        Scn s{"long prompt 2048 over many pages hd64", 16, 4, 1, 64, FG_TYPE_F16, true, {{2048, 2048}}};
        s.n_sm = 4; v.push_back(s);
    }
    // random steps: many sequences of very different lengths, decode and prefill chunks mixed
    {
        std::mt19937 r(2024);
        const int hds[] = {8, 16, 64, 80, 128, 256, 40};
        const int gs[] = {1, 4, 8, 0}; // 0: MQA
        for (int k = 0; k < 12; k++) {
            Scn s{"random", 0, 0, 0, 0, 0, true, {}};
            static char names[12][64];
            s.page_size = (r() % 2) ? 16 : 7 + (int)(r() % 5);
            int nkvh = 1 + (int)(r() % 3), g = gs[r() % 4];
            s.n_head_kv = g == 0 ? 1 : nkvh;
            s.n_head = g == 0 ? 12 : nkvh * g;
            s.hd = hds[r() % 7];
            s.type = (r() % 3) ? FG_TYPE_F16 : FG_TYPE_F32;
            s.causal = (r() % 4) != 0;
            int n = 4 + (int)(r() % 20);
            for (int i = 0; i < n; i++) {
                int kind = (int)(r() % 3);
                int nkv = kind == 0 ? 1 + (int)(r() % 40) : kind == 1 ? 1 + (int)(r() % 600) : 1 + (int)(r() % 120);
                int nt = (r() % 2) ? 1 : 1 + (int)(r() % std::min(nkv, 24));
                s.seqs.push_back({nkv, nt});
            }
            s.n_sm = 1 + (int)(r() % 64);
            s.seed = 100 + k;
            snprintf(names[k], 64, "random %d: ps %d h %d/%d hd %d %s %s", k, s.page_size, s.n_head, s.n_head_kv, s.hd,
                     s.type == FG_TYPE_F16 ? "f16" : "f32", s.causal ? "causal" : "full");
            s.name = names[k];
            v.insert(v.end() - 1, s);
        }
    }
    // Q8_0 cache (head_dim a multiple of 32): the same shapes, the forced splits, random steps
    {
        const uint32_t Q = FG_TYPE_Q8_0;
        std::vector<Scn> q;
        q.push_back({"q8_0 decode mix gqa4 hd64 ps16", 16, 8, 2, 64, Q, true, {{40, 1}, {17, 1}, {1, 1}, {100, 1}, {33, 1}}});
        q.push_back({"q8_0 prefill+decode gqa1 hd32 ps7", 7, 4, 4, 32, Q, true, {{30, 30}, {50, 1}, {23, 9}, {9, 1}, {64, 5}}});
        q.push_back({"q8_0 mix gqa8 hd32 ps7 noncausal", 7, 8, 1, 32, Q, false, {{30, 12}, {50, 1}, {23, 9}, {8, 8}}});
        q.push_back({"q8_0 mqa hd64 ps16 (G=32)", 16, 32, 1, 64, Q, true, {{45, 3}, {70, 1}, {20, 20}}});
        q.push_back({"q8_0 gqa7 hd96 ps16 (generic)", 16, 14, 2, 96, Q, true, {{50, 6}, {31, 1}, {66, 2}}});
        q.push_back({"q8_0 gqa4 hd128 ps16", 16, 8, 2, 128, Q, true, {{90, 4}, {130, 1}, {33, 33}}});
        q.push_back({"q8_0 gqa2 hd256 ps16", 16, 4, 2, 256, Q, true, {{70, 2}, {40, 1}}});
        q.push_back({"q8_0 hd 160 (cap 256, generic) ps5", 5, 6, 3, 160, Q, true, {{26, 4}, {11, 11}}});
        q.push_back({"q8_0 hd 320 (cap 512)", 16, 2, 1, 320, Q, true, {{40, 3}, {19, 1}}});
        q.push_back({"q8_0 hd 512 noncausal", 16, 2, 2, 512, Q, false, {{35, 2}}});
        {
            Scn x{"q8_0 split decode 3000 + short, gqa4 hd64", 16, 8, 2, 64, Q, true, {{3000, 1}, {20, 1}, {700, 1}}};
            x.n_sm = 64; q.push_back(x);
        }
        {
            Scn x{"q8_0 split prefill chunk over long ctx hd32 ps7", 7, 4, 1, 32, Q, true, {{1500, 20}, {600, 1}}};
            x.n_sm = 64; q.push_back(x);
        }
        {
            Scn x{"q8_0 split noncausal hd128", 16, 4, 4, 128, Q, false, {{1200, 3}, {300, 1}}};
            x.n_sm = 32; q.push_back(x);
        }
        std::mt19937 r(4242);
        const int hds[] = {32, 64, 96, 128, 256};
        const int gs[] = {1, 4, 8, 0}; // 0: MQA
        for (int k = 0; k < 8; k++) {
            Scn x{"random q8_0", 0, 0, 0, 0, Q, true, {}};
            static char names[8][64];
            x.page_size = (r() % 2) ? 16 : 7 + (int)(r() % 5);
            int nkvh = 1 + (int)(r() % 3), g = gs[r() % 4];
            x.n_head_kv = g == 0 ? 1 : nkvh;
            x.n_head = g == 0 ? 12 : nkvh * g;
            x.hd = hds[r() % 5];
            x.causal = (r() % 4) != 0;
            int n = 4 + (int)(r() % 16);
            for (int i = 0; i < n; i++) {
                int kind = (int)(r() % 3);
                int nkv = kind == 0 ? 1 + (int)(r() % 40) : kind == 1 ? 1 + (int)(r() % 600) : 1 + (int)(r() % 120);
                int nt = (r() % 2) ? 1 : 1 + (int)(r() % std::min(nkv, 24));
                x.seqs.push_back({nkv, nt});
            }
            x.n_sm = 1 + (int)(r() % 64);
            x.seed = 300 + k;
            snprintf(names[k], 64, "random q8_0 %d: ps %d h %d/%d hd %d %s", k, x.page_size, x.n_head, x.n_head_kv, x.hd,
                     x.causal ? "causal" : "full");
            x.name = names[k];
            q.push_back(x);
        }
        v.insert(v.end() - 1, q.begin(), q.end()); // the 2048-token prompt stays last
    }
    // rope_kv_attention: decode steps (the decode kernel rotates and stores; split sequences:
    // the chunk holding the position stores it), NORMAL and NEOX,
    // partial rotary dims, frequency factors, both cache types; a prefill step and an F32
    // cache (the two ops)
    {
        const uint32_t Q = FG_TYPE_Q8_0, H = FG_TYPE_F16;
        std::vector<Scn> r;
        auto add = [&](Scn x, int n_rot, bool neox, bool ff, int n_sm) {
            x.n_rot = n_rot; x.neox = neox; x.ff = ff; x.n_sm = n_sm; r.push_back(x);
        };
        add({"rope decode gqa4 hd64 f16 normal", 16, 8, 2, 64, H, true, {{40, 1}, {17, 1}, {1, 1}, {100, 1}}}, 64, false, false, 4);
        add({"rope decode gqa4 hd128 f16 neox ff", 16, 8, 2, 128, H, true, {{90, 1}, {130, 1}, {3, 1}}}, 128, true, true, 4);
        add({"rope decode gqa7 hd128 q8_0 neox n_rot 64", 16, 14, 2, 128, Q, true, {{50, 1}, {31, 1}}}, 64, true, false, 4);
        add({"rope decode mha hd64 q8_0 normal ps5", 5, 4, 4, 64, Q, true, {{26, 1}, {11, 1}, {1, 1}}}, 32, false, true, 4);
        add({"rope decode split 3000 gqa4 hd64 f16", 16, 8, 2, 64, H, true, {{3000, 1}, {20, 1}, {700, 1}}}, 64, true, false, 64);
        add({"rope decode split q8_0 hd128 normal", 16, 8, 1, 128, Q, true, {{1200, 1}, {300, 1}}}, 128, false, false, 32);
        add({"rope decode gqa8 hd256 f16 noncausal", 16, 16, 2, 256, H, false, {{70, 1}, {40, 1}}}, 256, true, false, 4);
        add({"rope prefill+decode gqa4 hd64 f16 (two ops)", 7, 8, 2, 64, H, true, {{30, 30}, {50, 1}, {23, 9}}}, 64, false, true, 4);
        add({"rope decode f32 cache hd64 (two ops)", 16, 4, 2, 64, FG_TYPE_F32, true, {{40, 1}, {9, 1}}}, 48, true, false, 4);
        v.insert(v.end() - 1, r.begin(), r.end());
    }
    int fails = 0;
    if (only < 0) {
        fails += test_copy_page(FG_TYPE_F16);
        fails += test_copy_page(FG_TYPE_F32);
        fails += test_copy_page(FG_TYPE_Q8_0);
    }
    for (size_t i = 0; i < v.size(); i++)
        if (only < 0 ? i + 1 < v.size() : (int)i == only) fails += run(v[i]) != 0;
    printf("%d failed\n", fails);
    return fails != 0;
}
