// test_norm_emu.cpp - cuda_ops.cu's rmsnorm into an activation type run in the SIMT emulator
// (emu_rt.h): the fused kernel's bytes (Q8_K, Q8_1, F16, BF16) must equal the CPU reference
// quantizer applied to the F32 rmsnorm of the same rows (the GPU's convert kernels are bit for
// bit that quantizer: test_backend_ops). Widths inside the fused kernel (one and several Q8_K
// blocks a thread, 64- to 1024-thread blocks) and beyond it (the F32 rows + convert path,
// stubbed here with the reference quantizer); rows with a zero Q8_K block and ties of |x|.
// Usage (via run_norm.sh): test_norm_emu [seed]
#include "backend/cuda/cuda_internal.h"
extern "C" {
#include "base/half.h"
#include "quant/quant.h"
#include "quant/quant_internal.h"
}
#include "quant/blocks.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <random>
#include <vector>

static std::vector<uint8_t> g_scratch;
static int g_fallbacks; // rows normed through F32 + convert instead of the fused kernel

// the functions of cuda_matmul.cu the fallback path calls
fg_status fg_cuda_op_scratch(fg_cuda *c, size_t n, void **out) {
    (void)c;
    g_fallbacks++;
    g_scratch.assign(n + 64, 0xCD);
    *out = g_scratch.data();
    return FG_OK;
}

bool fg_cuda_convert_supports(uint32_t t) {
    return t == FG_TYPE_Q8_1 || t == FG_TYPE_Q8_K || t == FG_TYPE_F16 || t == FG_TYPE_BF16;
}

static size_t act_row_bytes(uint32_t t, int64_t n) {
    const fg_type_traits *tr = fg_type_traits_ref(t);
    return (size_t)(n / tr->blck_size) * tr->type_size;
}

// x F32 rows [rows][n] (row stride x->nb[1]) converted with the reference quantizers
static void ref_convert(uint8_t *dst, uint32_t t, const float *x, size_t x_nb1, int64_t n, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)((const char *)x + (size_t)r * x_nb1);
        uint8_t *d = dst + (size_t)r * act_row_bytes(t, n);
        if (t == FG_TYPE_Q8_1)
            fg_quant_q8_1_act(xr, d, n);
        else if (t == FG_TYPE_Q8_K)
            fg_type_traits_ref(FG_TYPE_Q8_K)->from_float(xr, d, n);
        else
            for (int64_t i = 0; i < n; i++) {
                const uint16_t h = t == FG_TYPE_F16 ? fg_f32_to_f16(xr[i]) : fg_f32_to_bf16(xr[i]);
                memcpy(d + 2 * i, &h, 2);
            }
    }
}

fg_status fg_cuda_convert_src(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *u) {
    (void)c;
    (void)u;
    ref_convert((uint8_t *)dst->data, dst->type, (const float *)x->data, x->nb[1], x->ne[0], x->ne[1]);
    return FG_OK;
}

static fg_tensor t2(void *p, uint32_t type, int64_t n, int64_t rows, size_t nb1) {
    const fg_type_traits *tr = fg_type_traits_ref(type);
    fg_tensor t;
    memset(&t, 0, sizeof t);
    t.data = p;
    t.type = type;
    t.ne[0] = n;
    t.ne[1] = rows;
    t.ne[2] = t.ne[3] = 1;
    t.nb[0] = tr->type_size;
    t.nb[1] = nb1;
    t.nb[2] = t.nb[3] = nb1 * (size_t)rows;
    return t;
}

int main(int argc, char **argv) {
    const unsigned seed = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 0) : 20261206u;
    std::mt19937 rng(seed);
    std::normal_distribution<float> N(0.0f, 2.0f);
    printf("test_norm_emu: warp %d, seed %u\n", FG_WARP, seed);
    fg_cuda c;
    memset(&c, 0, sizeof c);
    c.warp = FG_WARP;
    static const uint32_t types[] = {FG_TYPE_Q8_K, FG_TYPE_Q8_1, FG_TYPE_F16, FG_TYPE_BF16};
    // (n, rows): fused (1024 < n <= 16384: 512- to 1024-thread blocks, threads holding one to
    // four float4s, a 288-thread block whose Q8_K rows are not fused); the F32 rows + convert
    // (n <= 1024, n % 4 != 0, n > 16384)
    static const int64_t shapes[][2] = {{4096, 2}, {5120, 1}, {16384, 1}, {2048, 3}, {8448, 1}, {2304, 2},
                                        {256, 3}, {768, 2}, {96, 2}, {1001, 2}, {16640, 1}};
    int fails = 0, cases = 0;
    for (uint32_t t : types) {
        const fg_type_traits *tr = fg_type_traits_ref(t);
        for (const auto &sh : shapes) {
            const int64_t n = sh[0], rows = sh[1];
            if (n % tr->blck_size != 0)
                continue;
            const size_t x_nb1 = (size_t)(n + 4 + (n % 4 == 0 ? 0 : 4 - n % 4)) * 4; // 16-byte rows where n % 4 == 0
            std::vector<float> xs((size_t)rows * x_nb1 / 4 + 4), w((size_t)n + 4);
            float *xp = (float *)(((uintptr_t)xs.data() + 15) & ~(uintptr_t)15);
            float *wp = (float *)(((uintptr_t)w.data() + 15) & ~(uintptr_t)15);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t i = 0; i < n; i++) {
                    float v = N(rng);
                    if (r == 0 && n >= 768 && i < 256)
                        v = 0.0f; // a zero Q8_K block
                    if (r == 0 && n >= 768 && i >= 512 && i < 768)
                        v = i % 3 ? 0.5f : -0.5f; // ties of |x|
                    xp[(size_t)r * x_nb1 / 4 + i] = v;
                }
            for (int64_t i = 0; i < n; i++)
                wp[i] = 1.0f + 0.25f * N(rng);
            const size_t ab = act_row_bytes(t, n);
            std::vector<uint8_t> got(ab * (size_t)rows + 64, 0xEE), want(ab * (size_t)rows, 0);
            std::vector<float> f((size_t)n * (size_t)rows + 4);
            float *fp = (float *)(((uintptr_t)f.data() + 15) & ~(uintptr_t)15);
            fg_tensor x = t2(xp, FG_TYPE_F32, n, rows, x_nb1), wt = t2(wp, FG_TYPE_F32, n, 1, (size_t)n * 4);
            fg_tensor df = t2(fp, FG_TYPE_F32, n, rows, (size_t)n * 4);
            fg_tensor dq = t2(got.data(), t, n, rows, ab);
            if (fg_cuda_rmsnorm(&c, &df, &x, &wt, 1e-5f) != FG_OK || fg_cuda_rmsnorm(&c, &dq, &x, &wt, 1e-5f) != FG_OK) {
                printf("FAIL %s n %lld: %s\n", tr->name, (long long)n, fg_last_error());
                fails++;
                continue;
            }
            // the F32 rows themselves against rmsnorm in double (the weights applied, the scale right)
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = xp + (size_t)r * x_nb1 / 4;
                double ss = 0.0;
                for (int64_t i = 0; i < n; i++)
                    ss += (double)xr[i] * xr[i];
                const double sc = 1.0 / sqrt(ss / (double)n + 1e-5);
                for (int64_t i = 0; i < n; i++) {
                    const double e = xr[i] * sc * wp[i], g = fp[(size_t)r * n + i];
                    if (!(fabs(g - e) <= 1e-5 * (1.0 + fabs(e)))) {
                        printf("FAIL %s n %lld row %lld: f32 element %lld is %.9g, rmsnorm %.9g\n", tr->name, (long long)n,
                               (long long)r, (long long)i, g, e);
                        fails++;
                        r = rows;
                        break;
                    }
                }
            }
            ref_convert(want.data(), t, fp, (size_t)n * 4, n, rows);
            size_t bad = 0;
            while (bad < want.size() && got[bad] == want[bad])
                bad++;
            bool guard = true;
            for (size_t i = want.size(); i < got.size(); i++)
                guard = guard && got[i] == 0xEE;
            cases++;
            if (getenv("NORM_EMU_VERBOSE"))
                printf("%s n %lld: %s\n", tr->name, (long long)n, g_scratch.empty() ? "fused" : "f32");
            g_scratch.clear();
            if (bad < want.size() || !guard) {
                printf("FAIL %s n %lld rows %lld: %s at byte %zu of %zu\n", tr->name, (long long)n, (long long)rows,
                       guard ? "differs" : "guard overwritten", bad, want.size());
                fails++;
            }
        }
    }
    const int fused = cases - g_fallbacks;
    printf("test_norm_emu: warp %d, %d cases (%d fused), %d differ\n", FG_WARP, cases, fused, fails);
    if (fused < 4 * 5 + 3) { // the widths 2048 .. 16384 of every type (2304: Q8_K with 32-wide warps not)
        printf("FAIL: only %d cases took the fused kernel\n", fused);
        fails++;
    }
    return fails ? 1 : 0;
}
