// rope.cu — CUDA rotary position embedding, forward and inverse (see rope.cuh).
// One thread per rotated pair, grid-stride; consecutive threads take consecutive pairs of
// one head, so neox reads two coalesced half-rows and norm one coalesced row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tensor_core.cuh"
#include "rope.cuh"

namespace lf::cuda {
namespace {

template <class T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ cos,
                            const float* __restrict__ sin, const int64_t* __restrict__ pos, bool batched, int64_t P,
                            int64_t S, int64_t H, int64_t half, bool neox, float sign, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, row = idx / half;  // row = (b * S + s) * H + h
    const int64_t bs = row / H, s = bs % S, b = bs / S;
    int64_t p = pos ? (batched ? pos[b * S + s] : pos[s]) : s;
    p = p < 0 ? 0 : p >= P ? P - 1 : p;
    const float c = cos[p * half + i], sn = sign * sin[p * half + i];
    const int64_t base = row * 2 * half;
    const int64_t i1 = neox ? base + i : base + 2 * i, i2 = neox ? base + i + half : base + 2 * i + 1;
    const float x1 = to_float(x[i1]), x2 = to_float(x[i2]);
    y[i1] = from_float<T>(x1 * c - x2 * sn);
    y[i2] = from_float<T>(x2 * c + x1 * sn);
  }
}

template <class T>
const char* typed(const void* x, void* y, const float* cos, const float* sin, const int64_t* pos, bool batched,
                  int64_t P, int64_t B, int64_t S, int64_t H, int64_t D, bool neox, bool inverse, cudaStream_t st) {
  const int64_t total = B * S * H * (D / 2);
  int64_t blocks = (total + 255) / 256;
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  if (blocks < 1) return nullptr;
  rope_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, st>>>(static_cast<const T*>(x), static_cast<T*>(y), cos,
                                                                  sin, pos, batched, P, S, H, D / 2, neox,
                                                                  inverse ? -1.f : 1.f, total);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* rope_apply(int dtype, const void* x, void* y, const float* cos, const float* sin, const int64_t* pos,
                       bool batched, int64_t P, int64_t B, int64_t S, int64_t H, int64_t D, bool neox, bool inverse,
                       void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return typed<float>(x, y, cos, sin, pos, batched, P, B, S, H, D, neox, inverse, s);
    case 1: return typed<__half>(x, y, cos, sin, pos, batched, P, B, S, H, D, neox, inverse, s);
    case 2: return typed<__nv_bfloat16>(x, y, cos, sin, pos, batched, P, B, S, H, D, neox, inverse, s);
    default: return "unsupported dtype";
  }
}

}  // namespace lf::cuda
