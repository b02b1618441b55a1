// rope.h — the RoPE op at the native boundary: argument checks, then the CPU
// kernel (csrc/cpu/rope.cpp) or, for CUDA tensors (float32/float16/bfloat16 x, float32
// tables), kernels/rope.cu on `stream`.
#pragma once
#include "tensor.h"

namespace lf {

// x, y: (batch, seq, heads, head_dim), head_dim even; contiguous on CUDA, any strides with a
// dense head_dim on CPU (y must not overlap x unless it is x); cos, sin: (positions, head_dim / 2),
// float32 for float32/bfloat16 x, float64 for float64 x; pos: optional int64 (seq,) or
// (batch, seq) with every entry in [0, positions). style: "neox" or "norm".
// inverse rotates by the negative angle (the backward).
void rope_apply(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView* pos,
                const TensorView& y, const char* style, bool inverse, int threads, intptr_t stream = 0);

}  // namespace lf
