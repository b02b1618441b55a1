// attention_simd.h — vector primitives the attention kernels need beyond vec.h:
// a fast exp2 and a register-blocked FMA micro-kernel. Included only by
// csrc/cpu/attention.cpp (compiled once per ISA), so everything lives in
// namespace lf::cpu::LF_ISA.
//
//   vexp2(x)     2^x per lane: round-to-nearest split x = n + f, |f| <= 1/2, a degree-7
//                polynomial for 2^f (relative error ~1e-7, float rounding), then n added
//                to the exponent bits. x < -125 gives exactly 0 (so -inf gives 0); NaN stays NaN.
//   mk<MR>(...)  C[MR x 2N] (+)= sum_k a(r, k) * B[k][0:2N] with a(r, k) = A[r*sar + k*sak]
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {

// Taylor coefficients of 2^f = exp(f ln 2).
constexpr float kExp2C1 = 0.6931471805599453f, kExp2C2 = 0.2402265069591007f, kExp2C3 = 0.05550410866482158f,
                kExp2C4 = 0.009618129107628477f, kExp2C5 = 0.0013333558146428443f,
                kExp2C6 = 0.00015403530393381606f, kExp2C7 = 1.525273380405984e-05f;

// 2^f for |f| <= 1/2 (Horner).
inline V exp2_poly(V f) {
  V p = vfma(vset1(kExp2C7), f, vset1(kExp2C6));
  p = vfma(p, f, vset1(kExp2C5));
  p = vfma(p, f, vset1(kExp2C4));
  p = vfma(p, f, vset1(kExp2C3));
  p = vfma(p, f, vset1(kExp2C2));
  p = vfma(p, f, vset1(kExp2C1));
  return vfma(p, f, vset1(1.f));
}

#if defined(__AVX512F__)
inline V vexp2(V x) {
  V xc = _mm512_min_ps(_mm512_max_ps(x, vset1(-125.f)), vset1(127.f));
  V n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V f = _mm512_sub_ps(xc, n);
  V p = exp2_poly(f);
  __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  V r = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
  __mmask16 tiny = _mm512_cmp_ps_mask(x, vset1(-125.f), _CMP_LT_OQ);
  r = _mm512_mask_blend_ps(tiny, r, _mm512_setzero_ps());
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(nan, r, x);
}
#elif defined(__AVX2__)
inline V vexp2(V x) {
  V xc = _mm256_min_ps(_mm256_max_ps(x, vset1(-125.f)), vset1(127.f));
  V n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V f = _mm256_sub_ps(xc, n);
  V p = exp2_poly(f);
  __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  V r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  r = _mm256_andnot_ps(_mm256_cmp_ps(x, vset1(-125.f), _CMP_LT_OQ), r);
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
#else
inline V vexp2(V x) { return x < -125.f ? 0.f : std::exp2(x); }
#endif

// Register tile: MR rows x 2 vectors. With AVX2 (16 registers) MR = 6 uses 12
// accumulators, 2 loads of B and one broadcast.
constexpr int kMR = 6;
constexpr int kNR = 2 * N;

template <int MR, bool ACC>
inline void mk(int64_t K, const float* A, int64_t sar, int64_t sak, const float* B, int64_t ldb, float* C,
               int64_t ldc) {
  V c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) {
    c0[r] = ACC ? vload(C + r * ldc) : vzero();
    c1[r] = ACC ? vload(C + r * ldc + N) : vzero();
  }
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = vload(B + k * ldb), b1 = vload(B + k * ldb + N);
    const float* a = A + k * sak;
    for (int r = 0; r < MR; ++r) {
      const V ar = vset1(a[r * sar]);
      c0[r] = vfma(ar, b0, c0[r]);
      c1[r] = vfma(ar, b1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    vstore(C + r * ldc, c0[r]);
    vstore(C + r * ldc + N, c1[r]);
  }
}

// C[M x ncols] (+)= sum_k a(i, k) * B(k, 0:ncols), ncols a multiple of kNR. B is read as
// panels of kNR columns: panel p starts at B + p * bps and its row k at + k * ldb. A row-major
// B has ldb = its row stride and bps = kNR; a packed one (pack_panels_*) ldb = kNR, bps = K * kNR.
template <bool ACC>
inline void gemm_t(int64_t M, int64_t ncols, int64_t K, const float* A, int64_t sar, int64_t sak, const float* B,
                   int64_t ldb, int64_t bps, float* C, int64_t ldc) {
  for (int64_t j = 0; j < ncols; j += kNR) {
    const float* b = B + (j / kNR) * bps;
    int64_t i = 0;
    for (; i + kMR <= M; i += kMR) mk<kMR, ACC>(K, A + i * sar, sar, sak, b, ldb, C + i * ldc + j, ldc);
    const float* a = A + i * sar;
    float* c = C + i * ldc + j;
    switch (M - i) {
      case 5: mk<5, ACC>(K, a, sar, sak, b, ldb, c, ldc); break;
      case 4: mk<4, ACC>(K, a, sar, sak, b, ldb, c, ldc); break;
      case 3: mk<3, ACC>(K, a, sar, sak, b, ldb, c, ldc); break;
      case 2: mk<2, ACC>(K, a, sar, sak, b, ldb, c, ldc); break;
      case 1: mk<1, ACC>(K, a, sar, sak, b, ldb, c, ldc); break;
      default: break;
    }
  }
}

inline void gemm(int64_t M, int64_t ncols, int64_t K, const float* A, int64_t sar, int64_t sak, const float* B,
                 int64_t ldb, int64_t bps, float* C, int64_t ldc, bool accumulate) {
  if (accumulate) gemm_t<true>(M, ncols, K, A, sar, sak, B, ldb, bps, C, ldc);
  else gemm_t<false>(M, ncols, K, A, sar, sak, B, ldb, bps, C, ldc);
}

}  // namespace lf::cpu::LF_ISA
