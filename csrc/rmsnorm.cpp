// rmsnorm.cpp — argument checks and dispatch for RMSNorm (see rmsnorm.h).
#include "rmsnorm.h"

#include <cmath>
#include <vector>

#include "cpu/rmsnorm.h"
#include "device.h"
#include "isa.h"
#ifdef LLMFORGE_WITH_CUDA
#include "rmsnorm.cuh"
#endif

namespace lf {
namespace {

constexpr const char* kFwd = "rmsnorm";
constexpr const char* kBwd = "rmsnorm_backward";

void check_rows_tensor(const char* op, const char* arg, const TensorView& t, const TensorView& x) {
  check_same_device(op, arg, t, x, "x");
  check_same_dtype(op, arg, t, x, "x");
  check_shape(op, arg, t, {x.shape[0], x.shape[1]});
  check_contiguous(op, arg, t);
}

void check_x(const char* op, const char* arg, const TensorView& x) {
  check_supported_device(op, arg, x);
  if (x.device == DeviceKind::cpu)
    check_dtype(op, arg, x, {DType::f32, DType::bf16, DType::f64});
  else
    check_dtype(op, arg, x, {DType::f32, DType::f16, DType::bf16});
  check_ndim(op, arg, x, 2);
  LF_CHECK(x.shape[1] > 0, op, ": the hidden size (last dimension of ", arg, ") must be positive, got shape ",
           x.shape_str());
  check_contiguous(op, arg, x);
}

void check_weight(const char* op, const char* arg, const TensorView& w, const TensorView& x) {
  check_same_device(op, arg, w, x, "x");
  check_same_dtype(op, arg, w, x, "x");
  check_shape(op, arg, w, {x.shape[1]});
  check_contiguous(op, arg, w);
}

}  // namespace

void check_rstd(const char* op, const TensorView& rstd, const TensorView& x) {
  check_same_device(op, "rstd", rstd, x, "x");
  check_dtype(op, "rstd", rstd, {x.dtype == DType::f64 ? DType::f64 : DType::f32});
  check_shape(op, "rstd", rstd, {x.shape[0]});
  check_contiguous(op, "rstd", rstd);
}

void rmsnorm_fwd(const TensorView& x, const TensorView* res, const TensorView& w, const TensorView& y,
                 const TensorView* h_out, const TensorView& rstd, double eps, int threads, intptr_t stream) {
  check_x(kFwd, "x", x);
  check_weight(kFwd, "weight", w, x);
  check_rows_tensor(kFwd, "y", y, x);
  check_rstd(kFwd, rstd, x);
  LF_CHECK((res == nullptr) == (h_out == nullptr), kFwd, ": residual and h_out go together");
  if (res) {
    check_rows_tensor(kFwd, "residual", *res, x);
    check_rows_tensor(kFwd, "h_out", *h_out, x);
  }
  LF_CHECK(std::isfinite(eps) && eps >= 0, kFwd, ": eps must be finite and >= 0, got ", eps);
  check_threads(kFwd, threads);
  const int64_t rows = x.shape[0], hidden = x.shape[1];
  if (rows == 0) return;

  if (x.device == DeviceKind::cuda) {
#ifdef LLMFORGE_WITH_CUDA
    const char* err = cuda::rmsnorm_fwd(cuda_dtype_code(x.dtype), x.data, res ? res->data : nullptr, w.data,
                                        y.data, h_out ? h_out->data : nullptr, rstd.ptr<float>(), rows, hidden,
                                        static_cast<float>(eps), reinterpret_cast<void*>(stream));
    LF_CHECK(err == nullptr, kFwd, ": CUDA error: ", err);
#endif
    return;
  }
  cpu::RmsNormFwdArgs a{x.dtype, x.data, res ? res->data : nullptr, w.data, y.data,
                        h_out ? h_out->data : nullptr, rstd.data, rows, hidden, eps, threads, false};
  // Outputs far larger than the last-level cache go straight to memory.
  a.stream_y = rows * hidden * dtype_size(x.dtype) >= (int64_t{64} << 20);
  LF_CPU_DISPATCH(rmsnorm_fwd, a);
}

int64_t rmsnorm_bwd_workspace_rows(int64_t rows, int device) {
#ifdef LLMFORGE_WITH_CUDA
  return cuda::rmsnorm_bwd_workspace_rows(rows, device);
#else
  (void)rows;
  (void)device;
  fail_value("rmsnorm_bwd_workspace_rows: this llmforge was built without CUDA kernels");
#endif
}

void rmsnorm_bwd(const TensorView& dy, const TensorView& h, const TensorView& w, const TensorView& rstd,
                 const TensorView* dh_out, const TensorView& dx, const TensorView& dw,
                 const TensorView* workspace, int threads, intptr_t stream) {
  check_x(kBwd, "h", h);
  check_rows_tensor(kBwd, "grad_y", dy, h);
  check_weight(kBwd, "weight", w, h);
  check_rstd(kBwd, rstd, h);
  check_rows_tensor(kBwd, "grad_x", dx, h);
  check_weight(kBwd, "grad_weight", dw, h);
  if (dh_out) check_rows_tensor(kBwd, "grad_h_out", *dh_out, h);
  check_threads(kBwd, threads);
  const int64_t rows = h.shape[0], hidden = h.shape[1];

  if (h.device == DeviceKind::cuda) {
#ifdef LLMFORGE_WITH_CUDA
    LF_CHECK(workspace != nullptr, kBwd, ": a CUDA backward needs a workspace");
    check_same_device(kBwd, "workspace", *workspace, h, "h");
    check_dtype(kBwd, "workspace", *workspace, {DType::f32});
    check_ndim(kBwd, "workspace", *workspace, 2);
    LF_CHECK(workspace->shape[1] == hidden && workspace->shape[0] >= 1, kBwd,
             ": workspace must have shape (n, hidden), got ", workspace->shape_str());
    check_contiguous(kBwd, "workspace", *workspace);
    const char* err = cuda::rmsnorm_bwd(cuda_dtype_code(h.dtype), dy.data, h.data, w.data, rstd.ptr<float>(),
                                        dh_out ? dh_out->data : nullptr, dx.data, dw.data, workspace->ptr<float>(),
                                        workspace->shape[0], rows, hidden, reinterpret_cast<void*>(stream));
    LF_CHECK(err == nullptr, kBwd, ": CUDA error: ", err);
#endif
    return;
  }
  const size_t acc_size = h.dtype == DType::f64 ? sizeof(double) : sizeof(float);
  std::vector<unsigned char> ws(static_cast<size_t>(threads) * hidden * acc_size, 0);
  cpu::RmsNormBwdArgs a{h.dtype, dy.data, h.data, w.data, rstd.data, dh_out ? dh_out->data : nullptr,
                        dx.data, dw.data, ws.data(), rows, hidden, threads};
  LF_CPU_DISPATCH(rmsnorm_bwd, a);
}

}  // namespace lf
