// rmsnorm_gemm.cpp — argument checks, workspace and dispatch for RMSNorm+GEMM (see rmsnorm_gemm.h).
#include "rmsnorm_gemm.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "cpu/rmsnorm_gemm.h"
#include "device.h"
#include "isa.h"
#include "rmsnorm.h"
#ifdef LLMFORGE_WITH_CUDA
#include "rmsnorm_gemm.cuh"
#endif

namespace lf {
namespace {

// x (M, K), g (K,), w (N, K): the checks forward and backward share; returns N.
int64_t check_operands(const char* op, const TensorView& x, const TensorView& g, const TensorView& w) {
  check_supported_device(op, "x", x);
  if (x.device == DeviceKind::cuda)
    check_dtype(op, "x", x, {DType::f32, DType::f16, DType::bf16});
  else
    check_dtype(op, "x", x, {DType::f32, DType::bf16, DType::f64});
  check_ndim(op, "x", x, 2);
  check_contiguous(op, "x", x);
  const int64_t K = x.shape[1];
  LF_CHECK(K > 0, op, ": the hidden size (last dimension of x) must be positive, got shape ", x.shape_str());
  check_same_device(op, "norm_weight", g, x, "x");
  check_same_dtype(op, "norm_weight", g, x, "x");
  check_shape(op, "norm_weight", g, {K});
  check_contiguous(op, "norm_weight", g);
  check_same_device(op, "weight", w, x, "x");
  check_same_dtype(op, "weight", w, x, "x");
  check_ndim(op, "weight", w, 2);
  LF_CHECK(w.shape[1] == K, op, ": weight must have shape (out_features, ", K, "), got ", w.shape_str());
  LF_CHECK(w.shape[0] > 0, op, ": weight has no output features, shape ", w.shape_str());
  check_contiguous(op, "weight", w);
  if (x.device == DeviceKind::cuda) {  // 64-row tiles on a grid dimension capped at 65535 blocks
    constexpr int64_t kMax = int64_t{65535} * 64;
    LF_CHECK(x.shape[0] <= kMax && w.shape[0] <= kMax && K <= kMax, op, ": CUDA sizes are limited to ", kMax,
             " rows, features and hidden size; got x ", x.shape_str(), ", weight ", w.shape_str());
  }
  return w.shape[0];
}

void check_out(const char* op, const char* arg, const TensorView& t, const TensorView& x,
               std::initializer_list<int64_t> shape) {
  check_same_device(op, arg, t, x, "x");
  check_same_dtype(op, arg, t, x, "x");
  check_shape(op, arg, t, shape);
  check_contiguous(op, arg, t);
}

float* aligned(std::unique_ptr<float[]>& owner, int64_t floats) {
  if (floats <= 0) return nullptr;
  owner.reset(new float[floats + 16]);  // uninitialised: every float is written before it is read
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(owner.get()) + 63) & ~uintptr_t{63});
}

}  // namespace

void rmsnorm_gemm_fwd(const TensorView& x, const TensorView& g, const TensorView& w, const TensorView& y,
                      const TensorView& rstd, double eps, int threads, int path, intptr_t stream) {
  const char* op = "rmsnorm_linear";
  const int64_t N = check_operands(op, x, g, w);
  const int64_t M = x.shape[0], K = x.shape[1];
  check_out(op, "y", y, x, {M, N});
  check_rstd(op, rstd, x);
  LF_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  LF_CHECK(path >= 0 && path <= 2, op, ": path must be 0, 1 or 2, got ", path);
  check_threads(op, threads);
  if (M == 0) return;
  if (x.device == DeviceKind::cuda) {
#ifdef LLMFORGE_WITH_CUDA
    const char* err = cuda::rmsnorm_gemm_fwd(cuda_dtype_code(x.dtype), x.data, g.data, w.data, y.data,
                                             rstd.ptr<float>(), M, N, K, static_cast<float>(eps),
                                             reinterpret_cast<void*>(stream));
    LF_CHECK(err == nullptr, op, ": CUDA error: ", err);
#endif
    return;
  }

  cpu::RmsNormGemmArgs a{x.dtype, x.data, g.data, w.data, y.data, rstd.data, M, N, K, eps, threads, path, nullptr};
  cpu::RmsNormGemmPlan plan{0, 0};
  switch (current_isa()) {
    case Isa::avx512: cpu::avx512::rmsnorm_gemm_plan(a, &plan); break;
    case Isa::avx2: cpu::avx2::rmsnorm_gemm_plan(a, &plan); break;
    default: cpu::scalar::rmsnorm_gemm_plan(a, &plan); break;
  }
  std::unique_ptr<float[]> ws;
  a.workspace = aligned(ws, plan.floats);
  LF_CPU_DISPATCH(rmsnorm_gemm_fwd, a);
}

void rmsnorm_gemm_bwd(const TensorView& dy, const TensorView& x, const TensorView& g, const TensorView& w,
                      const TensorView& rstd, const TensorView* da, const TensorView* dw, int threads,
                      intptr_t stream) {
  const char* op = "rmsnorm_linear_backward";
  const int64_t N = check_operands(op, x, g, w);
  const int64_t M = x.shape[0], K = x.shape[1];
  check_out(op, "grad_y", dy, x, {M, N});
  check_rstd(op, rstd, x);
  if (da) check_out(op, "grad_a", *da, x, {M, K});
  if (dw) check_out(op, "grad_weight", *dw, x, {N, K});
  check_threads(op, threads);
  if (x.device == DeviceKind::cuda) {
#ifdef LLMFORGE_WITH_CUDA
    const char* err = cuda::rmsnorm_gemm_bwd(cuda_dtype_code(x.dtype), dy.data, x.data, g.data, w.data,
                                             rstd.ptr<float>(), da ? da->data : nullptr, dw ? dw->data : nullptr,
                                             M, N, K, reinterpret_cast<void*>(stream));
    LF_CHECK(err == nullptr, op, ": CUDA error: ", err);
#endif
    return;
  }
  if (M == 0) {  // no rows: dw is all zeros, da is empty
    if (dw) std::memset(dw->data, 0, static_cast<size_t>(N * K * dtype_size(x.dtype)));
    return;
  }
  cpu::RmsNormGemmBwdArgs a{x.dtype, dy.data, x.data, g.data, w.data, rstd.data, da ? da->data : nullptr,
                            dw ? dw->data : nullptr, M, N, K, threads, nullptr};
  int64_t floats = 0;
  switch (current_isa()) {
    case Isa::avx512: floats = cpu::avx512::rmsnorm_gemm_bwd_workspace(a); break;
    case Isa::avx2: floats = cpu::avx2::rmsnorm_gemm_bwd_workspace(a); break;
    default: floats = cpu::scalar::rmsnorm_gemm_bwd_workspace(a); break;
  }
  std::unique_ptr<float[]> ws;
  a.workspace = aligned(ws, floats);
  LF_CPU_DISPATCH(rmsnorm_gemm_bwd, a);
}

}  // namespace lf
