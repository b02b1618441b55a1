// ggml_quants.cpp — argument checks and dispatch for the GGUF block quantisers (see
// ggml_quants.h).
#include "ggml_quants.h"

#include <cmath>

#include "cpu/ggml_quants.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

// Checks the type id and the byte matrix against (rows, cols); returns the block size.
int check_blocks(const char* op, int type, const TensorView& q, int64_t rows, int64_t cols) {
  const int bs = cpu::ggml_block_size(type), bb = cpu::ggml_block_bytes(type);
  LF_CHECK(bs > 0, op, ": unsupported ggml type id ", type,
           " (Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, Q4_K=12, Q5_K=13, Q6_K=14)");
  LF_CHECK(cols % bs == 0, op, ": rows of ", cols, " values are not a multiple of the block size ", bs);
  check_cpu(op, "q", q);
  check_dtype(op, "q", q, {DType::u8});
  check_shape(op, "q", q, {rows, cols / bs * bb});
  check_contiguous(op, "q", q);
  return bs;
}

void check_rows(const char* op, const char* arg, const TensorView& t) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {DType::f32});
  check_ndim(op, arg, t, 2);
  check_contiguous(op, arg, t);
}

}  // namespace

void ggml_quantize(const TensorView& x, const TensorView& q, int type, int threads) {
  constexpr const char* op = "ggml_quantize";
  check_rows(op, "x", x);
  check_blocks(op, type, q, x.shape[0], x.shape[1]);
  check_threads(op, threads);
  const float* p = x.ptr<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i)
    LF_CHECK(std::isfinite(p[i]), op, ": x holds NaN or infinity (", p[i], ") at row ", i / x.shape[1],
             ", column ", i % x.shape[1]);
  cpu::GgmlQuantArgs a{static_cast<cpu::GgmlType>(type), p, q.ptr<uint8_t>(), x.shape[0], x.shape[1], threads};
  if (n) LF_CPU_DISPATCH(ggml_quantize, a);
}

void ggml_dequantize(const TensorView& q, const TensorView& y, int type, int threads) {
  constexpr const char* op = "ggml_dequantize";
  check_rows(op, "y", y);
  check_blocks(op, type, q, y.shape[0], y.shape[1]);
  check_threads(op, threads);
  cpu::GgmlQuantArgs a{static_cast<cpu::GgmlType>(type), nullptr, q.ptr<uint8_t>(), y.shape[0], y.shape[1], threads};
  const int64_t n = y.numel();
  if (!n) return;
  float* out = y.ptr<float>();
  LF_CPU_DISPATCH(ggml_dequantize, a, out);
  for (int64_t i = 0; i < n; ++i)
    LF_CHECK(std::isfinite(out[i]), op, ": block data decodes to a non-finite value at row ", i / y.shape[1],
             ", column ", i % y.shape[1], " (corrupt scales?)");
}

}  // namespace lf
