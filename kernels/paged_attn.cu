// paged_attn.cu — CUDA paged KV cache: append (scatter new rows into pages) and decode
// attention over the pages with split-K and a combine pass (see paged_attn.cuh).
//
// Decode: one block (4 warps) per (split of the positions, kv head, group of <= 8 q heads,
// sequence). Each token's K and V rows are read once for all the q heads that share the kv
// head (GQA). A token is handled by LT = head_dim / (16 bytes / element) lanes, each holding
// 16 bytes of K and V, so a warp covers 32 / LT tokens per step ("streams"); every stream keeps
// its own online softmax (max, sum, accumulator) per head in registers, with the scale and
// log2(e) folded into q so that exp2 is the only transcendental. The streams are merged in
// shared memory at the end. Four tokens per stream are loaded before any is used, so each
// lane has 8 independent 16-byte loads in flight.
// With more than one split, each split writes its normalised output and log2-sum-exp to the
// partial buffers and combine_kernel merges them (weights exp2(lse_s - max)).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "paged_attn.cuh"

namespace lf::cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kMaxGroup = 8, kUnroll = 4, kMaxSplits = 64;
// GM: q heads per block held in registers (4 when the GQA group has <= 4 heads, else 8).

// ---- append ---------------------------------------------------------------------------------
template <class U>
__global__ void append_kernel(const PagedAppendParams p) {
  const int64_t b = blockIdx.y, i = blockIdx.x;
  const int64_t cnt = p.counts ? p.counts[b] : p.n_new;
  if (i >= cnt) return;
  const int64_t pos = int64_t(p.seq_lens[b]) + i;
  if (pos < 0 || pos >= p.max_blocks * p.block_size) return;
  const int32_t blk = p.table[b * p.max_blocks + pos / p.block_size];
  if (blk < 0 || blk >= p.num_blocks) return;
  const int64_t units = p.row_elems * p.elem_size / int64_t(sizeof(U));
  const int64_t dst = (int64_t(blk) * p.block_size + pos % p.block_size) * units;
  const int64_t src = (b * p.n_new + i) * units;
  const U* kn = static_cast<const U*>(p.k_new) + src;
  const U* vn = static_cast<const U*>(p.v_new) + src;
  U* kd = static_cast<U*>(p.k_pool) + dst;
  U* vd = static_cast<U*>(p.v_pool) + dst;
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
    kd[u] = kn[u];
    vd[u] = vn[u];
  }
}

// ---- decode ---------------------------------------------------------------------------------
__device__ __forceinline__ void unpack(const uint4& r, float* f, float) {
  f[0] = __uint_as_float(r.x);
  f[1] = __uint_as_float(r.y);
  f[2] = __uint_as_float(r.z);
  f[3] = __uint_as_float(r.w);
}
__device__ __forceinline__ void unpack(const uint4& r, float* f, __half) {
  const __half2* h = reinterpret_cast<const __half2*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void unpack(const uint4& r, float* f, __nv_bfloat16) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <class T, int D>
struct DecodeCfg {
  static constexpr int EPL = 16 / int(sizeof(T));  // elements per lane (one 16-byte load)
  static constexpr int LT = D / EPL;               // lanes per token
  static constexpr int TPW = 32 / LT;              // tokens (streams) per warp
  static constexpr int NS = TPW * kWarps;          // streams per block
  static_assert(LT >= 1 && LT <= 32 && 32 % LT == 0, "head dim / dtype combination");
};

template <class T, int D, int GM>
__global__ void __launch_bounds__(kThreads) decode_kernel(const PagedDecodeParams p) {
  using Cfg = DecodeCfg<T, D>;
  constexpr int EPL = Cfg::EPL, LT = Cfg::LT, TPW = Cfg::TPW, NS = Cfg::NS;
  __shared__ float sM[NS][GM], sL[NS][GM];
  __shared__ float sAcc[NS][GM][D];

  const int b = blockIdx.z, split = blockIdx.x;
  const int G = p.n_heads / p.n_kv_heads, groups = (G + GM - 1) / GM;
  const int hk = blockIdx.y / groups, h0 = hk * G + (blockIdx.y % groups) * GM;
  const int ng = min(GM, hk * G + G - h0);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int sub = lane / LT, d0 = (lane % LT) * EPL, stream = w * TPW + sub;

  const int64_t cap = p.max_blocks * p.block_size;
  int64_t len = p.seq_lens[b];
  len = len < 0 ? 0 : len > cap ? cap : len;
  const int64_t t0 = int64_t(split) * p.split_tokens;
  const int64_t t1 = min(len, t0 + int64_t(p.split_tokens));

  // q (pre-scaled by scale * log2 e) for this lane's EPL dims of each head.
  const float qs = p.scale * 1.4426950408889634f;
  float qf[GM][EPL];
  const T* Q = static_cast<const T*>(p.q) + (int64_t(b) * p.n_heads + h0) * D + d0;
#pragma unroll
  for (int gi = 0; gi < GM; ++gi)
#pragma unroll
    for (int e = 0; e < EPL; ++e) qf[gi][e] = gi < ng ? to_f(Q[gi * D + e]) * qs : 0.f;

  float m[GM], l[GM], acc[GM][EPL];
#pragma unroll
  for (int gi = 0; gi < GM; ++gi) {
    m[gi] = -INFINITY;
    l[gi] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[gi][e] = 0.f;
  }

  const int64_t row = int64_t(p.n_kv_heads) * D;  // elements per pool slot
  const T* Kp = static_cast<const T*>(p.k_pool) + int64_t(hk) * D + d0;
  const T* Vp = static_cast<const T*>(p.v_pool) + int64_t(hk) * D + d0;
  const int32_t* table = p.table + int64_t(b) * p.max_blocks;

  // The loop bounds are uniform over the warp (every lane reaches the full-mask shuffles);
  // lanes whose token is past the end or on an invalid block compute on zeros and skip the update.
  for (int64_t wb = t0 + int64_t(w) * TPW; wb < t1; wb += int64_t(NS) * kUnroll) {
    uint4 kr[kUnroll], vr[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t tok = wb + sub + int64_t(u) * NS;
      ok[u] = false;
      kr[u] = vr[u] = make_uint4(0u, 0u, 0u, 0u);
      if (tok < t1) {
        const int32_t blk = table[tok / p.block_size];
        if (blk >= 0 && blk < p.num_blocks) {
          ok[u] = true;
          const int64_t o = (int64_t(blk) * p.block_size + tok % p.block_size) * row;
          kr[u] = __ldg(reinterpret_cast<const uint4*>(Kp + o));
          vr[u] = __ldg(reinterpret_cast<const uint4*>(Vp + o));
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[EPL], vf[EPL];
      unpack(kr[u], kf, T());
      unpack(vr[u], vf, T());
#pragma unroll
      for (int gi = 0; gi < GM; ++gi) {
        if (gi >= ng) break;  // ng is uniform over the block
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) s = fmaf(qf[gi][e], kf[e], s);
#pragma unroll
        for (int o = LT / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (ok[u]) {
          const float mn = fmaxf(m[gi], s);
          const float corr = exp2f(m[gi] - mn), pe = exp2f(s - mn);
          m[gi] = mn;
          l[gi] = l[gi] * corr + pe;
#pragma unroll
          for (int e = 0; e < EPL; ++e) acc[gi][e] = fmaf(acc[gi][e], corr, pe * vf[e]);
        }
      }
    }
  }

  // Merge the streams.
#pragma unroll
  for (int gi = 0; gi < GM; ++gi) {
    if (lane % LT == 0) {
      sM[stream][gi] = m[gi];
      sL[stream][gi] = l[gi];
    }
#pragma unroll
    for (int e = 0; e < EPL; ++e) sAcc[stream][gi][d0 + e] = acc[gi][e];
  }
  __syncthreads();
  const int64_t bh0 = int64_t(b) * p.n_heads + h0;
  for (int i = threadIdx.x; i < ng * D; i += kThreads) {
    const int gi = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int s = 0; s < NS; ++s) M = fmaxf(M, sM[s][gi]);
    float sum = 0.f, a = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        const float wgt = exp2f(sM[s][gi] - M);
        sum = fmaf(wgt, sL[s][gi], sum);
        a = fmaf(wgt, sAcc[s][gi][d], a);
      }
    }
    const float o = sum > 0.f ? a / sum : 0.f;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[(bh0 + gi) * D + d] = from_f<T>(o);
    } else {
      const int64_t slot = (bh0 + gi) * p.num_splits + split;
      p.partial_out[slot * D + d] = o;
      if (d == 0) p.partial_lse[slot] = sum > 0.f ? M + log2f(sum) : -INFINITY;
    }
  }
}

template <class T, int D>
__global__ void __launch_bounds__(D) combine_kernel(const PagedDecodeParams p) {
  const int64_t bh = int64_t(blockIdx.y) * p.n_heads + blockIdx.x;
  const int d = threadIdx.x;
  const float* lse = p.partial_lse + bh * p.num_splits;
  float M = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) M = fmaxf(M, lse[s]);
  float sum = 0.f, a = 0.f;
  if (M != -INFINITY)
    for (int s = 0; s < p.num_splits; ++s) {
      const float wgt = exp2f(lse[s] - M);
      sum += wgt;
      a = fmaf(wgt, p.partial_out[(bh * p.num_splits + s) * D + d], a);
    }
  static_cast<T*>(p.out)[bh * D + d] = from_f<T>(sum > 0.f ? a / sum : 0.f);
}

template <class T, int D>
const char* launch_decode(const PagedDecodeParams& p, cudaStream_t s) {
  const int G = p.n_heads / p.n_kv_heads, gm = G <= 4 ? 4 : kMaxGroup, groups = (G + gm - 1) / gm;
  const dim3 grid(p.num_splits, p.n_kv_heads * groups, p.batch);
  if (gm == 4)
    decode_kernel<T, D, 4><<<grid, kThreads, 0, s>>>(p);
  else
    decode_kernel<T, D, kMaxGroup><<<grid, kThreads, 0, s>>>(p);
  if (p.num_splits > 1) combine_kernel<T, D><<<dim3(p.n_heads, p.batch), D, 0, s>>>(p);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* paged_kv_append(const PagedAppendParams& p, void* stream) {
  if (p.batch == 0 || p.n_new == 0) return nullptr;
  if (p.batch > 65535 || p.n_new > 0x7fffffff) return "paged_kv_append: batch too large";
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t bytes = p.row_elems * p.elem_size;
  const bool vec = bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(p.k_pool) | reinterpret_cast<uintptr_t>(p.v_pool) |
                                       reinterpret_cast<uintptr_t>(p.k_new) | reinterpret_cast<uintptr_t>(p.v_new)) %
                                              16 == 0;
  const dim3 grid(static_cast<unsigned>(p.n_new), static_cast<unsigned>(p.batch));
  if (vec)
    append_kernel<uint4><<<grid, 128, 0, s>>>(p);
  else if (bytes % 2 == 0)
    append_kernel<uint16_t><<<grid, 128, 0, s>>>(p);
  else
    return "paged_kv_append: row size must be a multiple of 2 bytes";
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

int64_t paged_decode_plan(PagedDecodeParams& p, int64_t max_len, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    sms = 108;
  }
  const int64_t G = p.n_heads / p.n_kv_heads, gm = G <= 4 ? 4 : kMaxGroup, groups = (G + gm - 1) / gm;
  int64_t blocks = int64_t(p.batch) * p.n_kv_heads * groups;
  if (blocks < 1) blocks = 1;
  const int64_t cap = p.max_blocks * p.block_size;
  if (max_len > cap) max_len = cap;
  if (max_len < 1) max_len = 1;
  // Enough blocks for about 4 waves' worth of residency, splits of at least 256 positions.
  int64_t n = (4 * int64_t(sms) + blocks - 1) / blocks;
  const int64_t by_len = (max_len + 255) / 256;
  n = n < by_len ? n : by_len;
  n = n < kMaxSplits ? n : kMaxSplits;
  n = n < 1 ? 1 : n;
  int64_t per = (max_len + n - 1) / n;
  per = (per + 15) / 16 * 16;
  n = (max_len + per - 1) / per;
  p.num_splits = static_cast<int>(n);
  p.split_tokens = static_cast<int>(per);
  return n > 1 ? int64_t(p.batch) * p.n_heads * n * (p.head_dim + 1) : 0;
}

const char* paged_decode_attention(const PagedDecodeParams& p, void* stream) {
  if (p.batch == 0) return nullptr;
  if (p.batch > 65535 || int64_t(p.n_kv_heads) * ((p.n_heads / p.n_kv_heads + kMaxGroup - 1) / kMaxGroup) > 65535 ||
      p.n_heads > 0x7fffffff / 8)
    return "paged_decode_attention: too many sequences or heads";
  if (p.num_splits < 1 || p.split_tokens < 1 || (p.num_splits > 1 && (!p.partial_out || !p.partial_lse)))
    return "paged_decode_attention: bad split plan";
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == 0 && p.head_dim == 64) return launch_decode<float, 64>(p, s);
  if (p.dtype == 0 && p.head_dim == 128) return launch_decode<float, 128>(p, s);
  if (p.dtype == 1 && p.head_dim == 64) return launch_decode<__half, 64>(p, s);
  if (p.dtype == 1 && p.head_dim == 128) return launch_decode<__half, 128>(p, s);
  if (p.dtype == 2 && p.head_dim == 64) return launch_decode<__nv_bfloat16, 64>(p, s);
  if (p.dtype == 2 && p.head_dim == 128) return launch_decode<__nv_bfloat16, 128>(p, s);
  return "paged_decode_attention: CUDA kernels take head dim 64 or 128";
}

}  // namespace lf::cuda
