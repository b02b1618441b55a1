// paged_kv_simd.h — the vector exp the paged decode attention needs beyond vec.h.
//
// Included only by csrc/cpu/paged_kv.cpp (compiled per ISA), after cpu/vec.h.
//   vexp(V x)  e^x per lane, relative error < 2e-7 for x in [-87.3, 88.3]; 0 for
//              x < -87.33 (and for -inf), +inf for x > 88.37 (slightly early:
//              the attention only calls it on x <= 0), NaN stays NaN.
// Method: x = n*ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (Horner),
// 2^n built in the exponent bits.
#pragma once
#include <cmath>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {

constexpr float kExpHi = 88.37f;     // above: +inf (2^n would overflow for n = 128)
constexpr float kExpLo = -87.3365f;  // below: 0 (2^n would be denormal)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
// Taylor coefficients 1/k! for k = 2..6 (the |r| <= 0.35 range keeps them accurate to fp32).
constexpr float kP2 = 0.5f, kP3 = 1.6666667e-1f, kP4 = 4.1666668e-2f, kP5 = 8.3333338e-3f, kP6 = 1.3888889e-3f;

#if defined(__AVX512F__)
inline V vexp(V x) {
  const V big = _mm512_set1_ps(kExpHi);
  __mmask16 too_small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLo), _CMP_LT_OQ);
  __mmask16 too_big = _mm512_cmp_ps_mask(x, big, _CMP_GT_OQ);
  V xc = _mm512_max_ps(_mm512_min_ps(x, big), _mm512_set1_ps(kExpLo));  // NaN -> propagated below
  V n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  V p = _mm512_fmadd_ps(_mm512_set1_ps(kP6), r, _mm512_set1_ps(kP5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  V y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
  y = _mm512_mask_blend_ps(too_small, y, _mm512_setzero_ps());
  y = _mm512_mask_blend_ps(too_big, y, _mm512_set1_ps(INFINITY));
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(nan, y, x);
}

#elif defined(__AVX2__)
inline V vexp(V x) {
  const V big = _mm256_set1_ps(kExpHi), small = _mm256_set1_ps(kExpLo);
  V too_small = _mm256_cmp_ps(x, small, _CMP_LT_OQ);
  V too_big = _mm256_cmp_ps(x, big, _CMP_GT_OQ);
  V nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  V xc = _mm256_max_ps(_mm256_min_ps(x, big), small);
  V n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  V p = _mm256_fmadd_ps(_mm256_set1_ps(kP6), r, _mm256_set1_ps(kP5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  V y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_andnot_ps(too_small, y);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), too_big);
  return _mm256_blendv_ps(y, x, nan);
}

#else
inline V vexp(V x) { return std::exp(x); }
#endif

}  // namespace lf::cpu::LF_ISA
