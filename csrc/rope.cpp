// rope.cpp — argument checks and dispatch for RoPE (see rope.h).
#include "rope.h"

#include <cstring>

#include "cpu/rope.h"
#include "device.h"
#include "isa.h"
#ifdef LLMFORGE_WITH_CUDA
#include "rope.cuh"
#endif

namespace lf {

void rope_apply(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView* pos,
                const TensorView& y, const char* style, bool inverse, int threads, intptr_t stream) {
  const char* op = "rope";
  check_supported_device(op, "x", x);
  const bool on_cuda = x.device == DeviceKind::cuda;
  if (on_cuda)
    check_dtype(op, "x", x, {DType::f32, DType::f16, DType::bf16});
  else
    check_dtype(op, "x", x, {DType::f32, DType::bf16, DType::f64});
  check_ndim(op, "x", x, 4);
  // CPU: any strides for (batch, seq, heads), head_dim dense; CUDA: contiguous
  auto check_layout = [&](const char* arg, const TensorView& t) {
    if (on_cuda || t.numel() == 0) return check_contiguous(op, arg, t);
    LF_CHECK(t.strides[3] == 1 && t.strides[0] >= 0 && t.strides[1] >= 0 && t.strides[2] >= 0, op, ": ", arg,
             " must have a dense last dimension (stride 1) and non-negative strides");
  };
  check_layout("x", x);
  const int64_t B = x.shape[0], S = x.shape[1], H = x.shape[2], D = x.shape[3];
  LF_CHECK(D > 0 && D % 2 == 0, op, ": head_dim (last dimension of x) must be even and positive, got shape ",
           x.shape_str());
  LF_CHECK(D <= cpu::kRopeMaxHeadDim, op, ": head_dim must be at most ", cpu::kRopeMaxHeadDim, ", got ", D);
  const bool neox = std::strcmp(style, "neox") == 0;
  LF_CHECK(neox || std::strcmp(style, "norm") == 0, op, ": style must be 'neox' or 'norm', got '", style, "'");
  const DType table = x.dtype == DType::f64 ? DType::f64 : DType::f32;
  for (const TensorView* t : {&cos, &sin}) {
    const char* name = t == &cos ? "cos" : "sin";
    check_same_device(op, name, *t, x, "x");
    check_dtype(op, name, *t, {table});
    check_ndim(op, name, *t, 2);
    LF_CHECK(t->shape[1] == D / 2, op, ": ", name, " must have shape (positions, head_dim / 2 = ", D / 2,
             "), got ", t->shape_str());
    check_contiguous(op, name, *t);
  }
  check_shape(op, "sin", sin, {cos.shape[0], D / 2});
  const int64_t P = cos.shape[0];
  check_same_device(op, "y", y, x, "x");
  check_same_dtype(op, "y", y, x, "x");
  check_shape(op, "y", y, {B, S, H, D});
  check_layout("y", y);
  bool same_strides = true;
  for (int i = 0; i < 3; ++i) same_strides = same_strides && x.strides[i] == y.strides[i];
  LF_CHECK(y.data != x.data || same_strides, op, ": y may alias x only with x's strides");
  check_threads(op, threads);
  bool batched = false;
  if (pos) {
    check_same_device(op, "positions", *pos, x, "x");
    check_dtype(op, "positions", *pos, {DType::i64});
    check_contiguous(op, "positions", *pos);
    batched = pos->ndim == 2;
    LF_CHECK((pos->ndim == 1 && pos->shape[0] == S) || (batched && pos->shape[0] == B && pos->shape[1] == S), op,
             ": positions must have shape (seq,) = (", S, ",) or (batch, seq) = (", B, ", ", S, "), got ",
             pos->shape_str());
    // CUDA positions live on the device: the Python op checks their range before the call
    // (and the kernel clamps); CPU positions are checked here.
    const int64_t* p = pos->ptr<int64_t>();
    for (int64_t i = 0, n = on_cuda ? 0 : pos->numel(); i < n; ++i)
      LF_CHECK(p[i] >= 0 && p[i] < P, op, ": positions[", i, "] = ", p[i], " is outside the cos/sin table [0, ", P,
               ")");
  } else {
    LF_CHECK(S <= P, op, ": seq length ", S, " exceeds the cos/sin table's ", P,
             " positions; pass a longer table or explicit positions");
  }
  if (x.numel() == 0) return;
  if (on_cuda) {
#ifdef LLMFORGE_WITH_CUDA
    const char* err = cuda::rope_apply(cuda_dtype_code(x.dtype), x.data, y.data, cos.ptr<float>(), sin.ptr<float>(),
                                       pos ? pos->ptr<int64_t>() : nullptr, batched, P, B, S, H, D, neox, inverse,
                                       reinterpret_cast<void*>(stream));
    LF_CHECK(err == nullptr, op, ": CUDA error: ", err);
#endif
    return;
  }
  cpu::RopeArgs a{x.dtype, x.data, y.data, cos.data, sin.data, pos ? pos->ptr<int64_t>() : nullptr, batched,
                  B, S, H, D, neox, inverse, threads};
  for (int i = 0; i < 3; ++i) a.xs[i] = x.strides[i], a.ys[i] = y.strides[i];
  LF_CPU_DISPATCH(rope_apply, a);
}

}  // namespace lf
