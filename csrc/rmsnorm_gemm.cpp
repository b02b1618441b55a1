// rmsnorm_gemm.cpp — argument checks, workspace and dispatch for RMSNorm+GEMM (see rmsnorm_gemm.h).
#include "rmsnorm_gemm.h"

#include <cmath>
#include <cstdint>
#include <memory>

#include "cpu/rmsnorm_gemm.h"
#include "device.h"
#include "isa.h"

namespace lf {

void rmsnorm_gemm_fwd(const TensorView& x, const TensorView& g, const TensorView& w, const TensorView& y,
                      const TensorView& rstd, double eps, int threads, int path) {
  const char* op = "rmsnorm_linear";
  check_cpu(op, "x", x);
  check_dtype(op, "x", x, {DType::f32, DType::bf16, DType::f64});
  check_ndim(op, "x", x, 2);
  check_contiguous(op, "x", x);
  const int64_t M = x.shape[0], K = x.shape[1];
  LF_CHECK(K > 0, op, ": the hidden size (last dimension of x) must be positive, got shape ", x.shape_str());
  check_same_device(op, "norm_weight", g, x, "x");
  check_same_dtype(op, "norm_weight", g, x, "x");
  check_shape(op, "norm_weight", g, {K});
  check_contiguous(op, "norm_weight", g);
  check_same_device(op, "weight", w, x, "x");
  check_same_dtype(op, "weight", w, x, "x");
  check_ndim(op, "weight", w, 2);
  LF_CHECK(w.shape[1] == K, op, ": weight must have shape (out_features, ", K, "), got ", w.shape_str());
  const int64_t N = w.shape[0];
  LF_CHECK(N > 0, op, ": weight has no output features, shape ", w.shape_str());
  check_contiguous(op, "weight", w);
  check_same_device(op, "y", y, x, "x");
  check_same_dtype(op, "y", y, x, "x");
  check_shape(op, "y", y, {M, N});
  check_contiguous(op, "y", y);
  check_same_device(op, "rstd", rstd, x, "x");
  check_dtype(op, "rstd", rstd, {x.dtype == DType::f64 ? DType::f64 : DType::f32});
  check_shape(op, "rstd", rstd, {M});
  check_contiguous(op, "rstd", rstd);
  LF_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  LF_CHECK(path >= 0 && path <= 2, op, ": path must be 0, 1 or 2, got ", path);
  check_threads(op, threads);
  if (M == 0) return;

  cpu::RmsNormGemmArgs a{x.dtype, x.data, g.data, w.data, y.data, rstd.data, M, N, K, eps, threads, path, nullptr};
  cpu::RmsNormGemmPlan plan{0, 0};
  switch (current_isa()) {
    case Isa::avx512: cpu::avx512::rmsnorm_gemm_plan(a, &plan); break;
    case Isa::avx2: cpu::avx2::rmsnorm_gemm_plan(a, &plan); break;
    default: cpu::scalar::rmsnorm_gemm_plan(a, &plan); break;
  }
  std::unique_ptr<float[]> ws;
  if (plan.floats > 0) {
    ws.reset(new float[plan.floats + 16]);  // uninitialised: every float is written before it is read
    a.workspace = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ws.get()) + 63) & ~uintptr_t{63});
  }
  LF_CPU_DISPATCH(rmsnorm_gemm_fwd, a);
}

}  // namespace lf
