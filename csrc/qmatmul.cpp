// qmatmul.cpp — argument checks and dispatch for the quantized matmuls (see qmatmul.h).
#include "qmatmul.h"

#include <vector>

#include "cpu/int4_matmul.h"
#include "cpu/int8_matmul.h"
#include "device.h"
#include "isa.h"
// Declarations only (no CUDA types): the split-K workspace constants are needed either way.
#include "int4_matmul.cuh"
#include "int8_matmul.cuh"

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

// ---- CUDA (kernels/int4_matmul.cu, kernels/int8_matmul.cu) ------------------------------------

namespace lf {
namespace {

// A CUDA operand on ref's device: dtype, 2-D (or `dims`), contiguous, 16-byte aligned.
void check_gpu(const char* op, const char* name, const TensorView& t, DType d, const TensorView& ref, int dims = 2) {
  LF_CHECK(t.device == DeviceKind::cuda, op, ": ", name, " must be a CUDA tensor");
  LF_CHECK(built_with_cuda(), op, ": this llmforge was built without CUDA kernels");
  check_same_device(op, name, t, ref, "the weight");
  check_dtype(op, name, t, {d});
  check_ndim(op, name, t, dims);
  check_contiguous(op, name, t);
  check_aligned(op, name, t, 16);
}

constexpr int64_t kMaxDim = int64_t{65535} * 64;  // 64-row tiles on a grid dimension of <= 65535 blocks

void check_dims(const char* op, int64_t M, int64_t N, int64_t K) {
  LF_CHECK(M <= kMaxDim && N <= kMaxDim && K <= kMaxDim, op, ": CUDA sizes are limited to ", kMaxDim,
           " (got M=", M, ", N=", N, ", K=", K, ")");
}

// Scales/zeros (N, K/G) float32 and the group size of an int4 weight on the GPU.
void check_int4_weight(const char* op, const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                       int64_t G) {
  check_gpu(op, "packed", packed, DType::u8, packed);
  LF_CHECK(G == 32 || G == 64 || G == 128, op, ": group_size must be 32, 64 or 128, got ", G);
  const int64_t N = packed.shape[0], K = packed.shape[1] * 2;
  LF_CHECK(K > 0 && K % G == 0, op, ": in_features ", K, " must be a positive multiple of group_size ", G);
  check_gpu(op, "scales", scales, DType::f32, packed);
  check_gpu(op, "zeros", zeros, DType::f32, packed);
  check_shape(op, "scales", scales, {N, K / G});
  check_shape(op, "zeros", zeros, {N, K / G});
}

void check_workspace(const char* op, const TensorView& ws, const TensorView& ref, int64_t need) {
  check_gpu(op, "workspace", ws, DType::f32, ref, ws.ndim);
  LF_CHECK(ws.numel() >= need, op, ": workspace holds ", ws.numel(), " floats, ", need, " needed");
}

[[maybe_unused]] void cuda_ok(const char* op, const char* err) { LF_CHECK(err == nullptr, op, ": CUDA error: ", err); }

}  // namespace

int64_t int4_cuda_workspace_floats(int64_t M, int64_t N) { return M <= 16 ? cuda::kInt4MaxSplits * M * N : 0; }

void int4_matmul_cuda(const TensorView& x, const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                      const TensorView& y, const TensorView& ws, int64_t G, intptr_t stream) {
  const char* op = "int4_linear (CUDA)";
  check_int4_weight(op, packed, scales, zeros, G);
  const int64_t N = packed.shape[0], K = packed.shape[1] * 2;
  check_gpu(op, "x", x, DType::bf16, packed);
  LF_CHECK(x.shape[1] == K, op, ": x has ", x.shape[1], " features, the weight ", K);
  const int64_t M = x.shape[0];
  check_gpu(op, "y", y, DType::f32, packed);
  check_shape(op, "y", y, {M, N});
  check_dims(op, M, N, K);
  if (M == 0 || N == 0) return;
  check_workspace(op, ws, packed, int4_cuda_workspace_floats(M, N));
#ifdef LLMFORGE_WITH_CUDA
  cuda_ok(op, cuda::int4_matmul(x.data, packed.ptr<uint8_t>(), scales.ptr<float>(), zeros.ptr<float>(), y.ptr<float>(),
                                ws.ptr<float>(), M, N, K, G, reinterpret_cast<void*>(stream)));
#else
  (void)stream;
#endif
}

void int4_grad_x_cuda(const TensorView& dy, const TensorView& packed, const TensorView& scales,
                      const TensorView& zeros, const TensorView& dx, int64_t G, intptr_t stream) {
  const char* op = "int4_linear backward (CUDA)";
  check_int4_weight(op, packed, scales, zeros, G);
  const int64_t N = packed.shape[0], K = packed.shape[1] * 2;
  check_gpu(op, "grad_y", dy, DType::bf16, packed);
  LF_CHECK(dy.shape[1] == N, op, ": grad_y has ", dy.shape[1], " features, the weight ", N, " outputs");
  const int64_t M = dy.shape[0];
  check_gpu(op, "grad_x", dx, DType::f32, packed);
  check_shape(op, "grad_x", dx, {M, K});
  check_dims(op, M, N, K);
  if (M == 0) return;
#ifdef LLMFORGE_WITH_CUDA
  cuda_ok(op, cuda::int4_grad_x(dy.data, packed.ptr<uint8_t>(), scales.ptr<float>(), zeros.ptr<float>(),
                                dx.ptr<float>(), M, N, K, G, reinterpret_cast<void*>(stream)));
#else
  (void)stream;
#endif
}

void int4_dequant_cuda(const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                       const TensorView& w, int64_t row0, int64_t G, intptr_t stream) {
  const char* op = "int4_dequant (CUDA)";
  check_int4_weight(op, packed, scales, zeros, G);
  const int64_t N = packed.shape[0], K = packed.shape[1] * 2;
  check_gpu(op, "w", w, DType::f32, packed);
  LF_CHECK(w.shape[1] == K, op, ": w must have ", K, " columns, got ", w.shape_str());
  const int64_t rows = w.shape[0];
  LF_CHECK(row0 >= 0 && row0 + rows <= N, op, ": rows [", row0, ", ", row0 + rows, ") outside [0, ", N, ")");
  if (rows == 0) return;
#ifdef LLMFORGE_WITH_CUDA
  cuda_ok(op, cuda::int4_dequant(packed.ptr<uint8_t>(), scales.ptr<float>(), zeros.ptr<float>(), w.ptr<float>(), row0,
                                 rows, K, G, reinterpret_cast<void*>(stream)));
#else
  (void)stream;
#endif
}

int64_t int8_cuda_workspace_floats(int64_t M, int64_t N) { return M <= 16 ? cuda::kInt8MaxSplits * M * N : 0; }

void int8_matmul_cuda(const TensorView& x, const TensorView& q, const TensorView& scale, const TensorView& y,
                      const TensorView& ws, intptr_t stream) {
  const char* op = "int8_linear (CUDA)";
  check_gpu(op, "q", q, DType::i8, q);
  const int64_t N = q.shape[0], K = q.shape[1];
  LF_CHECK(K > 0 && K % 16 == 0, op, ": in_features must be a positive multiple of 16 on CUDA, got ", K);
  check_gpu(op, "scale", scale, DType::f32, q, 1);
  check_shape(op, "scale", scale, {N});
  check_gpu(op, "x", x, DType::bf16, q);
  LF_CHECK(x.shape[1] == K, op, ": x has ", x.shape[1], " features, q has shape ", q.shape_str());
  const int64_t M = x.shape[0];
  check_gpu(op, "y", y, DType::f32, q);
  check_shape(op, "y", y, {M, N});
  check_dims(op, M, N, K);
  if (M == 0 || N == 0) return;
  check_workspace(op, ws, q, int8_cuda_workspace_floats(M, N));
#ifdef LLMFORGE_WITH_CUDA
  cuda_ok(op, cuda::int8_matmul(x.data, q.ptr<int8_t>(), scale.ptr<float>(), y.ptr<float>(), ws.ptr<float>(), M, N, K,
                                reinterpret_cast<void*>(stream)));
#else
  (void)stream;
#endif
}

void w8a8_matmul_cuda(const TensorView& xq, const TensorView& xscale, const TensorView& q, const TensorView& scale,
                      const TensorView& y, intptr_t stream) {
  const char* op = "w8a8_linear (CUDA)";
  check_gpu(op, "q", q, DType::i8, q);
  const int64_t N = q.shape[0], K = q.shape[1];
  LF_CHECK(K < (int64_t{1} << 17), op, ": in_features ", K, " would overflow the int32 accumulator");
  check_gpu(op, "xq", xq, DType::i8, q);
  LF_CHECK(xq.shape[1] == K, op, ": q has shape ", q.shape_str(), " but xq has ", xq.shape[1], " features");
  const int64_t M = xq.shape[0];
  check_gpu(op, "xscale", xscale, DType::f32, q, 1);
  check_shape(op, "xscale", xscale, {M});
  check_gpu(op, "scale", scale, DType::f32, q, 1);
  check_shape(op, "scale", scale, {N});
  check_gpu(op, "y", y, DType::f32, q);
  check_shape(op, "y", y, {M, N});
  check_dims(op, M, N, K);
  if (M == 0 || N == 0) return;
#ifdef LLMFORGE_WITH_CUDA
  cuda_ok(op, cuda::w8a8_matmul(xq.ptr<int8_t>(), xscale.ptr<float>(), q.ptr<int8_t>(), scale.ptr<float>(),
                                y.ptr<float>(), M, N, K, reinterpret_cast<void*>(stream)));
#else
  (void)stream;
#endif
}

}  // namespace lf
