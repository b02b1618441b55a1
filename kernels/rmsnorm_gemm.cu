// rmsnorm_gemm.cu — CUDA RMSNorm fused into a tensor-core GEMM (see rmsnorm_gemm.cuh).
//
// Forward: a first kernel computes each row's rstd once (one warp per row, float32 sums);
// the GEMM's A loader then applies x * rstd[m] * g[k] in float while converting the tile
// for shared memory, so the normalised activations never exist in global memory.
// Backward: da = dy @ w (w's tiles read transposed), and dw = dy^T @ (x * rstd * g) with
// both operands read transposed and the normalisation again applied inside the loader.
// grad_x and grad_g follow from da with the RMSNorm backward (kernels/rmsnorm.cu).
// GEMM: gemm_tile.cuh (64 x 64 tiles, mma.m16n8k16, float32 accumulation).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_tile.cuh"
#include "rmsnorm_gemm.cuh"

namespace lf::cuda {
namespace {

template <class T>
__global__ void rstd_kernel(const T* __restrict__ x, float* __restrict__ rstd, int64_t M, int K, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t m = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5); m < M; m += warps) {
    const T* r = x + m * K;
    float ss = 0.f;
    for (int k = lane; k < K; k += 32) {
      const float v = to_float(r[k]);
      ss += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) rstd[m] = 1.f / sqrtf(ss / static_cast<float>(K) + eps);
  }
}

template <class T>
struct StoreT {
  T* y;
  int ld;
  __device__ void operator()(int m, int n, float v) const { y[static_cast<int64_t>(m) * ld + n] = from_float<T>(v); }
};

template <class T> struct MmaFor { using type = MmaBf16; };
template <> struct MmaFor<__half> { using type = MmaF16; };

template <class T>
bool rows_vec(const void* p, int64_t cols) {
  return aligned16(p) && (cols * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <class T>
const char* fwd_typed(const void* x, const void* g, const void* w, void* y, float* rstd, int64_t M, int64_t N,
                      int64_t K, float eps, cudaStream_t s) {
  using Mma = typename MmaFor<T>::type;
  using E = typename Mma::Elem;
  const T* X = static_cast<const T*>(x);
  int64_t blocks = (M + 7) / 8;  // 8 warps (rows) per block
  if (blocks > 65535) blocks = 65535;
  rstd_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, s>>>(X, rstd, M, static_cast<int>(K), eps);
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  RowLoader<T, E, true, true> la{X, rstd, static_cast<const T*>(g), m, k, rows_vec<T>(x, K)};
  RowLoader<T, E> lb{static_cast<const T*>(w), nullptr, nullptr, n, k, rows_vec<T>(w, K)};
  gemm_tile_kernel<Mma><<<gemm_tile_grid(M, N), kTileThreads, 0, s>>>(la, lb, StoreT<T>{static_cast<T*>(y), n}, m, n,
                                                                      (k + 31) / 32);
  return last_error();
}

template <class T>
const char* bwd_typed(const void* dy, const void* x, const void* g, const void* w, const float* rstd, void* da,
                      void* dw, int64_t M, int64_t N, int64_t K, cudaStream_t s) {
  using Mma = typename MmaFor<T>::type;
  using E = typename Mma::Elem;
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  const T* DY = static_cast<const T*>(dy);
  if (M == 0) {  // no rows: dw is all zeros, da is empty
    if (dw) cudaMemsetAsync(dw, 0, static_cast<size_t>(N * K) * sizeof(T), s);
    return last_error();
  }
  if (da) {  // da (M, K) = dy (M, N) @ w (N, K): reduction over n, w read transposed
    RowLoader<T, E> la{DY, nullptr, nullptr, m, n, rows_vec<T>(dy, N)};
    TransLoader<T, E> lb{static_cast<const T*>(w), nullptr, nullptr, n, k};
    gemm_tile_kernel<Mma><<<gemm_tile_grid(M, K), kTileThreads, 0, s>>>(la, lb, StoreT<T>{static_cast<T*>(da), k},
                                                                        m, k, (n + 31) / 32);
  }
  if (dw) {  // dw (N, K) = dy^T (N, M) @ xn (M, K): reduction over m, both read transposed
    TransLoader<T, E> la{DY, nullptr, nullptr, m, n};
    TransLoader<T, E, true, true> lb{static_cast<const T*>(x), rstd, static_cast<const T*>(g), m, k};
    gemm_tile_kernel<Mma><<<gemm_tile_grid(N, K), kTileThreads, 0, s>>>(la, lb, StoreT<T>{static_cast<T*>(dw), k},
                                                                        n, k, (m + 31) / 32);
  }
  return last_error();
}

}  // namespace

const char* rmsnorm_gemm_fwd(int dtype, const void* x, const void* g, const void* w, void* y, float* rstd,
                             int64_t M, int64_t N, int64_t K, float eps, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return fwd_typed<float>(x, g, w, y, rstd, M, N, K, eps, s);
    case 1: return fwd_typed<__half>(x, g, w, y, rstd, M, N, K, eps, s);
    case 2: return fwd_typed<__nv_bfloat16>(x, g, w, y, rstd, M, N, K, eps, s);
    default: return "unsupported dtype";
  }
}

const char* rmsnorm_gemm_bwd(int dtype, const void* dy, const void* x, const void* g, const void* w,
                             const float* rstd, void* da, void* dw, int64_t M, int64_t N, int64_t K, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return bwd_typed<float>(dy, x, g, w, rstd, da, dw, M, N, K, s);
    case 1: return bwd_typed<__half>(dy, x, g, w, rstd, da, dw, M, N, K, s);
    case 2: return bwd_typed<__nv_bfloat16>(dy, x, g, w, rstd, da, dw, M, N, K, s);
    default: return "unsupported dtype";
  }
}

}  // namespace lf::cuda
