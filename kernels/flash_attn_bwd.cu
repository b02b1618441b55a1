// flash_attn_bwd.cu — fused attention backward, see flash_attn.cuh. Deterministic: no atomics.
//
//   delta_kernel: delta_i = sum_d dout_id * out_id - dlse_i (one warp per query row).
//   dkdv_kernel:  one block per (64-key tile, kv head, batch); warp w owns keys 16w..16w+15.
//                 It walks every q head of the group and every query tile that can see its
//                 keys, recomputing in transposed form (keys are the MMA rows):
//                   S^T = K Q^T, P^T = exp(scale S^T - lse), dP^T = V dO^T,
//                   dV += P^T dO, dS^T = P^T (dP^T - delta), dK += dS^T Q,
//                 so dK and dV of a kv head are complete in registers, summed in a fixed order.
//   dq_kernel:    one block per (64-query tile, q head, batch); warp w owns 16 query rows:
//                   S = Q K^T, P = exp(scale S - lse), dP = dO V^T, dS = P (dP - delta),
//                   dQ += dS K.
// Recomputing S and dP in the dq pass costs two extra matmuls per tile against the
// atomic-add design, and buys bitwise-reproducible gradients and no fp32 dq buffer.
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

constexpr int kWarps = 4, kThreads = 32 * kWarps;

__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// ---- delta = rowsum(dout * out) - dlse ---------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kThreads) delta_kernel(const FlashAttnParams p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int hk = h / (p.heads / p.kv_heads);
  const fa::Slice sl = fa::slice_of(p, b, h, hk);
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= sl.sq) return;
  const T* o = static_cast<const T*>(p.out) + sl.q_off + int64_t(row) * p.q_row;
  const T* d = static_cast<const T*>(p.dout) + sl.q_off + int64_t(row) * p.q_row;
  float acc = 0.f;
  for (int c = lane; c < p.head_dim; c += 32) acc += to_f(o[c]) * to_f(d[c]);
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) {
    const float dl = p.dlse ? p.dlse[sl.lse_off + row] : 0.f;
    p.delta[sl.lse_off + row] = acc - dl;
  }
}

// ---- dK, dV ---------------------------------------------------------------------------------
// BQ query columns per inner tile (32 for D = 128 keeps the accumulators in registers).
// Q, dO, lse and delta tiles are double-buffered: tile n + 1 loads (cp.async) while tile n
// is computed.
template <int D> struct DkdvCfg {
  static constexpr int kBk = 64, kBq = D == 128 ? 32 : 64, LD = D + 8;
  static constexpr size_t stage = size_t(2 * kBq) * LD * 2 + 2 * kBq * sizeof(float);  // one Q/dO/lse/delta set
  static constexpr size_t smem = size_t(2 * kBk) * LD * 2 + 2 * stage;
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const FlashAttnParams p) {
  using Cfg = DkdvCfg<D>;
  constexpr int BK = Cfg::kBk, BQ = Cfg::kBq, LD = Cfg::LD;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BK * LD;
  unsigned char* stage0 = reinterpret_cast<unsigned char*>(sV + BK * LD);
  // Buffer s of the Q / dO / lse / delta stage.
  auto sQ_of = [&](int s) { return reinterpret_cast<T*>(stage0 + s * Cfg::stage); };
  auto sdO_of = [&](int s) { return sQ_of(s) + BQ * LD; };
  auto sLse_of = [&](int s) { return reinterpret_cast<float*>(sdO_of(s) + BQ * LD); };  // lse * log2 e; +inf: p = 0
  auto sDelta_of = [&](int s) { return sLse_of(s) + BQ; };

  const int b = blockIdx.z, hk = blockIdx.y, G = p.heads / p.kv_heads;
  const fa::Slice sl0 = fa::slice_of(p, b, hk * G, hk);
  const int k0 = blockIdx.x * BK;
  if (k0 >= sl0.sk) return;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t = lane & 3;
  const int sq = sl0.sq, sk = sl0.sk, off = sk - sq;
  const float sl2 = p.scale * kLog2e;

  const T* K = static_cast<const T*>(p.k) + sl0.k_off;
  const T* V = static_cast<const T*>(p.v) + sl0.k_off;
  fa::load_tile<T, BK, D, LD, kThreads>(sK, K, p.k_row, k0, sk, tid);
  fa::load_tile<T, BK, D, LD, kThreads>(sV, V, p.k_row, k0, sk, tid);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;

  // Query tiles that can see keys [k0, k0 + BK): causal needs i >= j - off for some j in the
  // tile, the window needs i <= j - off + window.
  int qt0 = 0, qt1 = (sq + BQ - 1) / BQ;
  if (p.causal) qt0 = max(0, k0 - off) / BQ;
  if (p.window >= 0) {
    const int last = k0 + BK - 1 - off + p.window;  // last query that can see the tile
    qt1 = last < 0 ? 0 : min(qt1, last / BQ + 1);
  }
  const int nq = qt1 > qt0 ? qt1 - qt0 : 0, total = G * nq;  // work items n = (q head, query tile)
  const int key_lo = k0 + w * 16 + g;  // this thread's key rows: key_lo and key_lo + 8

  // Issues the loads of item n into buffer s: Q and dO by cp.async, lse and delta by plain stores.
  auto issue = [&](int n, int s) {
    const int h = hk * G + n / nq, q0 = (qt0 + n % nq) * BQ;
    const fa::Slice sl = fa::slice_of(p, b, h, hk);
    fa::load_tile<T, BQ, D, LD, kThreads>(sQ_of(s), static_cast<const T*>(p.q) + sl.q_off, p.q_row, q0, sq, tid);
    fa::load_tile<T, BQ, D, LD, kThreads>(sdO_of(s), static_cast<const T*>(p.dout) + sl.q_off, p.q_row, q0, sq, tid);
    float* lse_s = sLse_of(s);
    float* delta_s = sDelta_of(s);
    for (int i = tid; i < BQ; i += kThreads) {
      const bool ok = q0 + i < sq;
      const float lse = ok ? p.lse[sl.lse_off + q0 + i] : -INFINITY;
      lse_s[i] = lse == -INFINITY ? INFINITY : lse * kLog2e;
      delta_s[i] = ok ? p.delta[sl.lse_off + q0 + i] : 0.f;
    }
  };
  if (total > 0) issue(0, 0);
  cp_async_commit();

  for (int n = 0; n < total; ++n) {
    const int buf = n & 1, q0 = (qt0 + n % nq) * BQ;
    // Buffer buf ^ 1 was last read in iteration n - 1, which ended with a barrier.
    if (n + 1 < total) issue(n + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // K, V and item n have landed
    __syncthreads();
    const T* sQ = sQ_of(buf);
    const T* sdO = sdO_of(buf);
    const float* sLse = sLse_of(buf);
    const float* sDelta = sDelta_of(buf);
    {
      float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
      for (int i = 0; i < BQ / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ak[4], av[4];
        ldsm_x4(ak, a_frag_addr(sK, LD, w * 16, kk * 16, lane));
        ldsm_x4(av, a_frag_addr(sV, LD, w * 16, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < BQ / 16; ++nn) {
          uint32_t bq[4], bd[4];
          ldsm_x4(bq, b_frag_addr(sQ, LD, nn * 16, kk * 16, lane));
          ldsm_x4(bd, b_frag_addr(sdO, LD, nn * 16, kk * 16, lane));
          MmaOp<T>::run(st[2 * nn], ak, bq[0], bq[1]);
          MmaOp<T>::run(st[2 * nn + 1], ak, bq[2], bq[3]);
          MmaOp<T>::run(dpt[2 * nn], av, bd[0], bd[1]);
          MmaOp<T>::run(dpt[2 * nn + 1], av, bd[2], bd[3]);
        }
      }
      // P^T and dS^T; element e of n-tile nt: key key_lo + 8 (e >> 1), query q0 + 8 nt + 2t + (e & 1).
#pragma unroll
      for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nt * 8 + 2 * t + (e & 1);
          const int j = key_lo + (e >> 1) * 8, i = q0 + c;
          float pv = exp2f(fmaf(st[nt][e], sl2, -sLse[c]));
          if (!fa::visible(i, j, sk, off, p.causal, p.window)) pv = 0.f;
          st[nt][e] = pv;
          dpt[nt][e] = pv * (dpt[nt][e] - sDelta[c]);
        }
#pragma unroll
      for (int kq = 0; kq < BQ / 16; ++kq) {
        uint32_t ap[4], as[4];
        ap[0] = MmaOp<T>::pack(st[2 * kq][0], st[2 * kq][1]);
        ap[1] = MmaOp<T>::pack(st[2 * kq][2], st[2 * kq][3]);
        ap[2] = MmaOp<T>::pack(st[2 * kq + 1][0], st[2 * kq + 1][1]);
        ap[3] = MmaOp<T>::pack(st[2 * kq + 1][2], st[2 * kq + 1][3]);
        as[0] = MmaOp<T>::pack(dpt[2 * kq][0], dpt[2 * kq][1]);
        as[1] = MmaOp<T>::pack(dpt[2 * kq][2], dpt[2 * kq][3]);
        as[2] = MmaOp<T>::pack(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
        as[3] = MmaOp<T>::pack(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t bo[4], bq[4];
          ldsm_x4_t(bo, bt_frag_addr(sdO, LD, kq * 16, dn * 16, lane));
          ldsm_x4_t(bq, bt_frag_addr(sQ, LD, kq * 16, dn * 16, lane));
          MmaOp<T>::run(dv[2 * dn], ap, bo[0], bo[1]);
          MmaOp<T>::run(dv[2 * dn + 1], ap, bo[2], bo[3]);
          MmaOp<T>::run(dk[2 * dn], as, bq[0], bq[1]);
          MmaOp<T>::run(dk[2 * dn + 1], as, bq[2], bq[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with buffer buf before item n + 2 loads into it
  }
  cp_async_wait<0>();

  T* dK = static_cast<T*>(p.dk) + sl0.k_off;
  T* dV = static_cast<T*>(p.dv) + sl0.k_off;
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int j = key_lo + 8 * rh;
    if (j >= sk) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int64_t o = int64_t(j) * p.k_row + dt * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(dK + o) =
          MmaOp<T>::pack(dk[dt][2 * rh] * p.scale, dk[dt][2 * rh + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dV + o) = MmaOp<T>::pack(dv[dt][2 * rh], dv[dt][2 * rh + 1]);
    }
  }
}

// ---- dQ -------------------------------------------------------------------------------------
// K and V tiles are double-buffered: tile it + 1 loads while tile it is computed.
template <int D> struct DqCfg {
  static constexpr int kBq = 64, kBk = D == 128 ? 32 : 64, LD = D + 8;
  static constexpr size_t smem = size_t(2 * kBq + 4 * kBk) * LD * 2;
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(const FlashAttnParams p) {
  using Cfg = DqCfg<D>;
  constexpr int BQ = Cfg::kBq, BK = Cfg::kBk, LD = Cfg::LD;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + BQ * LD;
  T* sK0 = sdO + BQ * LD;  // buffer s: K at sK0 + 2 s BK LD, V right after it

  const int b = blockIdx.z, h = blockIdx.y;
  const int hk = h / (p.heads / p.kv_heads);
  const fa::Slice sl = fa::slice_of(p, b, h, hk);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  if (q0 >= sl.sq) return;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t = lane & 3;
  const int sq = sl.sq, sk = sl.sk, off = sk - sq;
  const float sl2 = p.scale * kLog2e;
  const T* K = static_cast<const T*>(p.k) + sl.k_off;
  const T* V = static_cast<const T*>(p.v) + sl.k_off;
  T* dQ = static_cast<T*>(p.dq) + sl.q_off;

  const int row_lo = q0 + w * 16 + g;
  float lse2[2], dlt[2];
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int r = row_lo + 8 * rh;
    const float lse = r < sq ? p.lse[sl.lse_off + r] : -INFINITY;
    lse2[rh] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    dlt[rh] = r < sq ? p.delta[sl.lse_off + r] : 0.f;
  }

  int kbeg, kend;
  fa::key_range(q0, min(q0 + BQ, sq), sk, off, p.causal, p.window, BK, &kbeg, &kend);
  const int ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;

  fa::load_tile<T, BQ, D, LD, kThreads>(sQ, static_cast<const T*>(p.q) + sl.q_off, p.q_row, q0, sq, tid);
  fa::load_tile<T, BQ, D, LD, kThreads>(sdO, static_cast<const T*>(p.dout) + sl.q_off, p.q_row, q0, sq, tid);
  if (ntiles > 0) {
    fa::load_tile<T, BK, D, LD, kThreads>(sK0, K, p.k_row, kbeg, sk, tid);
    fa::load_tile<T, BK, D, LD, kThreads>(sK0 + BK * LD, V, p.k_row, kbeg, sk, tid);
  }
  cp_async_commit();

  float dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = kbeg + it * BK, buf = it & 1;
    if (it + 1 < ntiles) {  // buffer buf ^ 1 was last read in iteration it - 1, which ended with a barrier
      T* nk = sK0 + (buf ^ 1) * 2 * BK * LD;
      fa::load_tile<T, BK, D, LD, kThreads>(nk, K, p.k_row, k0 + BK, sk, tid);
      fa::load_tile<T, BK, D, LD, kThreads>(nk + BK * LD, V, p.k_row, k0 + BK, sk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // Q, dO and tile it have landed
    __syncthreads();
    const T* sK = sK0 + buf * 2 * BK * LD;
    const T* sV = sK + BK * LD;

    float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
    for (int i = 0; i < BK / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ao[4];
      ldsm_x4(aq, a_frag_addr(sQ, LD, w * 16, kk * 16, lane));
      ldsm_x4(ao, a_frag_addr(sdO, LD, w * 16, kk * 16, lane));
#pragma unroll
      for (int nn = 0; nn < BK / 16; ++nn) {
        uint32_t bk[4], bv[4];
        ldsm_x4(bk, b_frag_addr(sK, LD, nn * 16, kk * 16, lane));
        ldsm_x4(bv, b_frag_addr(sV, LD, nn * 16, kk * 16, lane));
        MmaOp<T>::run(s[2 * nn], aq, bk[0], bk[1]);
        MmaOp<T>::run(s[2 * nn + 1], aq, bk[2], bk[3]);
        MmaOp<T>::run(dp[2 * nn], ao, bv[0], bv[1]);
        MmaOp<T>::run(dp[2 * nn + 1], ao, bv[2], bv[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rh = e >> 1;
        const int i = row_lo + 8 * rh, j = k0 + nt * 8 + 2 * t + (e & 1);
        float pv = exp2f(fmaf(s[nt][e], sl2, -lse2[rh]));
        if (!fa::visible(i, j, sk, off, p.causal, p.window)) pv = 0.f;
        dp[nt][e] = pv * (dp[nt][e] - dlt[rh]);
      }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      a[0] = MmaOp<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
      a[1] = MmaOp<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
      a[2] = MmaOp<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
      a[3] = MmaOp<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bb[4];
        ldsm_x4_t(bb, bt_frag_addr(sK, LD, kk * 16, dn * 16, lane));
        MmaOp<T>::run(dq[2 * dn], a, bb[0], bb[1]);
        MmaOp<T>::run(dq[2 * dn + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();  // every warp is done with buffer buf before tile it + 2 loads into it
  }
  cp_async_wait<0>();

#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int r = row_lo + 8 * rh;
    if (r >= sq) continue;
    T* row = dQ + int64_t(r) * p.q_row;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(row + dt * 8 + 2 * t) =
          MmaOp<T>::pack(dq[dt][2 * rh] * p.scale, dq[dt][2 * rh + 1] * p.scale);
  }
}

template <class K>
cudaError_t allow_smem(K kern, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
}

template <class T, int D>
const char* launch(const FlashAttnParams& p, cudaStream_t s) {
  // no query rows at all (every packed sequence empty of queries): dK/dV are still written
  // (zeros) by the dkdv kernel; the delta and dQ grids would be empty
  const dim3 gdelta((p.max_seqlen_q + kWarps - 1) / kWarps, p.heads, p.batch);
  if (p.max_seqlen_q > 0) delta_kernel<T><<<gdelta, kThreads, 0, s>>>(p);

  auto kdkdv = dkdv_kernel<T, D>;
  cudaError_t e = allow_smem(kdkdv, DkdvCfg<D>::smem);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  const dim3 gkv((p.max_seqlen_k + DkdvCfg<D>::kBk - 1) / DkdvCfg<D>::kBk, p.kv_heads, p.batch);
  if (p.max_seqlen_k > 0) kdkdv<<<gkv, kThreads, DkdvCfg<D>::smem, s>>>(p);

  auto kdq = dq_kernel<T, D>;
  e = allow_smem(kdq, DqCfg<D>::smem);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  const dim3 gq((p.max_seqlen_q + DqCfg<D>::kBq - 1) / DqCfg<D>::kBq, p.heads, p.batch);
  if (p.max_seqlen_q > 0) kdq<<<gq, kThreads, DqCfg<D>::smem, s>>>(p);
  e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* flash_attn_bwd(const FlashAttnParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.batch == 0 || (p.max_seqlen_q == 0 && p.max_seqlen_k == 0)) return nullptr;
  if (p.max_seqlen_q > 0x7fffffff / 2 || p.max_seqlen_k > 0x7fffffff / 2 || p.batch > 65535 || p.heads > 65535)
    return "attention_backward: grid too large";
  if (p.dtype == 1 && p.head_dim == 64) return launch<__half, 64>(p, s);
  if (p.dtype == 1 && p.head_dim == 128) return launch<__half, 128>(p, s);
  if (p.dtype == 2 && p.head_dim == 64) return launch<__nv_bfloat16, 64>(p, s);
  if (p.dtype == 2 && p.head_dim == 128) return launch<__nv_bfloat16, 128>(p, s);
  return "attention_backward: CUDA kernels take float16/bfloat16 with head dim 64 or 128";
}

}  // namespace lf::cuda
