// rmsnorm.h — CPU RMSNorm kernels (csrc/cpu/rmsnorm.cpp), one per ISA build.
//
//   forward:  h = x (+ res)            (stored to h_out when res is given)
//             rstd = 1 / sqrt(mean(h^2) + eps)
//             y = h * rstd * w
//   backward: g = dy * w
//             dh = rstd * (g - h * rstd^2 * mean(g * h)) (+ dh_out)
//             dw = sum over rows of dy * h * rstd
// Rows are contiguous, length `hidden`. dtype is f32, bf16 or f64 for all of x,
// res, w, y, h_out, dy, dx, dw; rstd is f64 for f64 and f32 otherwise.
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

struct RmsNormFwdArgs {
  DType dtype;
  const void* x;
  const void* res;  // optional residual added to x before normalising
  const void* w;
  void* y;
  void* h_out;      // x + res, required when res is given
  void* rstd;
  int64_t rows, hidden;
  double eps;
  int threads;
  bool stream_y;    // non-temporal stores for y (large outputs)
};

struct RmsNormBwdArgs {
  DType dtype;
  const void* dy;
  const void* h;     // the normalised input (x, or x + res)
  const void* w;
  const void* rstd;
  const void* dh_out;  // optional gradient arriving at h_out (residual variant)
  void* dx;
  void* dw;
  void* workspace;   // threads * hidden accumulators (f64 for f64, else f32), zeroed
  int64_t rows, hidden;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, rmsnorm_fwd, const lf::cpu::RmsNormFwdArgs&)
LF_DECLARE_CPU_KERNEL(void, rmsnorm_bwd, const lf::cpu::RmsNormBwdArgs&)
