// gemm.h — CPU float32 GEMM (csrc/cpu/gemm.cpp), one per ISA build: the matmuls of
// training (a linear layer's output, its input gradient and its weight gradient).
//
//   C (M x N, row stride ldc) = A (M x K) @ B (K x N)        accumulate = false
//   C += A @ B                                                accumulate = true
// A(i, k) = a[i * a_rs + k * a_cs], B(k, j) = b[k * b_rs + j * b_cs]: either operand may be
// stored transposed (one of its two strides is 1), so x @ w^T, dy @ w and dy^T @ x all run
// without a copy. Arithmetic is float32 with float32 accumulation (the FMA order differs
// from a BLAS, the result does not beyond rounding).
//
// Blocking (BLIS loop order jc -> pc -> ic -> jr -> ir, gemm_kernel.h's packing and
// 6 x 16 micro-kernel): k in balanced blocks of at most 1024, so C is written once when
// K <= 1024; the threads pack each KC x NC block of B together, then take blocks of C
// (with their own packed A panels) from a dynamic queue, two per thread, so a thread the OS
// deschedules on a busy machine does not hold up the rest.
// Which thread computes a tile never changes its value: results are deterministic.
#pragma once
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

struct GemmArgs {
  const float* a;
  int64_t a_rs, a_cs;
  const float* b;
  int64_t b_rs, b_cs;
  float* c;
  int64_t ldc;
  int64_t M, N, K;
  bool accumulate;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, sgemm, const lf::cpu::GemmArgs&)
