// swiglu.h — CPU SwiGLU kernels (csrc/cpu/swiglu.cpp), one per ISA build.
//
//   forward:  y = silu(g) * u,  silu(g) = g * sigmoid(g)
//   backward: du = dy * silu(g)
//             dg = dy * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
// Operands are (rows, cols) matrices with their own row strides (in elements), so a
// packed (rows, 2 * cols) tensor is passed as g = x, u = x + cols, stride 2 * cols.
// dtype is f32, bf16 or f64 for every operand; arithmetic is f32 (f64 for f64).
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

struct SwigluArgs {
  DType dtype;
  const void* g;
  const void* u;
  const void* dy;  // backward only
  void* y;         // forward only
  void* dg;        // backward only
  void* du;        // backward only
  int64_t g_stride, u_stride, dy_stride, y_stride, dg_stride, du_stride;
  int64_t rows, cols;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, swiglu_fwd, const lf::cpu::SwigluArgs&)
LF_DECLARE_CPU_KERNEL(void, swiglu_bwd, const lf::cpu::SwigluArgs&)
