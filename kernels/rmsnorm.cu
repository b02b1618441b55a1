// rmsnorm.cu — CUDA RMSNorm forward/backward, fp32/fp16/bf16, any hidden size,
// with the fused residual-add variant (see rmsnorm.cuh; maths in csrc/cpu/rmsnorm.h).
//
// Forward: one block per row (grid-stride). Rows whose 16-byte packs fit in
// registers (<= 4 per thread) are read from memory exactly once; longer rows take a
// second pass that hits L1/L2. Statistics in fp32.
// Backward: a fixed grid of G blocks, each owning rows b, b+G, ...; every thread
// owns the same columns in every row, so its dw partial sums need no atomics
// (shared memory when hidden*4 <= 48 KiB, else the block's workspace row). A
// second kernel adds the G partial rows in a fixed order: deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rmsnorm.cuh"

namespace lf::cuda {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Sum over the block; every thread gets the result. `red` holds 33 floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nwarps ? red[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red[32] = s;
  }
  __syncthreads();
  return red[32];
}

// ---- forward ---------------------------------------------------------------------
// NP > 0: each thread keeps its NP packs in registers (nvec <= NP * blockDim.x).
// NP == 0: any length; the second pass re-reads the row.
template <class T, int VEC, int NP, bool RES>
__global__ void __launch_bounds__(1024) fwd_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                                   const T* __restrict__ w, T* __restrict__ y, T* h_out,
                                                   float* __restrict__ rstd, int64_t rows, int hidden, float eps) {
  using P = Pack<T, VEC>;
  __shared__ float red[33];
  const int nvec = hidden / VEC;
  const P* wp = reinterpret_cast<const P*>(w);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t off = r * hidden;
    const P* xp = reinterpret_cast<const P*>(x + off);
    const P* rp = RES ? reinterpret_cast<const P*>(res + off) : nullptr;
    P* hp = RES ? reinterpret_cast<P*>(h_out + off) : nullptr;
    P* yp = reinterpret_cast<P*>(y + off);
    float ss = 0.f;
    if constexpr (NP > 0) {
      P cache[NP];
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < nvec) {
          P p = xp[i];
          if constexpr (RES) {
            P q = rp[i];
#pragma unroll
            for (int j = 0; j < VEC; ++j) p.v[j] = from_f<T>(to_f(p.v[j]) + to_f(q.v[j]));
            hp[i] = p;
          }
#pragma unroll
          for (int j = 0; j < VEC; ++j) ss += to_f(p.v[j]) * to_f(p.v[j]);
          cache[k] = p;
        }
      }
      const float inv = 1.f / sqrtf(block_sum(ss, red) / hidden + eps);
      if (threadIdx.x == 0) rstd[r] = inv;
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < nvec) {
          P o, wv = wp[i];
#pragma unroll
          for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(to_f(cache[k].v[j]) * inv * to_f(wv.v[j]));
          yp[i] = o;
        }
      }
    } else {
      for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        P p = xp[i];
        if constexpr (RES) {
          P q = rp[i];
#pragma unroll
          for (int j = 0; j < VEC; ++j) p.v[j] = from_f<T>(to_f(p.v[j]) + to_f(q.v[j]));
          hp[i] = p;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) ss += to_f(p.v[j]) * to_f(p.v[j]);
      }
      const float inv = 1.f / sqrtf(block_sum(ss, red) / hidden + eps);
      if (threadIdx.x == 0) rstd[r] = inv;
      const P* src = RES ? hp : xp;  // each thread re-reads only packs it wrote itself
      for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        P p = src[i], wv = wp[i], o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(to_f(p.v[j]) * inv * to_f(wv.v[j]));
        yp[i] = o;
      }
    }
  }
}

// ---- backward ----------------------------------------------------------------------
template <class T, int VEC, bool SMEM_ACC, bool DRES>
__global__ void __launch_bounds__(1024) bwd_kernel(const T* __restrict__ dy, const T* __restrict__ h,
                                                   const T* __restrict__ w, const float* __restrict__ rstd,
                                                   const T* __restrict__ dh_out, T* __restrict__ dx,
                                                   float* __restrict__ ws, int64_t rows, int hidden) {
  using P = Pack<T, VEC>;
  __shared__ float red[33];
  extern __shared__ float smem_acc[];
  float* acc = SMEM_ACC ? smem_acc : ws + static_cast<int64_t>(blockIdx.x) * hidden;
  const int nvec = hidden / VEC;
  const P* wp = reinterpret_cast<const P*>(w);
  for (int i = threadIdx.x; i < nvec; i += blockDim.x)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[i * VEC + j] = 0.f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t off = r * hidden;
    const P* dyp = reinterpret_cast<const P*>(dy + off);
    const P* hp = reinterpret_cast<const P*>(h + off);
    float dot = 0.f;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      P d = dyp[i], hv = hp[i], wv = wp[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) dot += to_f(d.v[j]) * to_f(wv.v[j]) * to_f(hv.v[j]);
    }
    dot = block_sum(dot, red);
    const float inv = rstd[r];
    const float k = inv * inv * inv * dot / hidden;
    P* dxp = reinterpret_cast<P*>(dx + off);
    const P* dhp = DRES ? reinterpret_cast<const P*>(dh_out + off) : nullptr;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      P d = dyp[i], hv = hp[i], wv = wp[i], o;
      P e;
      if constexpr (DRES) e = dhp[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float df = to_f(d.v[j]), hf = to_f(hv.v[j]);
        float out = df * to_f(wv.v[j]) * inv - hf * k;
        if constexpr (DRES) out += to_f(e.v[j]);
        o.v[j] = from_f<T>(out);
        acc[i * VEC + j] += df * hf * inv;
      }
      dxp[i] = o;
    }
  }
  if constexpr (SMEM_ACC) {
    float* dst = ws + static_cast<int64_t>(blockIdx.x) * hidden;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x)
#pragma unroll
      for (int j = 0; j < VEC; ++j) dst[i * VEC + j] = acc[i * VEC + j];
  }
}

template <class T>
__global__ void dw_reduce_kernel(const float* __restrict__ ws, int64_t ws_rows, int hidden, T* __restrict__ dw) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  float s = 0.f;
  for (int64_t b = 0; b < ws_rows; ++b) s += ws[b * hidden + c];
  dw[c] = from_f<T>(s);
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int threads_for(int nvec, int per_thread) {
  int t = (nvec + per_thread - 1) / per_thread;
  t = (t + 31) / 32 * 32;
  return t < 64 ? 64 : t > 1024 ? 1024 : t;
}

template <class T, int VEC, bool RES>
void launch_fwd(const T* x, const T* res, const T* w, T* y, T* h_out, float* rstd, int64_t rows, int hidden,
                float eps, cudaStream_t s) {
  const int nvec = hidden / VEC;
  const unsigned grid = static_cast<unsigned>(rows < 0x7fffffff ? rows : 0x7fffffff);
  if (nvec <= 1024) {
    const int t = threads_for(nvec, 1);
    fwd_kernel<T, VEC, 1, RES><<<grid, t, 0, s>>>(x, res, w, y, h_out, rstd, rows, hidden, eps);
  } else if (nvec <= 4 * 1024) {
    const int t = threads_for(nvec, 4);
    fwd_kernel<T, VEC, 4, RES><<<grid, t, 0, s>>>(x, res, w, y, h_out, rstd, rows, hidden, eps);
  } else {
    fwd_kernel<T, VEC, 0, RES><<<grid, 1024, 0, s>>>(x, res, w, y, h_out, rstd, rows, hidden, eps);
  }
}

template <class T>
const char* fwd_typed(const void* x, const void* res, const void* w, void* y, void* h_out, float* rstd,
                      int64_t rows, int64_t hidden, float eps, cudaStream_t s) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = hidden % V == 0 && aligned16(x) && aligned16(res) && aligned16(w) && aligned16(y) &&
                   aligned16(h_out);
  auto X = static_cast<const T*>(x), R = static_cast<const T*>(res), W = static_cast<const T*>(w);
  auto Y = static_cast<T*>(y), H = static_cast<T*>(h_out);
  const int hd = static_cast<int>(hidden);
  if (vec && res) launch_fwd<T, V, true>(X, R, W, Y, H, rstd, rows, hd, eps, s);
  else if (vec) launch_fwd<T, V, false>(X, R, W, Y, H, rstd, rows, hd, eps, s);
  else if (res) launch_fwd<T, 1, true>(X, R, W, Y, H, rstd, rows, hd, eps, s);
  else launch_fwd<T, 1, false>(X, R, W, Y, H, rstd, rows, hd, eps, s);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <class T, int VEC, bool DRES>
void launch_bwd(const T* dy, const T* h, const T* w, const float* rstd, const T* dh_out, T* dx, float* ws,
                int64_t grid, int64_t rows, int hidden, cudaStream_t s) {
  const int t = threads_for(hidden / VEC, 2);
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  // the shared-memory dW accumulator and the kernel's static reduction buffer (red[33]) must fit
  // the 48 KiB a launch gets without opting in
  if (smem + 33 * sizeof(float) <= 48 * 1024)
    bwd_kernel<T, VEC, true, DRES><<<static_cast<unsigned>(grid), t, smem, s>>>(dy, h, w, rstd, dh_out, dx, ws, rows, hidden);
  else
    bwd_kernel<T, VEC, false, DRES><<<static_cast<unsigned>(grid), t, 0, s>>>(dy, h, w, rstd, dh_out, dx, ws, rows, hidden);
}

template <class T>
const char* bwd_typed(const void* dy, const void* h, const void* w, const float* rstd, const void* dh_out, void* dx,
                      void* dw, float* ws, int64_t ws_rows, int64_t rows, int64_t hidden, cudaStream_t s) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = hidden % V == 0 && aligned16(dy) && aligned16(h) && aligned16(w) && aligned16(dh_out) &&
                   aligned16(dx) && aligned16(ws);
  const int64_t grid = rows < ws_rows ? (rows > 0 ? rows : 1) : ws_rows;
  auto DY = static_cast<const T*>(dy), H = static_cast<const T*>(h), W = static_cast<const T*>(w);
  auto DH = static_cast<const T*>(dh_out);
  auto DX = static_cast<T*>(dx);
  const int hd = static_cast<int>(hidden);
  if (vec && dh_out) launch_bwd<T, V, true>(DY, H, W, rstd, DH, DX, ws, grid, rows, hd, s);
  else if (vec) launch_bwd<T, V, false>(DY, H, W, rstd, DH, DX, ws, grid, rows, hd, s);
  else if (dh_out) launch_bwd<T, 1, true>(DY, H, W, rstd, DH, DX, ws, grid, rows, hd, s);
  else launch_bwd<T, 1, false>(DY, H, W, rstd, DH, DX, ws, grid, rows, hd, s);
  dw_reduce_kernel<T><<<static_cast<unsigned>((hidden + 255) / 256), 256, 0, s>>>(ws, grid, hd, static_cast<T*>(dw));
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* rmsnorm_fwd(int dtype, const void* x, const void* res, const void* w, void* y, void* h_out,
                        float* rstd, int64_t rows, int64_t hidden, float eps, void* stream) {
  if (hidden > 0x7fffffff) return "hidden size too large";
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return fwd_typed<float>(x, res, w, y, h_out, rstd, rows, hidden, eps, s);
    case 1: return fwd_typed<__half>(x, res, w, y, h_out, rstd, rows, hidden, eps, s);
    case 2: return fwd_typed<__nv_bfloat16>(x, res, w, y, h_out, rstd, rows, hidden, eps, s);
    default: return "unsupported dtype";
  }
}

int64_t rmsnorm_bwd_workspace_rows(int64_t rows, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    sms = 108;
  }
  const int64_t g = 2 * static_cast<int64_t>(sms);
  return rows < g ? (rows > 0 ? rows : 1) : g;
}

const char* rmsnorm_bwd(int dtype, const void* dy, const void* h, const void* w, const float* rstd,
                        const void* dh_out, void* dx, void* dw, float* workspace, int64_t ws_rows, int64_t rows,
                        int64_t hidden, void* stream) {
  if (hidden > 0x7fffffff) return "hidden size too large";
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return bwd_typed<float>(dy, h, w, rstd, dh_out, dx, dw, workspace, ws_rows, rows, hidden, s);
    case 1: return bwd_typed<__half>(dy, h, w, rstd, dh_out, dx, dw, workspace, ws_rows, rows, hidden, s);
    case 2: return bwd_typed<__nv_bfloat16>(dy, h, w, rstd, dh_out, dx, dw, workspace, ws_rows, rows, hidden, s);
    default: return "unsupported dtype";
  }
}

}  // namespace lf::cuda
