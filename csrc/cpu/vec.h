// vec.h — the float vector type each ISA build of a CPU kernel computes with.
//
// Included only by csrc/cpu/*.cpp, which CMake compiles three times with
// LF_ISA = scalar | avx2 | avx512 and matching -m flags. Everything here lives in
// namespace lf::cpu::LF_ISA, so no inline function compiled with AVX
// instructions can be merged by the linker into code that runs on an older CPU.
//
//   V            a vector of N floats (N = 16, 8 or 1)
//   vload/vstore float32 and bfloat16 memory <-> V (bf16 stores round to nearest even)
//   vstream      non-temporal store (falls back to vstore when unaligned)
//   vadd vsub vmul vfma(a, b, c) = a*b + c, vmax, vset1, vzero, vsum (horizontal add), vhmax
//   hsum256      horizontal add of a __m256 (SIMD builds)
//   with_float_type(dtype, fn)  fn(T{}) for T = float, bf16 or double (a kernel's per-dtype switch)
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tensor.h"  // DType

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef LF_ISA
#error "LF_ISA must be defined (scalar, avx2 or avx512)"
#endif

namespace lf {
// bfloat16 storage: the upper 16 bits of an IEEE float32.
struct bf16 { uint16_t bits; };
}  // namespace lf

namespace lf::cpu::LF_ISA {

inline float bf16_to_f32(bf16 h) {
  uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16 f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return bf16_to_f32(x); }
inline double to_f32(double x) { return x; }
template <class T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16 from_f32<bf16>(float x) { return f32_to_bf16(x); }

// fn(T{}) with T the storage type of a float32 / bfloat16 / float64 tensor; other dtypes do nothing
// (every adapter has rejected them before a kernel runs).
template <class Fn>
inline void with_float_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); break;
    case DType::bf16: fn(bf16{}); break;
    case DType::f64: fn(double{}); break;
    default: break;
  }
}

#if defined(__AVX512F__) || defined(__AVX2__)
// Sum of an 8-lane register (kernels that work in 256-bit registers in both SIMD builds).
inline float hsum256(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#if defined(__AVX512F__)
using V = __m512;
constexpr int N = 16;
inline V vzero() { return _mm512_setzero_ps(); }
inline V vset1(float a) { return _mm512_set1_ps(a); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline V vload(const bf16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m256i v_to_bf16(V v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_blend_epi32(nan, r, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline void vstore(bf16* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v_to_bf16(v)); }
inline void vstream(float* p, V v) {
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) _mm512_stream_ps(p, v); else vstore(p, v);
}
inline void vstream(bf16* p, V v) {
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v_to_bf16(v));
  else
    vstore(p, v);
}
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(V a) { return _mm512_reduce_add_ps(a); }
inline float vhmax(V a) { return _mm512_reduce_max_ps(a); }
inline void vfence() { _mm_sfence(); }

#elif defined(__AVX2__)
using V = __m256;
constexpr int N = 8;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vset1(float a) { return _mm256_set1_ps(a); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline V vload(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m128i v_to_bf16(V v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, qnan, nan);
  // 32 -> 16 bit: packus works within 128-bit lanes, then gather lanes 0 and 2.
  __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  return _mm256_castsi256_si128(p);
}
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline void vstore(bf16* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v_to_bf16(v)); }
inline void vstream(float* p, V v) {
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) _mm256_stream_ps(p, v); else vstore(p, v);
}
inline void vstream(bf16* p, V v) {
  if ((reinterpret_cast<uintptr_t>(p) & 15) == 0)
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), v_to_bf16(v));
  else
    vstore(p, v);
}
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline void vfence() { _mm_sfence(); }

#else
using V = float;
constexpr int N = 1;
inline V vzero() { return 0.f; }
inline V vset1(float a) { return a; }
inline V vload(const float* p) { return *p; }
inline V vload(const bf16* p) { return bf16_to_f32(*p); }
inline void vstore(float* p, V v) { *p = v; }
inline void vstore(bf16* p, V v) { *p = f32_to_bf16(v); }
inline void vstream(float* p, V v) { *p = v; }
inline void vstream(bf16* p, V v) { *p = f32_to_bf16(v); }
inline V vadd(V a, V b) { return a + b; }
inline V vsub(V a, V b) { return a - b; }
inline V vmul(V a, V b) { return a * b; }
inline V vmax(V a, V b) { return a > b ? a : b; }
inline V vfma(V a, V b, V c) { return a * b + c; }
inline float vsum(V a) { return a; }
inline float vhmax(V a) { return a; }
inline void vfence() {}
#endif

}  // namespace lf::cpu::LF_ISA
