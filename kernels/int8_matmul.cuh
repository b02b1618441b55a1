// int8_matmul.cuh — host launchers of the CUDA int8 matmuls (kernels/int8_matmul.cu).
// Same semantics as the CPU ops (python/llmforge/ops/int8_matmul.py, csrc/cpu/int8_matmul.h):
//   weight-only: y = x @ (q * scale[:, None])^T, q int8 (N, K), scale float32 (N,);
//   W8A8:        y = (xq @ q^T) * xscale[:, None] * scale[None, :], int32 accumulation.
// All pointers are device pointers with contiguous rows. Launchers return a CUDA error
// string, or nullptr on success.
#pragma once
#include <cstdint>

namespace lf::cuda {

constexpr int kInt8MaxSplits = 16;  // workspace: kInt8MaxSplits * M * N floats (M <= 16 path)

// y (M, N) f32 = x (M, K) bf16 @ (q * scale)^T; x 16-byte aligned, K a multiple of 16.
// M <= 16: split-K tensor-core GEMV (weights streamed once, dequantised in registers);
// larger M: tiled GEMM widening the int8 tiles to bf16 in shared memory.
const char* int8_matmul(const void* x, const int8_t* q, const float* scale, float* y, float* ws, int64_t M,
                        int64_t N, int64_t K, void* stream);

// y (M, N) f32 from int8 activations xq (M, K) with per-token scales xscale (M,) and int8
// weights q (N, K) with per-channel scales (N,): mma.m16n8k32 s8 with int32 accumulation.
const char* w8a8_matmul(const int8_t* xq, const float* xscale, const int8_t* q, const float* scale, float* y,
                        int64_t M, int64_t N, int64_t K, void* stream);

}  // namespace lf::cuda
