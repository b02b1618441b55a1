// int8_matmul.cpp — weight-only int8 GEMV/skinny GEMM and W8A8 GEMM (see int8_matmul.h).
#include "cpu/int8_matmul.h"

#include <omp.h>

#include "cpu/gemv_rows.h"
#include "cpu/vec.h"
#include "cpu/vnni.h"

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
// vector accumulator per pair, reduced across lanes once per pair at the end. A Step says how
// KB bytes of a row are loaded and multiplied:
//   MaddStep: sign-extended to int16 once and multiplied pairwise into int32 lanes (madd_epi16:
//     exact, no saturation), so each loaded row serves MR or NR products;
//   VnniStep (AVX-512 with AVX512-VNNI at run time, vnni.h): vpdpbusd multiplies 64 unsigned by
//     64 signed bytes into 16 int32 lanes. x's codes become unsigned by adding 128 (x ^ 0x80);
//     the tile's caller takes 128 * sum(w) off again (bias). Exact while K * 255 * 128 < 2^31.
#if defined(__AVX512F__)
constexpr int MR = 4, NR = 4;  // 16 accumulators of the 32 zmm
struct MaddStep {
  using VI = __m512i;
  static constexpr int KB = 32;
  static VI load_x(const int8_t* p) { return load_w(p); }
  static VI load_w(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static VI mul_add(VI x, VI w, VI acc) { return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w)); }
  static VI zero() { return _mm512_setzero_si512(); }
  static int32_t sum(VI v) { return _mm512_reduce_add_epi32(v); }
};
struct VnniStep : MaddStep {
  static constexpr int KB = 64;
  static constexpr int64_t kMaxK = 65536;
  static VI load_x(const int8_t* p) { return _mm512_xor_si512(load_w(p), _mm512_set1_epi8(static_cast<char>(0x80))); }
  static VI load_w(const int8_t* p) { return _mm512_loadu_si512(p); }
  static VI mul_add(VI x, VI w, VI acc) { return dpbusd(acc, x, w); }
};

// bias[r] = -128 * (sum of weight row r over the part of K the VnniStep tiles cover)
void vnni_bias(const int8_t* w, int64_t rows, int64_t K, int32_t* bias) {
  const int64_t kv = K - K % VnniStep::KB;
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = 0; k < kv; k += VnniStep::KB) acc = dpbusd(acc, ones, VnniStep::load_w(w + r * K + k));
    bias[r] = -128 * _mm512_reduce_add_epi32(acc);
  }
}
#elif defined(__AVX2__)
constexpr int MR = 3, NR = 3;  // 9 accumulators + 6 rows of the 16 ymm
struct MaddStep {
  using VI = __m256i;
  static constexpr int KB = 16;
  static VI load_x(const int8_t* p) { return load_w(p); }
  static VI load_w(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static VI mul_add(VI x, VI w, VI acc) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)); }
  static VI zero() { return _mm256_setzero_si256(); }
  static int32_t sum(VI v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
  }
};
#else
constexpr int MR = 1, NR = 1;
struct MaddStep {
  using VI = int32_t;
  static constexpr int KB = 1;
  static VI load_x(const int8_t* p) { return *p; }
  static VI load_w(const int8_t* p) { return *p; }
  static VI mul_add(VI x, VI w, VI acc) { return acc + x * w; }
  static VI zero() { return 0; }
  static int32_t sum(VI v) { return v; }
};
#endif

// y[m0 + i, n0 + j] for i < R, j < C (R <= MR, C <= NR); bias[j] (or none) is added to the int32
// sum of pair (i, j) before the K tail
template <class Step, int R, int C>
void w8a8_tile(const W8A8Args& a, int64_t m0, int64_t n0, const int32_t* bias) {
  using VI = typename Step::VI;
  const int64_t K = a.K;
  const int8_t* x[R];
  const int8_t* w[C];
  for (int i = 0; i < R; ++i) x[i] = a.xq + (m0 + i) * K;
  for (int j = 0; j < C; ++j) w[j] = a.q + (n0 + j) * K;
  VI acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = Step::zero();
  int64_t k = 0;
  for (; k + Step::KB <= K; k += Step::KB) {
    VI xv[R], wv[C];
    for (int i = 0; i < R; ++i) xv[i] = Step::load_x(x[i] + k);
    for (int j = 0; j < C; ++j) wv[j] = Step::load_w(w[j] + k);
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc[i][j] = Step::mul_add(xv[i], wv[j], acc[i][j]);
  }
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < C; ++j) {
      int32_t s = Step::sum(acc[i][j]) + (bias ? bias[j] : 0);
      for (int64_t kk = k; kk < K; ++kk) s += static_cast<int32_t>(x[i][kk]) * static_cast<int32_t>(w[j][kk]);
      a.y[(m0 + i) * a.N + n0 + j] = static_cast<float>(s) * a.xscale[m0 + i] * a.scale[n0 + j];
    }
  }
}

// Weight rows [n0, n1) against every x row: full MR x NR tiles, edge tiles one pair at a time.
template <class Step>
void w8a8_block(const W8A8Args& a, int64_t n0, int64_t n1, const int32_t* bias) {
  for (int64_t m = 0; m < a.M; m += MR) {
    const bool full_m = m + MR <= a.M;
    for (int64_t n = n0; n < n1; n += NR) {
      auto bias_at = [&](int64_t j) { return bias ? bias + (j - n0) : nullptr; };
      if (full_m && n + NR <= n1) {
        w8a8_tile<Step, MR, NR>(a, m, n, bias_at(n));
        continue;
      }
      for (int64_t i = m; i < m + MR && i < a.M; ++i)
        for (int64_t j = n; j < n + NR && j < n1; ++j) w8a8_tile<Step, 1, 1>(a, i, j, bias_at(j));
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
  constexpr int64_t NBLK = 64;
#if defined(__AVX512F__)
  const bool vnni = use_vnni() && a.K < VnniStep::kMaxK;
#endif
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t n0 = 0; n0 < a.N; n0 += NBLK) {
    const int64_t n1 = n0 + NBLK < a.N ? n0 + NBLK : a.N;
#if defined(__AVX512F__)
    if (vnni) {
      int32_t bias[NBLK];
      vnni_bias(a.q + n0 * a.K, n1 - n0, a.K, bias);
      w8a8_block<VnniStep>(a, n0, n1, bias);
      continue;
    }
#endif
    w8a8_block<MaddStep>(a, n0, n1, nullptr);
  }
}

}  // namespace lf::cpu::LF_ISA
