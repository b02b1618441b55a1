// flash_attn_common.cuh — device helpers shared by flash_attn_fwd.cu and flash_attn_bwd.cu:
// where a (batch, head) slice starts, the mask, and the cp.async tile loader.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "flash_attn.cuh"
#include "mma.cuh"

namespace lf::cuda::fa {

constexpr float kLog2e = 1.4426950408889634f;

// One (batch, head) slice: sequence lengths and the element offsets of its row 0.
struct Slice {
  int sq, sk;          // queries and keys of this sequence
  int64_t q_off, k_off;  // element offset of row 0 in q/out/dq and in k/v/dk/dv
  int64_t lse_off;       // offset of row 0 in lse/delta/dlse
};

__device__ __forceinline__ Slice slice_of(const FlashAttnParams& p, int b, int h, int hk) {
  Slice s;
  int qs = 0, ks = 0;
  s.sq = p.max_seqlen_q;
  s.sk = p.max_seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    qs = p.cu_seqlens_q[b];
    ks = p.cu_seqlens_k[b];
    s.sq = p.cu_seqlens_q[b + 1] - qs;
    s.sk = p.cu_seqlens_k[b + 1] - ks;
  }
  s.q_off = int64_t(b) * p.q_batch + int64_t(h) * p.q_head + int64_t(qs) * p.q_row;
  s.k_off = int64_t(b) * p.k_batch + int64_t(hk) * p.k_head + int64_t(ks) * p.k_row;
  s.lse_off = int64_t(b) * p.lse_batch + int64_t(h) * p.lse_head + qs;
  return s;
}

// Key j is visible to query i (off = Sk - Sq).
__device__ __forceinline__ bool visible(int i, int j, int sk, int off, bool causal, int window) {
  return j < sk && (!causal || j <= i + off) && (window < 0 || j >= i + off - window);
}

// Keys [*kbeg, *kend) that queries [q0, q1) may see; *kbeg is rounded down to a multiple of tile.
__device__ __forceinline__ void key_range(int q0, int q1, int sk, int off, bool causal, int window, int tile,
                                          int* kbeg, int* kend) {
  int e = sk;
  if (causal) e = min(e, q1 - 1 + off + 1);
  int b = 0;
  if (window >= 0) b = max(0, q0 + off - window);
  *kbeg = b / tile * tile;
  *kend = e;
}

// Copies rows [row0, row0 + R) x D of a row-major global matrix (row stride rs elements) into a
// shared tile with leading dimension LD; rows >= nvalid are zero-filled. NT threads.
template <class T, int R, int D, int LD, int NT>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t rs, int row0, int nvalid, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int c = tid; c < R * kChunks; c += NT) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = row0 + r < nvalid;
    const T* src = ok ? g + int64_t(row0 + r) * rs + col : g;
    mma::cp_async16(s + r * LD + col, src, ok);
  }
}

}  // namespace lf::cuda::fa
