// qmatmul.cpp — argument checks and dispatch for the quantized matmuls (see qmatmul.h).
#include "qmatmul.h"

#include <vector>

#include "cpu/int4_matmul.h"
#include "cpu/int8_matmul.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

void check2(const char* op, const char* name, const TensorView& t, DType d) {
  check_cpu(op, name, t);
  check_dtype(op, name, t, {d});
  check_ndim(op, name, t, 2);
  check_contiguous(op, name, t);
}

void check1(const char* op, const char* name, const TensorView& t, DType d, int64_t n) {
  check_cpu(op, name, t);
  check_dtype(op, name, t, {d});
  check_shape(op, name, t, {n});
  check_contiguous(op, name, t);
}

}  // namespace

void int4_matmul(const TensorView& x, const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                 const TensorView& y, int64_t G, int threads) {
  const char* op = "int4_matmul";
  check2(op, "x", x, DType::f32);
  check2(op, "packed", packed, DType::u8);
  check2(op, "scales", scales, DType::f32);
  check2(op, "zeros", zeros, DType::f32);
  check2(op, "y", y, DType::f32);
  check_threads(op, threads);
  LF_CHECK(G == 32 || G == 64 || G == 128, op, ": group_size must be 32, 64 or 128, got ", G);
  const int64_t M = x.shape[0], K = x.shape[1], N = packed.shape[0];
  LF_CHECK(K > 0 && K % G == 0, op, ": in_features ", K, " must be a positive multiple of group_size ", G);
  check_shape(op, "packed", packed, {N, K / 2});
  check_shape(op, "scales", scales, {N, K / G});
  check_shape(op, "zeros", zeros, {N, K / G});
  check_shape(op, "y", y, {M, N});
  if (M == 0 || N == 0) return;
  const int64_t ng = K / G;
  std::vector<float> xsum(static_cast<size_t>(M * ng));
  const float* xp = x.ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < ng; ++g) {
      float s = 0.f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) s += xp[m * K + k];
      xsum[m * ng + g] = s;
    }
  cpu::Int4GemvArgs a{xp, packed.ptr<uint8_t>(), scales.ptr<float>(), zeros.ptr<float>(), xsum.data(),
                      y.ptr<float>(), M, N, K, G, threads};
  LF_CPU_DISPATCH(int4_gemv, a);
}

void int4_dequant(const TensorView& packed, const TensorView& scales, const TensorView& zeros, const TensorView& w,
                  int64_t row0, int64_t G, int threads) {
  const char* op = "int4_dequant";
  check2(op, "packed", packed, DType::u8);
  check2(op, "scales", scales, DType::f32);
  check2(op, "zeros", zeros, DType::f32);
  check2(op, "w", w, DType::f32);
  check_threads(op, threads);
  LF_CHECK(G == 32 || G == 64 || G == 128, op, ": group_size must be 32, 64 or 128, got ", G);
  const int64_t N = packed.shape[0], K = packed.shape[1] * 2, rows = w.shape[0];
  LF_CHECK(K % G == 0, op, ": in_features ", K, " must be a multiple of group_size ", G);
  check_shape(op, "scales", scales, {N, K / G});
  check_shape(op, "zeros", zeros, {N, K / G});
  LF_CHECK(w.shape[1] == K, op, ": w must have ", K, " columns, got ", w.shape_str());
  LF_CHECK(row0 >= 0 && row0 + rows <= N, op, ": rows [", row0, ", ", row0 + rows, ") outside [0, ", N, ")");
  if (rows == 0) return;
  cpu::Int4DequantArgs a{packed.ptr<uint8_t>(), scales.ptr<float>(), zeros.ptr<float>(), w.ptr<float>(),
                         row0, rows, K, G, threads};
  LF_CPU_DISPATCH(int4_dequant, a);
}

void int8_matmul(const TensorView& x, const TensorView& q, const TensorView& scale, const TensorView& y, int threads) {
  const char* op = "int8_matmul";
  check2(op, "x", x, DType::f32);
  check2(op, "q", q, DType::i8);
  check2(op, "y", y, DType::f32);
  check_threads(op, threads);
  const int64_t M = x.shape[0], K = x.shape[1], N = q.shape[0];
  LF_CHECK(q.shape[1] == K, op, ": q has shape ", q.shape_str(), " but x has ", K, " features");
  check1(op, "scale", scale, DType::f32, N);
  check_shape(op, "y", y, {M, N});
  if (M == 0 || N == 0) return;
  cpu::Int8GemvArgs a{x.ptr<float>(), q.ptr<int8_t>(), scale.ptr<float>(), y.ptr<float>(), M, N, K, threads};
  LF_CPU_DISPATCH(int8_gemv, a);
}

void w8a8_matmul(const TensorView& xq, const TensorView& xscale, const TensorView& q, const TensorView& scale,
                 const TensorView& y, int threads) {
  const char* op = "w8a8_matmul";
  check2(op, "xq", xq, DType::i8);
  check2(op, "q", q, DType::i8);
  check2(op, "y", y, DType::f32);
  check_threads(op, threads);
  const int64_t M = xq.shape[0], K = xq.shape[1], N = q.shape[0];
  LF_CHECK(q.shape[1] == K, op, ": q has shape ", q.shape_str(), " but xq has ", K, " features");
  LF_CHECK(K < (int64_t{1} << 17), op, ": in_features ", K, " would overflow the int32 accumulator");
  check1(op, "xscale", xscale, DType::f32, M);
  check1(op, "scale", scale, DType::f32, N);
  check_shape(op, "y", y, {M, N});
  if (M == 0 || N == 0) return;
  cpu::W8A8Args a{xq.ptr<int8_t>(), xscale.ptr<float>(), q.ptr<int8_t>(), scale.ptr<float>(), y.ptr<float>(),
                  M, N, K, threads};
  LF_CPU_DISPATCH(w8a8_gemm, a);
}

}  // namespace lf
