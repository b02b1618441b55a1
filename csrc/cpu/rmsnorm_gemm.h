// rmsnorm_gemm.h — CPU RMSNorm fused into a GEMM's prologue (csrc/cpu/rmsnorm_gemm.cpp).
//
//   rstd[m] = 1 / sqrt(mean_k x[m,k]^2 + eps)                     (first, cheap pass)
//   y[m,n]  = sum_k (x[m,k] * rstd[m] * g[k]) * w[n,k]           (y = rmsnorm(x) @ w^T)
// The normalised activations are produced only inside the GEMM's packed A panels
// (MC x KC per thread, L2-resident) and are never written out as an (M, K) tensor.
// x: (M, K), g: (K,), w: (N, K) (nn.Linear layout), y: (M, N), all one dtype (f32, bf16,
// f64); rstd: (M,) f32 (f64 for f64). Accumulation is f32 (f64 for f64).
//
// Backward GEMMs (the same packed GEMM, other operand layouts):
//   da = dy @ w                      (M, K): the gradient at the norm's output
//   dw = dy^T @ (x * rstd * g)       (N, K): the normalised x again only in packed panels
// grad_x and grad_g follow from da with the RMSNorm backward (csrc/cpu/rmsnorm.cpp).
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

struct RmsNormGemmArgs {
  DType dtype;
  const void* x;
  const void* g;
  const void* w;
  void* y;
  void* rstd;
  int64_t M, N, K;
  double eps;
  int threads;
  int path;          // 0 auto, 1 dot-product (small M) path, 2 packed (BLIS-style) path
  float* workspace;  // rmsnorm_gemm_workspace_floats(...) floats, 64-byte aligned
};

struct RmsNormGemmBwdArgs {
  DType dtype;
  const void* dy;  // (M, N)
  const void* x;
  const void* g;
  const void* w;
  const void* rstd;
  void* da;        // optional (M, K)
  void* dw;        // optional (N, K)
  int64_t M, N, K;
  int threads;
  float* workspace;
};

// Which path runs and how many floats of workspace it needs; block sizes differ per
// ISA build, so the adapter asks the build that will run.
struct RmsNormGemmPlan {
  int path;
  int64_t floats;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, rmsnorm_gemm_plan, const lf::cpu::RmsNormGemmArgs&, lf::cpu::RmsNormGemmPlan*)
LF_DECLARE_CPU_KERNEL(void, rmsnorm_gemm_fwd, const lf::cpu::RmsNormGemmArgs&)
LF_DECLARE_CPU_KERNEL(int64_t, rmsnorm_gemm_bwd_workspace, const lf::cpu::RmsNormGemmBwdArgs&)
LF_DECLARE_CPU_KERNEL(void, rmsnorm_gemm_bwd, const lf::cpu::RmsNormGemmBwdArgs&)
