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
