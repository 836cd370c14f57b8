// cpu_kernels.h - the CPU backend's fast kernels: AVX2/FMA/F16C (and AVX-512 VNNI where the
// build has it) vec_dots, activation quantizers and multi-row GEMM tiles, each bit-identical
// to or within the float-summation order of the scalar oracle in src/quant. A CPU backend
// instance picks them, or the scalar reference (fg_backend_opts.use_ref), per call: there is
// no process-wide switch. Files: quant_simd.c (vec_dots), quant_gemm.c (tiles),
// cpu_kernels.c (the per-type table). Who calls it: the CPU backend, tests, bench.
#ifndef FG_BACKEND_CPU_KERNELS_H
#define FG_BACKEND_CPU_KERNELS_H

#include "quant/quant.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FG_CPU_HAVE_AVX2 1
#endif

// The traits of `type` with the fast vec_dot where this build has one (use_ref: the scalar
// reference, as fg_type_traits_get). NULL for unknown ids.
const fg_type_traits *fg_cpu_traits(uint32_t type, bool use_ref);
// fg_quantize_row with the SIMD activation quantizers (bit-identical to the scalar ones).
void fg_cpu_quantize_row(bool use_ref, uint32_t vec_dot_type, const float *x, void *y, int64_t n);
// Names of the fast paths compiled in ("avx2+avx512-vnni", "avx2", "scalar").
const char *fg_cpu_simd_name(void);

// Multi-row dot products (prefill matmul): dst[r * dst_stride + o] = vec_dot(n, w row o, x row r)
// for o < n_w, r < n_x; w rows w_stride bytes apart, x rows (already vec_dot_type) x_stride
// bytes apart, dst_stride in floats. Each element is bit for bit what fg_cpu_traits(type,
// use_ref)->vec_dot gives, whatever n_w, n_x and the tiling: each weight block is decoded once
// per several x rows. FG_ERR_UNSUPPORTED for a type without vec_dot, FG_ERR_INVALID_ARG for n
// not a multiple of the block size.
fg_status fg_cpu_gemm(bool use_ref, uint32_t type, int64_t n, int64_t n_w, int64_t n_x, const void *w,
                      size_t w_stride, const void *x, size_t x_stride, float *dst, size_t dst_stride);
// True when fg_cpu_gemm has a multi-row kernel for the type in this build and mode that is
// worth using for n_x activation rows (false: use vec_dot, or fg_cpu_gemm's plain loop).
bool fg_cpu_gemm_has_fast(bool use_ref, uint32_t type, int64_t n_x);

#ifdef FG_CPU_HAVE_AVX2
void fg_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_bf16_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q4_0_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q4_1_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q5_0_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q5_1_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q2_k_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q3_k_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_mxfp4_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q4_k_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q5_k_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_vec_dot_q6_k_avx2(int64_t n, float *s, const void *x, const void *y);
void fg_quant_q8_0_act_avx2(const float *src, void *dst, int64_t n);
void fg_quant_q8_1_act_avx2(const float *src, void *dst, int64_t n);
#endif

#endif // FG_BACKEND_CPU_KERNELS_H
