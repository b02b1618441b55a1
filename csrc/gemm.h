// gemm.h — the float32 GEMM at the native boundary: c = a @ b, or c += a @ b, on CPU
// tensors (kernel: csrc/cpu/gemm.cpp). a (M, K) and b (K, N) may each be row- or
// column-major (a transposed view is read in place); c (M, N) has unit column stride
// and must not overlap a or b.
#pragma once
#include "tensor.h"

namespace lf {

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, bool accumulate, int threads);

}  // namespace lf
