// gemm.cpp — argument checks and dispatch for the float32 GEMM (see gemm.h).
#include "gemm.h"

#include "cpu/gemm.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kOp = "gemm";

void check_operand(const char* arg, const TensorView& t) {
  LF_CHECK(t.device == DeviceKind::cpu, kOp, ": ", arg, " must be a CPU tensor");
  check_dtype(kOp, arg, t, {DType::f32});
  check_ndim(kOp, arg, t, 2);
  LF_CHECK(t.strides[0] >= 0 && t.strides[1] >= 0, kOp, ": ", arg, " has negative strides");
}

// (row stride, column stride) of an operand that is row-major or column-major in memory;
// a dimension of size 1 may have any stride.
void operand_strides(const char* arg, const TensorView& t, int64_t* rs, int64_t* cs) {
  *rs = t.strides[0];
  *cs = t.strides[1];
  if (t.shape[1] == 1) *cs = 1;       // a single column: read as row-major
  else if (t.shape[0] == 1) *rs = 1;  // a single row: read as column-major
  if (*cs == 1 || *rs == 1) return;
  fail_value(kOp, ": ", arg, " must be row- or column-major (one unit stride), got shape ", t.shape_str(),
             " and strides (", t.strides[0], ", ", t.strides[1], "); call .contiguous() first");
}

// [first byte, one past the last byte] a 2-D view can touch
void extent(const TensorView& t, uintptr_t* lo, uintptr_t* hi) {
  *lo = reinterpret_cast<uintptr_t>(t.data);
  int64_t last = 0;
  for (int i = 0; i < 2; ++i) last += (t.shape[i] - 1) * t.strides[i];
  *hi = *lo + static_cast<uintptr_t>((last + 1) * 4);
}

bool overlaps(const TensorView& x, const TensorView& y) {
  if (x.numel() == 0 || y.numel() == 0) return false;
  uintptr_t xl, xh, yl, yh;
  extent(x, &xl, &xh);
  extent(y, &yl, &yh);
  return xl < yh && yl < xh;
}

}  // namespace

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, bool accumulate, int threads) {
  check_operand("a", a);
  check_operand("b", b);
  check_operand("c", c);
  const int64_t M = a.shape[0], K = a.shape[1], N = b.shape[1];
  LF_CHECK(b.shape[0] == K, kOp, ": a has shape ", a.shape_str(), " and b has ", b.shape_str(),
           "; the inner dimensions must match");
  check_shape(kOp, "c", c, {M, N});
  LF_CHECK(N <= 1 || c.strides[1] == 1, kOp, ": c must have unit column stride, got strides (", c.strides[0], ", ",
           c.strides[1], ")");
  LF_CHECK(M <= 1 || c.strides[0] >= N, kOp, ": c's rows overlap (row stride ", c.strides[0], " < ", N, ")");
  LF_CHECK(!overlaps(c, a) && !overlaps(c, b), kOp, ": c must not share memory with a or b");
  check_threads(kOp, threads);
  cpu::GemmArgs g{};
  operand_strides("a", a, &g.a_rs, &g.a_cs);
  operand_strides("b", b, &g.b_rs, &g.b_cs);
  g.a = static_cast<const float*>(a.data);
  g.b = static_cast<const float*>(b.data);
  g.c = static_cast<float*>(c.data);
  g.ldc = M <= 1 ? N : c.strides[0];
  g.M = M;
  g.N = N;
  g.K = K;
  g.accumulate = accumulate;
  g.threads = threads;
  LF_CPU_DISPATCH(sgemm, g);
}

}  // namespace lf
