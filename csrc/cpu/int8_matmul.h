// int8_matmul.h — int8 matmuls on the CPU.
//
// Weight-only: y = x @ (q * scale[:, None])^T, q int8 (N, K), scale float32 (N,) per output
//   channel (absmax / 127). Each weight is widened to float in registers.
// W8A8: y = (xq @ q^T) * xscale[:, None] * scale[None, :], xq int8 (M, K) with per-token
//   scales xscale float32 (M,); int8 x int8 products accumulate exactly in int32
//   (sign-extended to int16 and multiplied pairwise with _mm256_madd_epi16 on AVX2).
#pragma once
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

struct Int8GemvArgs {
  const float* x;       // (M, K)
  const int8_t* q;      // (N, K)
  const float* scale;   // (N,)
  float* y;             // (M, N)
  int64_t M, N, K;
  int threads;
};

struct W8A8Args {
  const int8_t* xq;     // (M, K)
  const float* xscale;  // (M,)
  const int8_t* q;      // (N, K)
  const float* scale;   // (N,)
  float* y;             // (M, N)
  int64_t M, N, K;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, int8_gemv, const lf::cpu::Int8GemvArgs&)
LF_DECLARE_CPU_KERNEL(void, w8a8_gemm, const lf::cpu::W8A8Args&)
