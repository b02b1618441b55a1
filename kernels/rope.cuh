// rope.cuh — host launcher of the CUDA RoPE kernel (kernels/rope.cu). Same maths as
// csrc/cpu/rope.h: each pair (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), s negated for the
// inverse (the backward). x, y (B, S, H, D) contiguous; cos, sin float32 (P, D/2); pos
// optional int64 (S,) or (B, S) (batched), each in [0, P) — checked by the caller; the
// kernel clamps as a last guard against out-of-bounds reads. style: neox pairs (i, i + D/2),
// norm pairs (2i, 2i + 1). dtype codes: 0 = f32, 1 = f16, 2 = bf16; maths in float32.
#pragma once
#include <cstdint>

namespace lf::cuda {

const char* rope_apply(int dtype, const void* x, void* y, const float* cos, const float* sin, const int64_t* pos,
                       bool batched, int64_t P, int64_t B, int64_t S, int64_t H, int64_t D, bool neox, bool inverse,
                       void* stream);

}  // namespace lf::cuda
