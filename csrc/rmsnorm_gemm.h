// rmsnorm_gemm.h — y = rmsnorm(x, g) @ w^T at the native boundary: argument checks,
// workspace, then the CPU kernel (csrc/cpu/rmsnorm_gemm.cpp) or, for CUDA tensors (float32,
// float16, bfloat16), kernels/rmsnorm_gemm.cu on `stream` (path is ignored there).
#pragma once
#include "tensor.h"

namespace lf {

// x: (M, K); norm_weight g: (K,); weight w: (N, K); y: (M, N) — one dtype, float32,
// bfloat16 or float64; rstd: (M,) float32 (float64 for float64), written.
// path: 0 automatic, 1 dot-product (small M) path, 2 packed GEMM path (tests, benchmarks).
void rmsnorm_gemm_fwd(const TensorView& x, const TensorView& g, const TensorView& w, const TensorView& y,
                      const TensorView& rstd, double eps, int threads, int path, intptr_t stream = 0);

// Backward GEMMs: da = grad_y @ w (M, K) and dw = grad_y^T @ (x * rstd * g) (N, K); either
// output may be null. rstd is the forward's. grad_x and grad_g follow from da with rmsnorm_bwd.
void rmsnorm_gemm_bwd(const TensorView& dy, const TensorView& x, const TensorView& g, const TensorView& w,
                      const TensorView& rstd, const TensorView* da, const TensorView* dw, int threads,
                      intptr_t stream = 0);

}  // namespace lf
