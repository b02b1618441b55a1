// swiglu.cpp — argument checks and dispatch for SwiGLU (see swiglu.h).
#include "swiglu.h"

#include "cpu/swiglu.h"
#include "device.h"
#include "isa.h"
#ifdef LLMFORGE_WITH_CUDA
#include "swiglu.cuh"
#endif

namespace lf {
namespace {

constexpr const char* kFwd = "swiglu";
constexpr const char* kBwd = "swiglu_backward";

void check_main(const char* op, const char* arg, const TensorView& t) {
  check_supported_device(op, arg, t);
  if (t.device == DeviceKind::cpu)
    check_dtype(op, arg, t, {DType::f32, DType::bf16, DType::f64});
  else
    check_dtype(op, arg, t, {DType::f32, DType::f16, DType::bf16});
  LF_CHECK(t.ndim >= 1, op, ": ", arg, " must have at least 1 dimension");
  LF_CHECK(t.shape[t.ndim - 1] > 0, op, ": the last dimension of ", arg, " must be positive, got shape ",
           t.shape_str());
  check_contiguous(op, arg, t);
}

// t must have ref's shape, except its last dimension is `last`; same dtype and device.
void check_like(const char* op, const char* arg, const TensorView& t, const TensorView& ref, const char* ref_name,
                int64_t last) {
  check_same_device(op, arg, t, ref, ref_name);
  check_same_dtype(op, arg, t, ref, ref_name);
  bool ok = t.ndim == ref.ndim && t.shape[t.ndim - 1] == last;
  for (int i = 0; ok && i + 1 < ref.ndim; ++i) ok = t.shape[i] == ref.shape[i];
  LF_CHECK(ok, op, ": ", arg, " has shape ", t.shape_str(), " but ", ref_name, " has ", ref.shape_str(),
           last == ref.shape[ref.ndim - 1] ? "; they must match" : " (last dimension half of it expected)");
  check_contiguous(op, arg, t);
}

// The packed operand x (..., 2 * ffn): checks it and returns ffn.
int64_t check_packed(const char* op, const TensorView& x) {
  check_main(op, "x", x);
  const int64_t F2 = x.shape[x.ndim - 1];
  LF_CHECK(F2 % 2 == 0, op, ": the last dimension of x holds [gate, up] and must be even, got shape ",
           x.shape_str());
  return F2 / 2;
}

cpu::SwigluArgs base_args(const TensorView& ref, int64_t cols, int threads) {
  cpu::SwigluArgs a{};
  a.dtype = ref.dtype;
  a.cols = cols;
  a.rows = cols ? ref.numel() / ref.shape[ref.ndim - 1] : 0;
  a.threads = threads;
  return a;
}

#ifdef LLMFORGE_WITH_CUDA
void cuda_fwd(const char* op, const cpu::SwigluArgs& a, intptr_t stream) {
  const char* err = cuda::swiglu_fwd(cuda_dtype_code(a.dtype), a.g, a.u, a.y, a.rows, a.cols, a.g_stride, a.u_stride,
                                     a.y_stride, reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, op, ": CUDA error: ", err);
}
void cuda_bwd(const char* op, const cpu::SwigluArgs& a, intptr_t stream) {
  const char* err = cuda::swiglu_bwd(cuda_dtype_code(a.dtype), a.dy, a.g, a.u, a.dg, a.du, a.rows, a.cols,
                                     a.dy_stride, a.g_stride, a.u_stride, a.dg_stride, a.du_stride,
                                     reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, op, ": CUDA error: ", err);
}
#endif

// Runs the CUDA kernel for a CUDA operand (returns true), else nothing (the CPU path follows).
bool run_cuda(const char* op, const TensorView& ref, const cpu::SwigluArgs& a, bool bwd, intptr_t stream) {
  if (ref.device != DeviceKind::cuda) return false;
#ifdef LLMFORGE_WITH_CUDA
  if (a.rows) bwd ? cuda_bwd(op, a, stream) : cuda_fwd(op, a, stream);
#else
  (void)op; (void)a; (void)bwd; (void)stream;
#endif
  return true;
}

}  // namespace

void swiglu_fwd(const TensorView& gate, const TensorView& up, const TensorView& y, int threads, intptr_t stream) {
  check_main(kFwd, "gate", gate);
  const int64_t F = gate.shape[gate.ndim - 1];
  check_like(kFwd, "up", up, gate, "gate", F);
  check_like(kFwd, "y", y, gate, "gate", F);
  check_threads(kFwd, threads);
  cpu::SwigluArgs a = base_args(gate, F, threads);
  a.g = gate.data; a.u = up.data; a.y = y.data;
  a.g_stride = a.u_stride = a.y_stride = F;
  if (run_cuda(kFwd, gate, a, false, stream)) return;
  if (a.rows) LF_CPU_DISPATCH(swiglu_fwd, a);
}

void swiglu_bwd(const TensorView& dy, const TensorView& gate, const TensorView& up, const TensorView& dgate,
                const TensorView& dup, int threads, intptr_t stream) {
  check_main(kBwd, "gate", gate);
  const int64_t F = gate.shape[gate.ndim - 1];
  check_like(kBwd, "up", up, gate, "gate", F);
  check_like(kBwd, "grad_y", dy, gate, "gate", F);
  check_like(kBwd, "grad_gate", dgate, gate, "gate", F);
  check_like(kBwd, "grad_up", dup, gate, "gate", F);
  check_threads(kBwd, threads);
  cpu::SwigluArgs a = base_args(gate, F, threads);
  a.g = gate.data; a.u = up.data; a.dy = dy.data; a.dg = dgate.data; a.du = dup.data;
  a.g_stride = a.u_stride = a.dy_stride = a.dg_stride = a.du_stride = F;
  if (run_cuda(kBwd, gate, a, true, stream)) return;
  if (a.rows) LF_CPU_DISPATCH(swiglu_bwd, a);
}

void swiglu_packed_fwd(const TensorView& x, const TensorView& y, int threads, intptr_t stream) {
  const int64_t F = check_packed(kFwd, x), F2 = 2 * F;
  check_like(kFwd, "y", y, x, "x", F);
  check_threads(kFwd, threads);
  cpu::SwigluArgs a = base_args(x, F, threads);
  const int64_t es = dtype_size(x.dtype);
  a.g = x.data; a.u = static_cast<const char*>(x.data) + F * es; a.y = y.data;
  a.g_stride = a.u_stride = F2;
  a.y_stride = F;
  if (run_cuda(kFwd, x, a, false, stream)) return;
  if (a.rows) LF_CPU_DISPATCH(swiglu_fwd, a);
}

void swiglu_packed_bwd(const TensorView& dy, const TensorView& x, const TensorView& dx, int threads, intptr_t stream) {
  const int64_t F = check_packed(kBwd, x), F2 = 2 * F;
  check_like(kBwd, "grad_y", dy, x, "x", F);
  check_like(kBwd, "grad_x", dx, x, "x", F2);
  check_threads(kBwd, threads);
  cpu::SwigluArgs a = base_args(x, F, threads);
  const int64_t es = dtype_size(x.dtype);
  a.g = x.data; a.u = static_cast<const char*>(x.data) + F * es; a.dy = dy.data;
  a.dg = dx.data; a.du = static_cast<char*>(dx.data) + F * es;
  a.g_stride = a.u_stride = a.dg_stride = a.du_stride = F2;
  a.dy_stride = F;
  if (run_cuda(kBwd, x, a, true, stream)) return;
  if (a.rows) LF_CPU_DISPATCH(swiglu_bwd, a);
}

}  // namespace lf
