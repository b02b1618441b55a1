// swiglu.cu — CUDA SwiGLU forward/backward, one fused pass (see swiglu.cuh).
// Grid-stride over (row, column pack); 16-byte packs when every row stride, the column
// count and every pointer allow it, else one element per thread. float32 maths.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "tensor_core.cuh"
#include "swiglu.cuh"

namespace lf::cuda {
namespace {

template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + expf(-g)); }

template <class T, int V>
__global__ void fwd_kernel(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, int64_t rows,
                           int64_t packs, int64_t gs, int64_t us, int64_t ys) {
  using P = Vec<T, V>;
  const int64_t total = rows * packs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / packs, c = (i % packs) * V;
    const P gv = *reinterpret_cast<const P*>(g + r * gs + c);
    const P uv = *reinterpret_cast<const P*>(u + r * us + c);
    P o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float gf = to_float(gv.v[j]);
      o.v[j] = from_float<T>(gf * sigmoidf(gf) * to_float(uv.v[j]));
    }
    *reinterpret_cast<P*>(y + r * ys + c) = o;
  }
}

template <class T, int V>
__global__ void bwd_kernel(const T* __restrict__ dy, const T* __restrict__ g, const T* __restrict__ u,
                           T* __restrict__ dg, T* __restrict__ du, int64_t rows, int64_t packs, int64_t dys,
                           int64_t gs, int64_t us, int64_t dgs, int64_t dus) {
  using P = Vec<T, V>;
  const int64_t total = rows * packs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / packs, c = (i % packs) * V;
    const P d = *reinterpret_cast<const P*>(dy + r * dys + c);
    const P gv = *reinterpret_cast<const P*>(g + r * gs + c);
    const P uv = *reinterpret_cast<const P*>(u + r * us + c);
    P og, ou;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float df = to_float(d.v[j]), gf = to_float(gv.v[j]), uf = to_float(uv.v[j]);
      const float s = sigmoidf(gf);
      og.v[j] = from_float<T>(df * uf * s * (1.f + gf * (1.f - s)));
      ou.v[j] = from_float<T>(df * gf * s);
    }
    *reinterpret_cast<P*>(dg + r * dgs + c) = og;
    *reinterpret_cast<P*>(du + r * dus + c) = ou;
  }
}

unsigned grid_for(int64_t total) {
  int64_t b = (total + 255) / 256;
  return static_cast<unsigned>(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

bool vec_ok(int V, int64_t cols, std::initializer_list<int64_t> strides, std::initializer_list<const void*> ptrs) {
  if (cols % V) return false;
  for (int64_t s : strides)
    if (s % V) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <class T>
const char* fwd_typed(const void* g, const void* u, void* y, int64_t rows, int64_t cols, int64_t gs, int64_t us,
                      int64_t ys, cudaStream_t s) {
  constexpr int V = 16 / sizeof(T);
  auto G = static_cast<const T*>(g), U = static_cast<const T*>(u);
  auto Y = static_cast<T*>(y);
  if (vec_ok(V, cols, {gs, us, ys}, {g, u, y})) {
    const int64_t packs = cols / V;
    fwd_kernel<T, V><<<grid_for(rows * packs), 256, 0, s>>>(G, U, Y, rows, packs, gs, us, ys);
  } else {
    fwd_kernel<T, 1><<<grid_for(rows * cols), 256, 0, s>>>(G, U, Y, rows, cols, gs, us, ys);
  }
  return last_error();
}

template <class T>
const char* bwd_typed(const void* dy, const void* g, const void* u, void* dg, void* du, int64_t rows, int64_t cols,
                      int64_t dys, int64_t gs, int64_t us, int64_t dgs, int64_t dus, cudaStream_t s) {
  constexpr int V = 16 / sizeof(T);
  auto DY = static_cast<const T*>(dy), G = static_cast<const T*>(g), U = static_cast<const T*>(u);
  auto DG = static_cast<T*>(dg), DU = static_cast<T*>(du);
  if (vec_ok(V, cols, {dys, gs, us, dgs, dus}, {dy, g, u, dg, du})) {
    const int64_t packs = cols / V;
    bwd_kernel<T, V><<<grid_for(rows * packs), 256, 0, s>>>(DY, G, U, DG, DU, rows, packs, dys, gs, us, dgs, dus);
  } else {
    bwd_kernel<T, 1><<<grid_for(rows * cols), 256, 0, s>>>(DY, G, U, DG, DU, rows, cols, dys, gs, us, dgs, dus);
  }
  return last_error();
}

}  // namespace

const char* swiglu_fwd(int dtype, const void* g, const void* u, void* y, int64_t rows, int64_t cols,
                       int64_t g_stride, int64_t u_stride, int64_t y_stride, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return fwd_typed<float>(g, u, y, rows, cols, g_stride, u_stride, y_stride, s);
    case 1: return fwd_typed<__half>(g, u, y, rows, cols, g_stride, u_stride, y_stride, s);
    case 2: return fwd_typed<__nv_bfloat16>(g, u, y, rows, cols, g_stride, u_stride, y_stride, s);
    default: return "unsupported dtype";
  }
}

const char* swiglu_bwd(int dtype, const void* dy, const void* g, const void* u, void* dg, void* du, int64_t rows,
                       int64_t cols, int64_t dy_stride, int64_t g_stride, int64_t u_stride, int64_t dg_stride,
                       int64_t du_stride, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return bwd_typed<float>(dy, g, u, dg, du, rows, cols, dy_stride, g_stride, u_stride, dg_stride, du_stride, s);
    case 1: return bwd_typed<__half>(dy, g, u, dg, du, rows, cols, dy_stride, g_stride, u_stride, dg_stride, du_stride, s);
    case 2:
      return bwd_typed<__nv_bfloat16>(dy, g, u, dg, du, rows, cols, dy_stride, g_stride, u_stride, dg_stride,
                                      du_stride, s);
    default: return "unsupported dtype";
  }
}

}  // namespace lf::cuda
