// swiglu_simd.h — vectorised exp and sigmoid for the SwiGLU kernel, per ISA build.
//
//   vexp(x)      e^x, relative error ~3e-7 on [-87.3, 88.3]; +inf above, 0 below, NaN stays NaN
//   vsigmoid(x)  1 / (1 + e^-x)
// Method: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts for an exact reduction),
// e^r by a degree-6 minimax polynomial (Cephes' expf coefficients), 2^n built in the exponent.
#pragma once
#include <cmath>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {

namespace expc {
constexpr float hi = 88.3762626647949f, lo = -87.3365447504f;  // e^lo is still a normal float
constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
constexpr float p0 = 1.9875691500e-4f, p1 = 1.3981999507e-3f, p2 = 8.3334519073e-3f, p3 = 4.1665795894e-2f,
                p4 = 1.6666665459e-1f, p5 = 5.0000001201e-1f;
}  // namespace expc

#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
inline V vmin_nan(V bound, V x) { return _mm512_min_ps(bound, x); }  // min(bound, x), NaN x stays NaN
inline V vmax_nan(V bound, V x) { return _mm512_max_ps(bound, x); }
inline V vround(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline V vpow2i(V n) {  // 2^n for integral n in [-127, 128]
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
// r, with +inf where x > hi and 0 where x < lo (NaN x compares false: r kept)
inline V vexp_edges(V x, V r) {
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, vset1(expc::hi), _CMP_GT_OQ), r, vset1(INFINITY));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, vset1(expc::lo), _CMP_LT_OQ), r, vzero());
}
#else
inline V vmin_nan(V bound, V x) { return _mm256_min_ps(bound, x); }
inline V vmax_nan(V bound, V x) { return _mm256_max_ps(bound, x); }
inline V vround(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline V vpow2i(V n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
inline V vexp_edges(V x, V r) {
  r = _mm256_blendv_ps(r, vset1(INFINITY), _mm256_cmp_ps(x, vset1(expc::hi), _CMP_GT_OQ));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, vset1(expc::lo), _CMP_LT_OQ), r);
}
#endif

inline V vexp(V x) {
  using namespace expc;
  // (bound, x) order: the instructions return the second operand when either is NaN
  const V x0 = x;
  x = vmin_nan(vset1(hi), vmax_nan(vset1(lo), x));
  V n = vmin_nan(vset1(127.f), vround(vmul(x, vset1(log2e))));
  V r = vfma(n, vset1(-ln2_hi), x);
  r = vfma(n, vset1(-ln2_lo), r);
  V p = vset1(p0);
  p = vfma(p, r, vset1(p1));
  p = vfma(p, r, vset1(p2));
  p = vfma(p, r, vset1(p3));
  p = vfma(p, r, vset1(p4));
  p = vfma(p, r, vset1(p5));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.f)));
  // 2^n is built in the exponent field, so n must stay <= 127; near hi that leaves r up to
  // 0.347, a hair past ln2/2, where the polynomial is still accurate
  return vexp_edges(x0, vmul(p, vpow2i(n)));
}

inline V vsigmoid(V x) { return vdiv(vset1(1.f), vadd(vset1(1.f), vexp(vsub(vzero(), x)))); }
#else
inline V vexp(V x) { return std::exp(x); }
inline V vsigmoid(V x) { return 1.f / (1.f + std::exp(-x)); }
#endif

}  // namespace lf::cpu::LF_ISA
