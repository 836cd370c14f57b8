// cpu_kernels.c - the CPU backend's per-type kernel table: the reference traits of src/quant
// with the SIMD vec_dot of quant_simd.c substituted where this build has one, the activation
// quantizer dispatch, and the name of the SIMD level. Read-only tables, no global switch: the
// caller passes use_ref. Who calls it: cpu_matmul.c, cpu_ops.c, tests, bench.
#include "backend/cpu/cpu_kernels.h"

#include "base/status.h"
#include "quant/quant_internal.h"

#include <pthread.h>

const char *fg_cpu_simd_name(void) {
#if defined(FG_CPU_HAVE_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
    return "avx2+avx512-vnni";
#elif defined(FG_CPU_HAVE_AVX2) && (defined(__AVX512VNNI__) || defined(__AVXVNNI__))
    return "avx2+vnni";
#elif defined(FG_CPU_HAVE_AVX2)
    return "avx2";
#else
    return "scalar";
#endif
}

static fg_type_traits g_fast[FG_TYPE_COUNT];
static pthread_once_t g_fast_once = PTHREAD_ONCE_INIT;

static void build_fast(void) {
    for (uint32_t t = 0; t < FG_TYPE_COUNT; t++) {
        const fg_type_traits *r = fg_type_traits_ref(t);
        if (r)
            g_fast[t] = *r;
    }
#ifdef FG_CPU_HAVE_AVX2
    static const struct {
        uint32_t type;
        fg_vec_dot_fn fn;
    } k_fast[] = {
        {FG_TYPE_F32, fg_vec_dot_f32_avx2},     {FG_TYPE_F16, fg_vec_dot_f16_avx2},
        {FG_TYPE_BF16, fg_vec_dot_bf16_avx2},   {FG_TYPE_Q4_0, fg_vec_dot_q4_0_avx2},
        {FG_TYPE_Q4_1, fg_vec_dot_q4_1_avx2},   {FG_TYPE_Q5_0, fg_vec_dot_q5_0_avx2},
        {FG_TYPE_Q5_1, fg_vec_dot_q5_1_avx2},   {FG_TYPE_Q8_0, fg_vec_dot_q8_0_avx2},
        {FG_TYPE_Q2_K, fg_vec_dot_q2_k_avx2},   {FG_TYPE_Q3_K, fg_vec_dot_q3_k_avx2},
        {FG_TYPE_Q4_K, fg_vec_dot_q4_k_avx2},   {FG_TYPE_Q5_K, fg_vec_dot_q5_k_avx2},
        {FG_TYPE_Q6_K, fg_vec_dot_q6_k_avx2},   {FG_TYPE_MXFP4, fg_vec_dot_mxfp4_avx2},
    };
    for (size_t i = 0; i < sizeof k_fast / sizeof k_fast[0]; i++)
        g_fast[k_fast[i].type].vec_dot = k_fast[i].fn;
#endif
}

const fg_type_traits *fg_cpu_traits(uint32_t type, bool use_ref) {
    const fg_type_traits *r = fg_type_traits_ref(type);
    if (!r || use_ref)
        return r;
    pthread_once(&g_fast_once, build_fast);
    return &g_fast[type];
}

void fg_cpu_quantize_row(bool use_ref, uint32_t vec_dot_type, const float *x, void *y, int64_t n) {
#ifdef FG_CPU_HAVE_AVX2
    if (!use_ref && vec_dot_type == FG_TYPE_Q8_0) {
        FG_ASSERT(n % FG_QK8_0 == 0);
        fg_quant_q8_0_act_avx2(x, y, n);
        return;
    }
    if (!use_ref && vec_dot_type == FG_TYPE_Q8_1) {
        FG_ASSERT(n % FG_QK8_1 == 0);
        fg_quant_q8_1_act_avx2(x, y, n);
        return;
    }
#else
    (void)use_ref;
#endif
    fg_quantize_row(vec_dot_type, x, y, n);
}
