// skinny_gemm.cuh — decode-shaped weight-only matmul y (M, N) = x (M, K) @ dequant(W)^T
// for M <= 16, shared by the int4 and int8 kernels. Device code only.
//
// Weights are streamed from memory exactly once: every block owns 64 output rows and a
// contiguous range of K ("split-K"), and pulls 64 bytes of each of its rows per step with
// 16-byte cp.async into a 4-stage shared-memory ring (x's matching 16 x kK slice and, for
// int4, the group scales/zeros travel in the same stage). Each warp owns 16 rows (two n8
// mma tiles): lanes read their B fragments from the staged bytes, dequantise them in
// registers (no dequantised weight is ever written), and run mma.m16n8k16 bf16 with x as
// the A operand (rows >= M are zero-filled). Split-K partials go to a float workspace
// [splits][M][N] that a second kernel sums in split order: deterministic, no atomics.
//
// Weight format W provides:
//   kK                   K elements per 64-byte row slice (int4: 128, int8: 64)
//   data, row_bytes      packed rows (row_bytes a multiple of 16)
//   stage_aux(...)       cp.async of the per-(row, group) scale data for one slice
//   frags(...)           B fragments of one row for all kK / 16 mma k-steps of a slice
#pragma once
#include <cuda_runtime.h>

#include "tensor_core.cuh"

namespace lf::cuda {

constexpr int kSkinnyRows = 64, kSkinnyStages = 4, kSkinnyThreads = 128, kSkinnyMaxM = 16;

// The 16-bit halves a lane t needs from a 16-byte run of weight bytes: bytes (2t, 2t+1)
// in lo and (2t+8, 2t+9) in hi — the B fragment's columns (2t, 2t+1) and (2t+8, 2t+9).
__device__ __forceinline__ void lane_halves(const uint4& u, int t, uint32_t& lo, uint32_t& hi) {
  const int sh = (t & 1) * 16;
  lo = (((t >> 1) ? u.y : u.x) >> sh) & 0xffffu;
  hi = (((t >> 1) ? u.w : u.z) >> sh) & 0xffffu;
}

template <class W>
__global__ void __launch_bounds__(kSkinnyThreads)
    skinny_kernel(const __nv_bfloat16* __restrict__ x, W w, float* __restrict__ y, float* __restrict__ ws, int M,
                  int N, int K, int kb_per_split) {
  constexpr int kK = W::kK, kSteps = kK / 16;
  constexpr int kXRow = kK * 2 + 16;       // bytes per staged x row (+16 pad: conflict-free A reads)
  constexpr int kXPieces = kK * 2 / 16;    // 16-byte pieces per x row
  __shared__ __align__(16) uint8_t wsm[kSkinnyStages][kSkinnyRows * 64];
  __shared__ __align__(16) uint8_t xsm[kSkinnyStages][kSkinnyMaxM * kXRow];
  __shared__ __align__(16) float aux[kSkinnyStages][W::kAuxFloats > 0 ? W::kAuxFloats : 1];

  const int n0 = blockIdx.x * kSkinnyRows;
  const int nkb = (K + kK - 1) / kK;
  const int kb0 = blockIdx.y * kb_per_split;
  const int kb1 = min(nkb, kb0 + kb_per_split);
  const int nk = kb1 - kb0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;

  auto load_stage = [&](int st, int kb) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // weights: 64 rows x 4 pieces
      const int p = threadIdx.x + i * kSkinnyThreads, row = p >> 2, q = p & 3;
      const int n = n0 + row;
      const int64_t off = static_cast<int64_t>(kb) * 64 + q * 16;
      const bool ok = n < N && off < w.row_bytes;
      cp_async16(&wsm[st][row * 64 + q * 16], ok ? w.data + static_cast<int64_t>(n) * w.row_bytes + off : w.data, ok);
    }
#pragma unroll
    for (int i = 0; i < kSkinnyMaxM * kXPieces / kSkinnyThreads; ++i) {  // x: 16 rows (zero beyond M)
      const int p = threadIdx.x + i * kSkinnyThreads, row = p / kXPieces, q = p % kXPieces;
      const int k = kb * kK + q * 8;
      const bool ok = row < M && k < K;
      cp_async16(&xsm[st][row * kXRow + q * 16], ok ? x + static_cast<int64_t>(row) * K + k : x, ok);
    }
    w.stage_aux(aux[st], n0, kb, N);
  };

  float acc[2][4] = {};
  for (int s = 0; s < kSkinnyStages - 1; ++s) {
    if (s < nk) load_stage(s, kb0 + s);
    cp_async_commit();
  }
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<kSkinnyStages - 2>();
    __syncthreads();
    const int nxt = i + kSkinnyStages - 1;
    if (nxt < nk) load_stage(nxt % kSkinnyStages, kb0 + nxt);
    cp_async_commit();

    const int st = i % kSkinnyStages;
    uint32_t b[2][kSteps][2];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int row = warp * 16 + nt * 8 + g;
      w.frags(&wsm[st][row * 64], aux[st], row, t, b[nt]);
    }
    const uint8_t* xs = xsm[st];
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      uint32_t a[4];
      const uint8_t* r = xs + g * kXRow + j * 32 + 4 * t;
      a[0] = lds32(r);
      a[1] = lds32(r + 8 * kXRow);
      a[2] = lds32(r + 16);
      a[3] = lds32(r + 8 * kXRow + 16);
      MmaBf16::run(acc[0], a, b[0][j]);
      MmaBf16::run(acc[1], a, b[1][j]);
    }
  }
  cp_async_wait<0>();  // nothing may be left in flight when the block exits

#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int m = g + (e >= 2 ? 8 : 0);
      const int n = n0 + warp * 16 + nt * 8 + 2 * t + (e & 1);
      if (m < M && n < N) {
        if (ws) ws[(static_cast<int64_t>(blockIdx.y) * M + m) * N + n] = acc[nt][e];
        else y[static_cast<int64_t>(m) * N + n] = acc[nt][e];
      }
    }
}

// y[i] = sum over splits s (in order) of ws[s][i], i < count (kernels/skinny_gemm.cu).
void splitk_reduce(const float* ws, float* y, int64_t count, int splits, cudaStream_t s);

// Split-K plan: about 4 blocks per SM. Returns splits; *kb_per_split receives the slices
// per split (every split non-empty).
int skinny_splits(int64_t N, int64_t K, int kK, int max_splits, int* kb_per_split);

// Launches skinny_kernel<W> (+ the reduction when splits > 1). ws holds max_splits * M * N floats.
template <class W>
const char* skinny_launch(const __nv_bfloat16* x, const W& w, float* y, float* ws, int max_splits, int M, int N,
                          int K, cudaStream_t s) {
  int kps = 0;
  const int splits = skinny_splits(N, K, W::kK, max_splits, &kps);
  const dim3 grid((N + kSkinnyRows - 1) / kSkinnyRows, splits);
  skinny_kernel<W><<<grid, kSkinnyThreads, 0, s>>>(x, w, y, splits > 1 ? ws : nullptr, M, N, K, kps);
  if (splits > 1) {
    splitk_reduce(ws, y, static_cast<int64_t>(M) * N, splits, s);
  }
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace lf::cuda
