// int4_matmul.cuh — host launchers of the CUDA int4 weight-only matmuls (kernels/int4_matmul.cu).
//
// Weights use the CPU layout unchanged (python/llmforge/ops/int4_matmul.py, csrc/cpu/int4_matmul.h):
// packed uint8 (N, K/2), each 32-weight run k0..k0+31 in 16 bytes, byte i = q[k0+i] | q[k0+16+i] << 4;
// scales, zeros float32 (N, K/G), G in {32, 64, 128}; dequant = (q - zero) * scale in float32,
// bit-identical to the torch reference, then rounded to bfloat16 for the tensor cores.
// No repacking: that byte order already gives each mma lane its B fragment (see the .cu).
// All pointers are device pointers, 16-byte aligned, rows contiguous.
// Launchers return a CUDA error string, or nullptr on success.
#pragma once
#include <cstdint>

namespace lf::cuda {

constexpr int kInt4MaxSplits = 16;  // workspace: kInt4MaxSplits * M * N floats (M <= 16 path)

// y (M, N) f32 = x (M, K) bf16 @ dequant(W)^T. M <= 16: split-K tensor-core GEMV streaming the
// packed weights once (needs ws); larger M: tiled GEMM dequantising tiles into shared memory.
const char* int4_matmul(const void* x, const uint8_t* packed, const float* scales, const float* zeros, float* y,
                        float* ws, int64_t M, int64_t N, int64_t K, int64_t G, void* stream);

// dx (M, K) f32 = dy (M, N) bf16 @ dequant(W): the activation gradient, W dequantised tile by tile.
const char* int4_grad_x(const void* dy, const uint8_t* packed, const float* scales, const float* zeros, float* dx,
                        int64_t M, int64_t N, int64_t K, int64_t G, void* stream);

// w (rows, K) f32 = dequant(W)[row0 : row0 + rows] (the tests' bit-level check of the dequantiser).
const char* int4_dequant(const uint8_t* packed, const float* scales, const float* zeros, float* w, int64_t row0,
                         int64_t rows, int64_t K, int64_t G, void* stream);

}  // namespace lf::cuda
