// int4_matmul.h — weight-only int4 matmul on the CPU: y = x @ dequant(W)^T (+ bias).
//
// Packed layout (shared with python/llmforge/ops/int4_matmul.py, the source of truth):
//   W is (N, K) like nn.Linear.weight, K a multiple of 32 and of the group size G (32, 64 or 128).
//   packed: uint8 (N, K/2). Each run of 32 weights k0..k0+31 of a row occupies 16 bytes;
//           byte i holds weight k0+i in its low nibble and weight k0+16+i in its high nibble.
//   scales: float32 (N, K/G); zeros: float32 (N, K/G) (integer-valued zero points; 8 for symmetric).
//   dequant(W)[n, k] = (q[n, k] - zeros[n, k/G]) * scales[n, k/G], q in [0, 15].
// Kernel: for each output row and group, s * (sum_k q_k x_k - z * sum_k x_k); the nibbles are
// unpacked to floats in registers and the per-group sums of x are computed once per call.
#pragma once
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

struct Int4GemvArgs {
  const float* x;        // (M, K) float32 (callers convert bf16 first)
  const uint8_t* packed;  // (N, K/2)
  const float* scales;   // (N, K/G)
  const float* zeros;    // (N, K/G)
  const float* xsum;     // (M, K/G) per-group sums of x
  float* y;              // (M, N)
  int64_t M, N, K, G;
  int threads;
};

struct Int4DequantArgs {
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  float* w;              // (rows, K) for rows [row0, row0 + rows)
  int64_t row0, rows, K, G;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, int4_gemv, const lf::cpu::Int4GemvArgs&)
LF_DECLARE_CPU_KERNEL(void, int4_dequant, const lf::cpu::Int4DequantArgs&)
