// int8_matmul.cu — CUDA int8 matmuls: weight-only (decode GEMV and prefill GEMM) and W8A8
// on the int8 tensor cores (see int8_matmul.cuh).
//
// Weight-only dequantisation is float(q) * scale[n] (one float32 rounding, bit-identical to
// the torch reference q.float() * scale[:, None]), rounded to bfloat16 for mma.m16n8k16.
// W8A8 multiplies int8 tiles with mma.m16n8k32.s8 into int32 (exact for K < 2^17: every
// product is at most 127^2 < 2^14) and scales once in the epilogue:
// y = float(acc) * xscale[m] * scale[n].
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_tile.cuh"
#include "int8_matmul.cuh"
#include "skinny_gemm.cuh"

namespace lf::cuda {
namespace {

__device__ __forceinline__ uint32_t deq8_pair(uint32_t half16, float s) {
  const float lo = __fmul_rn(static_cast<float>(static_cast<int8_t>(half16 & 0xFFu)), s);
  const float hi = __fmul_rn(static_cast<float>(static_cast<int8_t>((half16 >> 8) & 0xFFu)), s);
  return pack2<__nv_bfloat16>(lo, hi);
}

// The weight format of the skinny kernel: 64 bytes of a row = 64 weights = 4 mma k-steps;
// byte 2t.. of each 16-byte run is lane t's b[0], byte 2t+8.. its b[1].
struct Int8Skinny {
  static constexpr int kK = 64;
  static constexpr int kAuxFloats = kSkinnyRows;  // the block's per-row scales
  const uint8_t* data;
  int64_t row_bytes;
  const float* scale;

  __device__ void stage_aux(float* aux, int n0, int /*kb*/, int N) const {
    if (threadIdx.x < kSkinnyRows) {
      const int n = n0 + threadIdx.x;
      cp_async4(&aux[threadIdx.x], n < N ? scale + n : scale, n < N);
    }
  }

  __device__ void frags(const uint8_t* wrow, const float* aux, int row, int t, uint32_t (&b)[kK / 16][2]) const {
    const float s = aux[row];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 u = *reinterpret_cast<const uint4*>(wrow + j * 16);
      uint32_t lo, hi;
      lane_halves(u, t, lo, hi);
      b[j][0] = deq8_pair(lo, s);
      b[j][1] = deq8_pair(hi, s);
    }
  }
};

struct StoreF32 {
  float* y;
  int ld;
  __device__ void operator()(int m, int n, float v) const { y[static_cast<int64_t>(m) * ld + n] = v; }
};

struct StoreW8A8 {
  float* y;
  const float* xscale;
  const float* scale;
  int ld;
  __device__ void operator()(int m, int n, int acc) const {
    y[static_cast<int64_t>(m) * ld + n] = static_cast<float>(acc) * xscale[m] * scale[n];
  }
};

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* int8_matmul(const void* x, const int8_t* q, const float* scale, float* y, float* ws, int64_t M,
                        int64_t N, int64_t K, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  if (M <= kSkinnyMaxM) {
    Int8Skinny w{reinterpret_cast<const uint8_t*>(q), K, scale};
    return skinny_launch(xb, w, y, ws, kInt8MaxSplits, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), s);
  }
  RowLoader<__nv_bfloat16, __nv_bfloat16> la{xb, nullptr, nullptr, static_cast<int>(M), static_cast<int>(K), true};
  RowLoader<int8_t, __nv_bfloat16, true> lb{q, scale, nullptr, static_cast<int>(N), static_cast<int>(K), aligned16(q)};
  gemm_tile_kernel<MmaBf16><<<gemm_tile_grid(M, N), kTileThreads, 0, s>>>(
      la, lb, StoreF32{y, static_cast<int>(N)}, static_cast<int>(M), static_cast<int>(N),
      static_cast<int>((K + 31) / 32));
  return last_error();
}

const char* w8a8_matmul(const int8_t* xq, const float* xscale, const int8_t* q, const float* scale, float* y,
                        int64_t M, int64_t N, int64_t K, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const bool vec = K % 16 == 0;
  RowLoader<int8_t, int8_t> la{xq, nullptr, nullptr, static_cast<int>(M), static_cast<int>(K), vec && aligned16(xq)};
  RowLoader<int8_t, int8_t> lb{q, nullptr, nullptr, static_cast<int>(N), static_cast<int>(K), vec && aligned16(q)};
  gemm_tile_kernel<MmaS8><<<gemm_tile_grid(M, N), kTileThreads, 0, s>>>(
      la, lb, StoreW8A8{y, xscale, scale, static_cast<int>(N)}, static_cast<int>(M), static_cast<int>(N),
      static_cast<int>((K + 63) / 64));
  return last_error();
}

}  // namespace lf::cuda
