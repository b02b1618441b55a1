// int8_matmul.cpp — weight-only int8 GEMV/skinny GEMM and W8A8 GEMM (see int8_matmul.h).
#include "cpu/int8_matmul.h"

#include <omp.h>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kMaxRows = 8;


// 8 weights at a time widened to float (both AVX2 and AVX-512 builds use 8-lane registers here).
template <int R>
void int8_rows(const Int8GemvArgs& a, int64_t m0, int64_t n) {
  const int64_t K = a.K;
  const int8_t* w = a.q + n * K;
  float tail[R] = {};
  int64_t k = 0;
#if defined(__AVX2__)
  constexpr int A = R <= 2 ? 4 : 1;  // independent chains hide the FMA latency for few rows
  __m256 acc[R][A];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < A; ++i) acc[r][i] = _mm256_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    for (int j = 0; j < 4; ++j) {
      __m256 wf = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k + 8 * j))));
      for (int r = 0; r < R; ++r)
        acc[r][j % A] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(a.x + (m0 + r) * K + k + 8 * j), acc[r][j % A]);
    }
  }
  for (int r = 0; r < R; ++r) {
    __m256 t = acc[r][0];
    for (int i = 1; i < A; ++i) t = _mm256_add_ps(t, acc[r][i]);
    acc[r][0] = t;
  }
  for (int r = 0; r < R; ++r) tail[r] = hsum256(acc[r][0]);
#endif
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r) tail[r] += static_cast<float>(w[k]) * a.x[(m0 + r) * K + k];
  for (int r = 0; r < R; ++r) a.y[(m0 + r) * a.N + n] = tail[r] * a.scale[n];
}

template <int R>
void int8_block(const Int8GemvArgs& a, int64_t m0) {
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t n = 0; n < a.N; ++n) int8_rows<R>(a, m0, n);
}

// exact int32 dot product of two int8 rows
inline int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t K) {
  int64_t k = 0;
  int32_t s = 0;
#if defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (; k + 16 <= K; k += 16) {
    __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + k)));
    __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
  }
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
  s = _mm_cvtsi128_si32(t);
#endif
  for (; k < K; ++k) s += static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]);
  return s;
}

}  // namespace

void int8_gemv(const Int8GemvArgs& a) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRows) {
    switch (a.M - m0 >= kMaxRows ? kMaxRows : a.M - m0) {
      case 1: int8_block<1>(a, m0); break;
      case 2: int8_block<2>(a, m0); break;
      case 3: int8_block<3>(a, m0); break;
      case 4: int8_block<4>(a, m0); break;
      case 5: int8_block<5>(a, m0); break;
      case 6: int8_block<6>(a, m0); break;
      case 7: int8_block<7>(a, m0); break;
      default: int8_block<8>(a, m0); break;
    }
  }
}

void w8a8_gemm(const W8A8Args& a) {
  // blocks of 64 weight rows stay in L1/L2 while every x row passes over them
  const int64_t NB = 64;
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t n0 = 0; n0 < a.N; n0 += NB) {
    const int64_t n1 = n0 + NB < a.N ? n0 + NB : a.N;
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* xr = a.xq + m * a.K;
      for (int64_t n = n0; n < n1; ++n)
        a.y[m * a.N + n] = static_cast<float>(dot_i8(xr, a.q + n * a.K, a.K)) * a.xscale[m] * a.scale[n];
    }
  }
}

}  // namespace lf::cpu::LF_ISA
