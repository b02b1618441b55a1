// swiglu.h — the SwiGLU op at the native boundary: argument checks, then the CPU
// kernel (csrc/cpu/swiglu.cpp) or, for CUDA tensors, kernels/swiglu.cu on `stream`.
#pragma once
#include "tensor.h"

namespace lf {

// Separate operands: gate, up, y, grad_y, grad_gate, grad_up all of one shape (..., ffn).
void swiglu_fwd(const TensorView& gate, const TensorView& up, const TensorView& y, int threads, intptr_t stream = 0);
void swiglu_bwd(const TensorView& dy, const TensorView& gate, const TensorView& up, const TensorView& dgate,
                const TensorView& dup, int threads, intptr_t stream = 0);

// Packed operand x (..., 2 * ffn): x[..., :ffn] is the gate, x[..., ffn:] is up; y, grad_y (..., ffn);
// grad_x like x.
void swiglu_packed_fwd(const TensorView& x, const TensorView& y, int threads, intptr_t stream = 0);
void swiglu_packed_bwd(const TensorView& dy, const TensorView& x, const TensorView& dx, int threads, intptr_t stream = 0);

}  // namespace lf
