// test_quant_files.c - dequantizes every 2-D tensor of every shared synthetic model (GGUF files
// made by llama-quantize) and checks the values: finite, std as in MANIFEST.md, and close to the
// same tensor of the F16 file (all llama files come from one F32 source), which pins the byte
// layouts of all 12 weight types on real files. Data from FORGE_SHARED; missing files fail.
// forge-test-modules: gguf quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge.h"
#include "quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *shared_dir(void) {
    const char *s = getenv("FORGE_SHARED");
    return s && *s ? s : "../shared";
}

typedef struct file_case {
    const char *file;
    uint32_t type;      // type of every 2-D tensor
    double max_rel_rms; // vs the F16 file's tensor (llama files only)
    double std_tol;     // |std / expected - 1|
} file_case;

static const file_case k_llama[] = {
    {"synth-llama-F16.gguf", FG_TYPE_F16, 0.0, 0.03},
    {"synth-llama-BF16.gguf", FG_TYPE_BF16, 0.006, 0.03},
    {"synth-llama-Q8_0.gguf", FG_TYPE_Q8_0, 0.01, 0.03},
    {"synth-llama-Q6_K.gguf", FG_TYPE_Q6_K, 0.03, 0.04},
    {"synth-llama-Q5_0.gguf", FG_TYPE_Q5_0, 0.06, 0.05},
    {"synth-llama-Q5_1.gguf", FG_TYPE_Q5_1, 0.06, 0.05},
    {"synth-llama-Q5_K_M.gguf", FG_TYPE_Q5_K, 0.06, 0.05},
    {"synth-llama-Q4_0.gguf", FG_TYPE_Q4_0, 0.12, 0.06},
    {"synth-llama-Q4_1.gguf", FG_TYPE_Q4_1, 0.12, 0.06},
    {"synth-llama-Q4_K_M.gguf", FG_TYPE_Q4_K, 0.12, 0.06},
    {"synth-llama-Q3_K_M.gguf", FG_TYPE_Q3_K, 0.25, 0.1},
    {"synth-llama-Q2_K.gguf", FG_TYPE_Q2_K, 0.45, 0.2},
};

// Expected std of a 2-D tensor (MANIFEST.md 1.2): token_embd 0.05 (n_embd 256) / 0.1 (64),
// projections 1.28 / sqrt(n_in) with n_in = ne[0].
static double expected_std(const fg_gguf_tensor *t) {
    if (strcmp(t->name, "token_embd.weight") == 0)
        return t->ne[0] == 256 ? 0.05 : 0.1;
    return 1.28 / sqrt((double)t->ne[0]);
}

static fg_gguf *open_model(const char *file) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/synth/%s", shared_dir(), file);
    fg_gguf *g = NULL;
    fg_status st = fg_gguf_open(path, &g);
    if (st != FG_OK)
        fail_msg("%s: %s", path, fg_last_error());
    return g;
}

// Dequantizes a 2-D tensor (checks its byte size first); the caller frees.
static float *dequant_tensor(const char *file, const fg_gguf_tensor *t, uint32_t want_type) {
    if (t->type != want_type)
        fail_msg("%s: tensor '%s': expected type %s, found %s", file, t->name, fg_type_name(want_type),
                 fg_type_name(t->type));
    const fg_type_traits *tr = fg_type_traits_get(t->type);
    assert_non_null(tr);
    int64_t n = t->ne[0] * t->ne[1];
    assert_int_equal(t->ne[0] % tr->blck_size, 0);
    assert_int_equal(t->n_bytes, fg_type_row_size_n(t->type, t->ne[0]) * (size_t)t->ne[1]);
    float *y = malloc((size_t)n * sizeof(float));
    assert_non_null(y);
    tr->to_float(t->data, y, n);
    return y;
}

static void check_stats(const char *file, const fg_gguf_tensor *t, const float *y, double std_tol) {
    int64_t n = t->ne[0] * t->ne[1];
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(y[i]))
            fail_msg("%s: tensor '%s': element %lld is %g", file, t->name, (long long)i, (double)y[i]);
        s += y[i];
        s2 += (double)y[i] * y[i];
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    double want = expected_std(t), rel = fabs(sd / want - 1.0);
    double tol = std_tol + 3.0 / sqrt(2.0 * (double)n); // quantization + sampling error
    if (!(rel <= tol))
        fail_msg("%s: tensor '%s' [%lld x %lld]: std %.5f, expected %.5f (rel %.4f > %.4f)", file, t->name,
                 (long long)t->ne[0], (long long)t->ne[1], sd, want, rel, tol);
    if (!(fabs(mean) <= 0.1 * want))
        fail_msg("%s: tensor '%s': mean %.5f is not ~0 (std %.5f)", file, t->name, mean, want);
}

static void test_llama_files(void **state) {
    (void)state;
    fg_gguf *ref = open_model("synth-llama-F16.gguf");
    int n_checked = 0;
    for (size_t f = 0; f < sizeof(k_llama) / sizeof(k_llama[0]); f++) {
        fg_gguf *g = open_model(k_llama[f].file);
        int n2d = 0;
        double worst = 0;
        for (int64_t i = 0; i < fg_gguf_n_tensors(g); i++) {
            const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
            if (t->n_dims != 2)
                continue;
            n2d++;
            float *y = dequant_tensor(k_llama[f].file, t, k_llama[f].type);
            check_stats(k_llama[f].file, t, y, k_llama[f].std_tol);
            const fg_gguf_tensor *rt = fg_gguf_find_tensor(ref, t->name);
            assert_non_null(rt);
            assert_true(rt->ne[0] == t->ne[0] && rt->ne[1] == t->ne[1]);
            float *r = dequant_tensor("synth-llama-F16.gguf", rt, FG_TYPE_F16);
            double se = 0, sr = 0;
            for (int64_t k = 0; k < t->ne[0] * t->ne[1]; k++) {
                se += ((double)y[k] - r[k]) * ((double)y[k] - r[k]);
                sr += (double)r[k] * r[k];
            }
            double rel = sqrt(se / sr);
            worst = rel > worst || isnan(rel) ? rel : worst;
            if (!(rel <= k_llama[f].max_rel_rms + 1e-12))
                fail_msg("%s: tensor '%s': rel rms difference to the F16 file %.4f > %.4f", k_llama[f].file,
                         t->name, rel, k_llama[f].max_rel_rms);
            free(y);
            free(r);
            n_checked++;
        }
        printf("  %-26s %2d 2-D tensors, worst rel rms vs F16 %.4f\n", k_llama[f].file, n2d, worst);
        assert_int_equal(n2d, 15);
        fg_gguf_close(g);
    }
    fg_gguf_close(ref);
    assert_int_equal(n_checked, 15 * 12);
}

static void test_qwen_files(void **state) {
    (void)state;
    const char *files[] = {"synth-qwen2-F16.gguf", "synth-qwen3-F16.gguf"};
    for (int f = 0; f < 2; f++) {
        fg_gguf *g = open_model(files[f]);
        int n2d = 0;
        for (int64_t i = 0; i < fg_gguf_n_tensors(g); i++) {
            const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
            if (t->n_dims != 2)
                continue;
            n2d++;
            float *y = dequant_tensor(files[f], t, FG_TYPE_F16);
            check_stats(files[f], t, y, 0.03);
            free(y);
        }
        printf("  %-26s %2d 2-D tensors\n", files[f], n2d);
        assert_int_equal(n2d, 15);
        fg_gguf_close(g);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_files),
        cmocka_unit_test(test_qwen_files),
    };
    printf("test_quant_files: FORGE_SHARED=%s\n", shared_dir());
    return cmocka_run_group_tests_name("quant_files", tests, NULL, NULL);
}
