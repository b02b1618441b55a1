// rope.h — CPU rotary position embedding kernels (csrc/cpu/rope.cpp), one per ISA build.
//
// x, y: (batch, seq, heads, head_dim), each with its own element strides for the first three
// dimensions (head_dim is dense): a head of token (b, s) starts at b*xs[0] + s*xs[1] + h*xs[2],
// so y can be a heads-first (batch, heads, seq, head_dim) buffer. cos, sin: (positions, head_dim / 2),
// one entry per frequency i. The token at (b, s) uses table row p = pos[b, s] (pos of
// shape (batch, seq)), pos[s] (shape (seq,)) or s (no pos). For each head and i:
//   neox (half split):      (x[i], x[i + d/2])   -> (x1 c - x2 s, x2 c + x1 s)
//   norm (adjacent pairs):  (x[2i], x[2i + 1])   -> (x1 c - x2 s, x2 c + x1 s)
// inverse = true rotates by -angle (the backward: a rotation's transpose is its inverse).
// dtype: f32 or bf16 x with f32 tables, or f64 x with f64 tables; y may alias x only with x's strides.
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

constexpr int64_t kRopeMaxHeadDim = 4096;  // per-token scratch lives on the stack

struct RopeArgs {
  DType dtype;
  const void* x;
  void* y;
  const void* cos;
  const void* sin;
  const int64_t* pos;  // optional
  bool pos_batched;    // pos has shape (batch, seq) rather than (seq,)
  int64_t batch, seq, heads, head_dim;
  bool neox;
  bool inverse;
  int threads;
  int64_t xs[3], ys[3];  // element strides of (batch, seq, heads) in x and y
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, rope_apply, const lf::cpu::RopeArgs&)
