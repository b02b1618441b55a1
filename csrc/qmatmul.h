// qmatmul.h — quantized matmuls at the native boundary: int4 and int8 weight-only, W8A8.
// Layouts are documented in csrc/cpu/int4_matmul.h and csrc/cpu/int8_matmul.h.
#pragma once
#include "tensor.h"

namespace lf {

// x (M, K) f32; packed u8 (N, K/2); scales, zeros f32 (N, K/G); y (M, N) f32.
void int4_matmul(const TensorView& x, const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                 const TensorView& y, int64_t group_size, int threads);
// w (rows, K) f32 receives dequant(W)[row0 : row0 + rows].
void int4_dequant(const TensorView& packed, const TensorView& scales, const TensorView& zeros, const TensorView& w,
                  int64_t row0, int64_t group_size, int threads);
// x (M, K) f32; q i8 (N, K); scale f32 (N,); y (M, N) f32.
void int8_matmul(const TensorView& x, const TensorView& q, const TensorView& scale, const TensorView& y, int threads);
// xq i8 (M, K); xscale f32 (M,); q i8 (N, K); scale f32 (N,); y (M, N) f32.
void w8a8_matmul(const TensorView& xq, const TensorView& xscale, const TensorView& q, const TensorView& scale,
                 const TensorView& y, int threads);

}  // namespace lf

// ---- CUDA (kernels/int4_matmul.cu, kernels/int8_matmul.cu); all operands on one GPU,
// contiguous and 16-byte aligned; `stream` is the caller's cudaStream_t. ------------------------
namespace lf {

// Floats of workspace the M <= 16 (split-K) paths need; 0 otherwise.
int64_t int4_cuda_workspace_floats(int64_t M, int64_t N);
int64_t int8_cuda_workspace_floats(int64_t M, int64_t N);
// x (M, K) bf16; y (M, N) f32; ws f32 with int4_cuda_workspace_floats(M, N) elements.
void int4_matmul_cuda(const TensorView& x, const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                      const TensorView& y, const TensorView& ws, int64_t group_size, intptr_t stream);
// grad_y (M, N) bf16 -> grad_x (M, K) f32 = grad_y @ dequant(W).
void int4_grad_x_cuda(const TensorView& dy, const TensorView& packed, const TensorView& scales,
                      const TensorView& zeros, const TensorView& dx, int64_t group_size, intptr_t stream);
// w (rows, K) f32 = dequant(W)[row0 : row0 + rows].
void int4_dequant_cuda(const TensorView& packed, const TensorView& scales, const TensorView& zeros,
                       const TensorView& w, int64_t row0, int64_t group_size, intptr_t stream);
// x (M, K) bf16, K a multiple of 16; y (M, N) f32; ws as for int4.
void int8_matmul_cuda(const TensorView& x, const TensorView& q, const TensorView& scale, const TensorView& y,
                      const TensorView& ws, intptr_t stream);
// xq (M, K) i8, xscale (M,) f32, q (N, K) i8, scale (N,) f32 -> y (M, N) f32.
void w8a8_matmul_cuda(const TensorView& xq, const TensorView& xscale, const TensorView& q, const TensorView& scale,
                      const TensorView& y, intptr_t stream);

}  // namespace lf
