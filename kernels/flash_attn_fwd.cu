// flash_attn_fwd.cu — fused attention forward (FlashAttention-2 order), see flash_attn.cuh.
//
// One block of 4 warps per (64-query tile, q head, batch); warp w owns query rows 16w..16w+15
// of the tile, so the online-softmax statistics of a row never leave its quad of lanes.
// Per 64-key tile: S = Q K^T (mma.sync m16n8k16, Q and K via ldmatrix), mask, online softmax
// in fp32 (exp2 with the scale folded in), then O += P V with P taken straight from the
// S accumulators and V via ldmatrix.trans. K and V tiles stream in with cp.async: V(j) loads
// while S(j) is computed, K(j+1) while the softmax and P V(j) run. Shared tiles are padded by
// 16 bytes per row so the 8 row addresses of every ldmatrix hit distinct banks.
// Query tiles are issued last-first so that the long causal tiles start early.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "flash_attn.cuh"
#include "flash_attn_common.cuh"
#include "mma.cuh"

namespace lf::cuda {
namespace {

using namespace mma;
using fa::kLog2e;

constexpr int kBr = 64, kBc = 64, kWarps = 4, kThreads = 32 * kWarps;

template <int D>
constexpr size_t fwd_smem_bytes() {
  return size_t(kBr + 2 * kBc) * (D + 8) * 2;
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FlashAttnParams p) {
  constexpr int LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBr * LD;
  T* sV = sK + kBc * LD;

  const int b = blockIdx.z, h = blockIdx.y;
  const int hk = h / (p.heads / p.kv_heads);
  const fa::Slice sl = fa::slice_of(p, b, h, hk);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBr;
  if (q0 >= sl.sq) return;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t = lane & 3;
  const int off = sl.sk - sl.sq;

  const T* Q = static_cast<const T*>(p.q) + sl.q_off;
  const T* K = static_cast<const T*>(p.k) + sl.k_off;
  const T* V = static_cast<const T*>(p.v) + sl.k_off;
  T* O = static_cast<T*>(p.out) + sl.q_off;
  float* L = p.lse + sl.lse_off;

  int kbeg, kend;
  fa::key_range(q0, min(q0 + kBr, sl.sq), sl.sk, off, p.causal, p.window, kBc, &kbeg, &kend);
  const int ntiles = kend > kbeg ? (kend - kbeg + kBc - 1) / kBc : 0;
  if (ntiles == 0) {  // no query of this tile sees a key: zeros, lse = -inf
    for (int i = tid; i < kBr * D; i += kThreads) {
      const int r = i / D, c = i % D;
      if (q0 + r < sl.sq) O[int64_t(q0 + r) * p.q_row + c] = T(0.f);
    }
    for (int r = tid; r < kBr; r += kThreads)
      if (q0 + r < sl.sq) L[q0 + r] = -INFINITY;
    return;
  }

  fa::load_tile<T, kBr, D, LD, kThreads>(sQ, Q, p.q_row, q0, sl.sq, tid);
  fa::load_tile<T, kBc, D, LD, kThreads>(sK, K, p.k_row, kbeg, sl.sk, tid);
  cp_async_commit();

  const float sl2 = p.scale * kLog2e;
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row_lo = q0 + w * 16 + g;  // this thread's rows: row_lo and row_lo + 8

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = kbeg + it * kBc;
    fa::load_tile<T, kBc, D, LD, kThreads>(sV, V, p.k_row, k0, sl.sk, tid);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K(it) have landed
    __syncthreads();

    float s[kBc / 8][4];
#pragma unroll
    for (int i = 0; i < kBc / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4(a, a_frag_addr(sQ, LD, w * 16, kk * 16, lane));
#pragma unroll
      for (int nn = 0; nn < kBc / 16; ++nn) {
        uint32_t bb[4];
        ldsm_x4(bb, b_frag_addr(sK, LD, nn * 16, kk * 16, lane));
        MmaOp<T>::run(s[2 * nn], a, bb[0], bb[1]);
        MmaOp<T>::run(s[2 * nn + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();  // every warp is done with sK
    if (it + 1 < ntiles) fa::load_tile<T, kBc, D, LD, kThreads>(sK, K, p.k_row, k0 + kBc, sl.sk, tid);
    cp_async_commit();  // (possibly empty) group K(it+1)

    // Mask only the tiles that straddle a boundary (block-uniform test).
    const bool need_mask = k0 + kBc > sl.sk || (p.causal && k0 + kBc - 1 > q0 + off) ||
                           (p.window >= 0 && k0 < q0 + kBr - 1 + off - p.window);
    if (need_mask) {
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = row_lo + (e >> 1) * 8, j = k0 + nt * 8 + 2 * t + (e & 1);
          if (!fa::visible(i, j, sl.sk, off, p.causal, p.window)) s[nt][e] = -INFINITY;
        }
    }

    // Online softmax, rows row_lo (rh = 0: s[.][0..1]) and row_lo + 8 (rh = 1: s[.][2..3]).
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float mx = m[rh];
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * rh], s[nt][2 * rh + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mu = mx == -INFINITY ? 0.f : mx * sl2;
      const float corr = exp2f(m[rh] * sl2 - mu);  // 0 while the row has seen nothing
      m[rh] = mx;
      float rs = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = exp2f(fmaf(s[nt][2 * rh + e], sl2, -mu));
          s[nt][2 * rh + e] = pe;
          rs += pe;
        }
      l[rh] = l[rh] * corr + rs;  // this thread's columns only; summed over the quad at the end
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        acc[dt][2 * rh] *= corr;
        acc[dt][2 * rh + 1] *= corr;
      }
    }

    cp_async_wait<1>();  // V(it) has landed (K(it+1) may still be in flight)
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      a[0] = MmaOp<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      a[1] = MmaOp<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      a[2] = MmaOp<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = MmaOp<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bb[4];
        ldsm_x4_t(bb, bt_frag_addr(sV, LD, kk * 16, dn * 16, lane));
        MmaOp<T>::run(acc[2 * dn], a, bb[0], bb[1]);
        MmaOp<T>::run(acc[2 * dn + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();  // every warp is done with sV before the next V load
  }
  cp_async_wait<0>();

#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float lt = l[rh];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    // lt == 0: the row saw no key (zeros, lse -inf); a NaN score stays NaN in out and lse, as on CPU
    const float inv = lt == 0.f ? 0.f : 1.f / lt;
    const int row = row_lo + 8 * rh;
    if (row < sl.sq) {
      T* orow = O + int64_t(row) * p.q_row;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const uint32_t v = MmaOp<T>::pack(acc[dt][2 * rh] * inv, acc[dt][2 * rh + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t) = v;
      }
      if (t == 0) L[row] = lt == 0.f ? -INFINITY : m[rh] * p.scale + logf(lt);
    }
  }
}

template <class T, int D>
const char* launch(const FlashAttnParams& p, cudaStream_t s) {
  constexpr size_t smem = fwd_smem_bytes<D>();
  auto kern = fwd_kernel<T, D>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return cudaGetErrorString(e);
  }
  const dim3 grid((p.max_seqlen_q + kBr - 1) / kBr, p.heads, p.batch);
  kern<<<grid, kThreads, smem, s>>>(p);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* flash_attn_fwd(const FlashAttnParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.batch == 0 || p.max_seqlen_q == 0) return nullptr;
  if (p.max_seqlen_q > 0x7fffffff / 2 || p.batch > 65535 || p.heads > 65535) return "attention: grid too large";
  if (p.dtype == 1 && p.head_dim == 64) return launch<__half, 64>(p, s);
  if (p.dtype == 1 && p.head_dim == 128) return launch<__half, 128>(p, s);
  if (p.dtype == 2 && p.head_dim == 64) return launch<__nv_bfloat16, 64>(p, s);
  if (p.dtype == 2 && p.head_dim == 128) return launch<__nv_bfloat16, 128>(p, s);
  return "attention: CUDA kernels take float16/bfloat16 with head dim 64 or 128";
}

}  // namespace lf::cuda
