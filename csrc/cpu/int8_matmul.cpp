// int8_matmul.cpp — weight-only int8 GEMV/skinny GEMM and W8A8 GEMM (see int8_matmul.h).
#include "cpu/int8_matmul.h"

#include <omp.h>

#include <type_traits>

#include "cpu/gemv_rows.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {


// N int8 weights widened to one float vector of this ISA build
inline V load_i8_as_float(const int8_t* p) {
#if defined(__AVX512F__)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  return static_cast<float>(*p);
#endif
}

// y[m0 + r, n0 + b] = scale[n0 + b] * (x[m0 + r] . q[n0 + b]) for R rows of x and NB rows of W:
// each x vector loaded serves the NB weight rows; A independent accumulators per pair hide the
// FMA latency when R * NB is small. 32 weights a step, the rest of K one at a time.
template <int R, int NB>
void int8_rows(const Int8GemvArgs& a, int64_t m0, int64_t n0) {
  constexpr int NW = 32 / N, RB = R * NB, A = RB <= 2 ? 4 : RB <= 4 ? 2 : 1;
  const int64_t K = a.K;
  const int8_t* w[NB];
  for (int b = 0; b < NB; ++b) w[b] = a.q + (n0 + b) * K;
  V acc[NB][R][A];
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < A; ++i) acc[b][r][i] = vzero();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    V wf[NB][NW];
    for (int b = 0; b < NB; ++b)
      for (int j = 0; j < NW; ++j) wf[b][j] = load_i8_as_float(w[b] + k + N * j);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < NW; ++j) {
        const V xv = vload(a.x + (m0 + r) * K + k + N * j);
        for (int b = 0; b < NB; ++b) acc[b][r][j % A] = vfma(wf[b][j], xv, acc[b][r][j % A]);
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    for (int r = 0; r < R; ++r) {
      V t = acc[b][r][0];
      for (int i = 1; i < A; ++i) t = vadd(t, acc[b][r][i]);
      float s = vsum(t);
      for (int64_t kk = k; kk < K; ++kk) s += static_cast<float>(w[b][kk]) * a.x[(m0 + r) * K + kk];
      a.y[(m0 + r) * a.N + n0 + b] = s * a.scale[n0 + b];
    }
  }
}

// W8A8: exact int32 dot products of int8 rows, MR rows of x against NR rows of W at a time, one
// vector accumulator per pair: per step KB int8 of each row are sign-extended to int16 once and
// multiplied pairwise into int32 lanes (madd_epi16: exact, no saturation), so each loaded row
// serves MR or NR products. Reduced across lanes once per pair at the end.
#if defined(__AVX512F__)
using VI = __m512i;
constexpr int KB = 32, MR = 4, NR = 4;  // 16 accumulators of the 32 zmm
inline VI load_i16(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline VI madd_add(VI a, VI b, VI acc) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
inline VI izero() { return _mm512_setzero_si512(); }
inline int32_t isum(VI v) { return _mm512_reduce_add_epi32(v); }
#elif defined(__AVX2__)
using VI = __m256i;
constexpr int KB = 16, MR = 3, NR = 3;  // 9 accumulators + 6 rows of the 16 ymm
inline VI load_i16(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline VI madd_add(VI a, VI b, VI acc) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
inline VI izero() { return _mm256_setzero_si256(); }
inline int32_t isum(VI v) {
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
  return _mm_cvtsi128_si32(t);
}
#else
using VI = int32_t;
constexpr int KB = 1, MR = 1, NR = 1;
inline VI load_i16(const int8_t* p) { return *p; }
inline VI madd_add(VI a, VI b, VI acc) { return acc + a * b; }
inline VI izero() { return 0; }
inline int32_t isum(VI v) { return v; }
#endif

// y[m0 + i, n0 + j] for i < R, j < C (R <= MR, C <= NR)
template <int R, int C>
void w8a8_tile(const W8A8Args& a, int64_t m0, int64_t n0) {
  const int64_t K = a.K;
  const int8_t* x[R];
  const int8_t* w[C];
  for (int i = 0; i < R; ++i) x[i] = a.xq + (m0 + i) * K;
  for (int j = 0; j < C; ++j) w[j] = a.q + (n0 + j) * K;
  VI acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = izero();
  int64_t k = 0;
  for (; k + KB <= K; k += KB) {
    VI xv[R], wv[C];
    for (int i = 0; i < R; ++i) xv[i] = load_i16(x[i] + k);
    for (int j = 0; j < C; ++j) wv[j] = load_i16(w[j] + k);
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc[i][j] = madd_add(xv[i], wv[j], acc[i][j]);
  }
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < C; ++j) {
      int32_t s = isum(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk) s += static_cast<int32_t>(x[i][kk]) * static_cast<int32_t>(w[j][kk]);
      a.y[(m0 + i) * a.N + n0 + j] = static_cast<float>(s) * a.xscale[m0 + i] * a.scale[n0 + j];
    }
  }
}

#if defined(__AVX512F__)
// The same tiles with AVX512-VNNI (a run-time extra, isa.h): vpdpbusd multiplies 64 unsigned by
// 64 signed bytes into 16 int32 lanes in one instruction. x's int8 codes become unsigned by
// adding 128 (x ^ 0x80), and 128 * sum(w) is taken off again (wsum: each weight row's sum over
// the 64-wide part of K). Exact while K * 255 * 128 < 2^31 (K < 65536; the caller checks).
constexpr int64_t kVnniMaxK = 65536;

__attribute__((target("avx512vnni"))) void vnni_row_sums(const int8_t* w, int64_t rows, int64_t K, int32_t* wsum) {
  const int64_t kv = K - K % 64;
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = 0; k < kv; k += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(w + r * K + k));
    wsum[r] = _mm512_reduce_add_epi32(acc);
  }
}

template <int R, int C>
__attribute__((target("avx512vnni"))) void w8a8_tile_vnni(const W8A8Args& a, int64_t m0, int64_t n0,
                                                          const int32_t* wsum) {
  const int64_t K = a.K, kv = K - K % 64;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* x[R];
  const int8_t* w[C];
  for (int i = 0; i < R; ++i) x[i] = a.xq + (m0 + i) * K;
  for (int j = 0; j < C; ++j) w[j] = a.q + (n0 + j) * K;
  __m512i acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kv; k += 64) {
    __m512i xv[R], wv[C];
    for (int i = 0; i < R; ++i) xv[i] = _mm512_xor_si512(_mm512_loadu_si512(x[i] + k), flip);
    for (int j = 0; j < C; ++j) wv[j] = _mm512_loadu_si512(w[j] + k);
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv[i], wv[j]);
  }
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < C; ++j) {
      int32_t s = _mm512_reduce_add_epi32(acc[i][j]) - 128 * wsum[j];
      for (int64_t kk = kv; kk < K; ++kk) s += static_cast<int32_t>(x[i][kk]) * static_cast<int32_t>(w[j][kk]);
      a.y[(m0 + i) * a.N + n0 + j] = static_cast<float>(s) * a.xscale[m0 + i] * a.scale[n0 + j];
    }
  }
}
#endif

// Weight rows [n0, n1) against every x row: full MR x NR tiles, edge tiles one pair at a time.
// tile(std::integral_constant R, C, m, n) computes y[m.., n..].
template <class Tile>
void w8a8_block(const W8A8Args& a, int64_t n0, int64_t n1, Tile tile) {
  using full_r = std::integral_constant<int, MR>;
  using full_c = std::integral_constant<int, NR>;
  using one = std::integral_constant<int, 1>;
  for (int64_t m = 0; m < a.M; m += MR) {
    const bool full_m = m + MR <= a.M;
    for (int64_t n = n0; n < n1; n += NR) {
      if (full_m && n + NR <= n1) {
        tile(full_r{}, full_c{}, m, n);
        continue;
      }
      for (int64_t i = m; i < m + MR && i < a.M; ++i)
        for (int64_t j = n; j < n + NR && j < n1; ++j) tile(one{}, one{}, i, j);
    }
  }
}

struct Int8Rows {
  template <int R, int NB>
  static void run(const Int8GemvArgs& a, int64_t m0, int64_t n0) { int8_rows<R, NB>(a, m0, n0); }
};

}  // namespace

void int8_gemv(const Int8GemvArgs& a) { gemv_all_rows<Int8Rows>(a); }

void w8a8_gemm(const W8A8Args& a) {
  // blocks of 64 weight rows stay in L1/L2 while every x row passes over them
  const int64_t NBLK = 64;
#if defined(__AVX512F__)
  const bool vnni = use_vnni() && a.K < kVnniMaxK;
#endif
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t n0 = 0; n0 < a.N; n0 += NBLK) {
    const int64_t n1 = n0 + NBLK < a.N ? n0 + NBLK : a.N;
#if defined(__AVX512F__)
    if (vnni) {
      int32_t wsum[NBLK];
      vnni_row_sums(a.q + n0 * a.K, n1 - n0, a.K, wsum);
      w8a8_block(a, n0, n1, [&](auto r, auto c, int64_t m, int64_t n) {
        w8a8_tile_vnni<decltype(r)::value, decltype(c)::value>(a, m, n, wsum + (n - n0));
      });
      continue;
    }
#endif
    w8a8_block(a, n0, n1, [&](auto r, auto c, int64_t m, int64_t n) {
      w8a8_tile<decltype(r)::value, decltype(c)::value>(a, m, n);
    });
  }
}

}  // namespace lf::cpu::LF_ISA
