// swiglu.cuh — host launchers of the CUDA SwiGLU kernels (kernels/swiglu.cu).
// Same maths as csrc/cpu/swiglu.h, in float32 for every dtype: with s = sigmoid(g),
//   y = g * s * u;  dg = dy * u * s * (1 + g * (1 - s));  du = dy * g * s.
// dtype codes: 0 = f32, 1 = f16, 2 = bf16. Operands are (rows, cols) with row strides in
// elements (the packed [gate | up] form passes views into one buffer). Device pointers.
// Launchers return a CUDA error string, or nullptr on success.
#pragma once
#include <cstdint>

namespace lf::cuda {

const char* swiglu_fwd(int dtype, const void* g, const void* u, void* y, int64_t rows, int64_t cols,
                       int64_t g_stride, int64_t u_stride, int64_t y_stride, void* stream);

const char* swiglu_bwd(int dtype, const void* dy, const void* g, const void* u, void* dg, void* du, int64_t rows,
                       int64_t cols, int64_t dy_stride, int64_t g_stride, int64_t u_stride, int64_t dg_stride,
                       int64_t du_stride, void* stream);

}  // namespace lf::cuda
