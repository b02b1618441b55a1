// gemm_tile.cuh — one block-tiled tensor-core GEMM shared by the quantised and fused
// matmuls: C[m, n] = sum_r A[m, r] * B[n, r], both operands produced tile by tile by
// "loaders" that may dequantise, normalise, convert or transpose while filling
// shared memory. Device code only.
//
// Block: 128 threads (4 warps as 2 x 2), tile 64 (m) x 64 (n) x 64 bytes of the
// reduction dimension (32 bf16/f16 or 64 s8). Each warp owns 32 x 32 of C: 2 m16 x 4 n8
// mma tiles. Shared tiles are [64 rows][64 bytes + 16 pad], rows K-contiguous; the
// 80-byte stride (20 words) makes the fragment reads (word 20 * row + t) conflict-free.
// Pipelining: the loaders' global reads for tile k+1 are issued into registers before
// the mma work of tile k (register double buffering); shared memory is single-buffered.
//
// Loader contract (one object per thread):
//   __device__ void fetch(int row0, int kt);   // global -> registers: tile rows [row0, row0+64),
//                                              // reduction tile kt; out-of-range elements read as 0
//   __device__ void store(uint8_t* tile);      // registers -> shared [64][kRowBytes]
// Epilogue: __device__ void operator()(int m, int n, Acc v), called once per C element
// with m < M and n < N.
#pragma once
#include "tensor_core.cuh"

namespace lf::cuda {

constexpr int kTileM = 64, kTileN = 64, kTileKBytes = 64, kRowBytes = kTileKBytes + 16, kTileThreads = 128;

template <class Mma, class LA, class LB, class Epi>
__global__ void __launch_bounds__(kTileThreads) gemm_tile_kernel(LA la, LB lb, Epi epi, int M, int N, int n_ktiles) {
  using Acc = typename Mma::Acc;
  __shared__ __align__(16) uint8_t As[kTileM * kRowBytes];
  __shared__ __align__(16) uint8_t Bs[kTileN * kRowBytes];
  const int m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  Acc acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = Acc(0);

  if (n_ktiles > 0) {
    la.fetch(m0, 0);
    lb.fetch(n0, 0);
  }
  for (int kt = 0; kt < n_ktiles; ++kt) {
    la.store(As);
    lb.store(Bs);
    __syncthreads();
    if (kt + 1 < n_ktiles) {  // next tile's global reads overlap this tile's mma work
      la.fetch(m0, kt + 1);
      lb.fetch(n0, kt + 1);
    }
#pragma unroll
    for (int ks = 0; ks < kTileKBytes; ks += 32) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint8_t* r = As + (wm + i * 16 + g) * kRowBytes + ks + 4 * t;
        a[i][0] = lds32(r);
        a[i][1] = lds32(r + 8 * kRowBytes);
        a[i][2] = lds32(r + 16);
        a[i][3] = lds32(r + 8 * kRowBytes + 16);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint8_t* r = Bs + (wn + j * 8 + g) * kRowBytes + ks + 4 * t;
        b[j][0] = lds32(r);
        b[j][1] = lds32(r + 16);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) Mma::run(acc[i][j], a[i], b[j]);
    }
    __syncthreads();  // the tile is consumed before the next store overwrites it
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + wm + i * 16 + g + (e >= 2 ? 8 : 0);
        const int n = n0 + wn + j * 8 + 2 * t + (e & 1);
        if (m < M && n < N) epi(m, n, acc[i][j][e]);
      }
}

// ---- generic loaders -----------------------------------------------------------------------
// Rows of a K-contiguous matrix src[R][K] (element S), converted to the mma element E
// (E == S for s8). Optional per-row scale rs[row] (float) and per-column scale cs[k]
// (element S): value = src * rs * cs, computed in float. Thread piece p (2 per thread):
// tile row p >> 2, 16-byte quarter p & 3 of the 64-byte K slice.
template <class S, class E, bool RS = false, bool CS = false>
struct RowLoader {
  static constexpr int kE = 16 / sizeof(E);  // elements per 16-byte piece
  static constexpr int kTileK = kTileKBytes / sizeof(E);
  static constexpr int kBytes = kE * sizeof(S);  // source bytes per piece: 8, 16 or 32
  const S* src;
  const float* rs;
  const S* cs;
  int R, K;
  bool vec;  // src 16-byte aligned and K * sizeof(S) a multiple of 16: vector reads
  alignas(16) S v[2][kE];
  S c[2][kE];
  float r[2];

  __device__ void fetch(int row0, int kt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int p = threadIdx.x + i * kTileThreads;
      const int row = row0 + (p >> 2), k = kt * kTileK + (p & 3) * kE;
      const bool row_ok = row < R;
      if (row_ok && vec && k + kE <= K) {
        const S* q = src + static_cast<int64_t>(row) * K + k;
        if constexpr (kBytes >= 16) {
#pragma unroll
          for (int w = 0; w < kBytes / 16; ++w)
            reinterpret_cast<uint4*>(v[i])[w] = __ldg(reinterpret_cast<const uint4*>(q) + w);
        } else {  // 8 bytes: s8 widened to a 16-bit element
          *reinterpret_cast<uint2*>(v[i]) = __ldg(reinterpret_cast<const uint2*>(q));
        }
      } else {
#pragma unroll
        for (int e = 0; e < kE; ++e)
          v[i][e] = (row_ok && k + e < K) ? src[static_cast<int64_t>(row) * K + k + e] : zero_of<S>();
      }
      if constexpr (RS) r[i] = row_ok ? rs[row] : 0.f;
      if constexpr (CS) {
#pragma unroll
        for (int e = 0; e < kE; ++e) c[i][e] = k + e < K ? cs[k + e] : zero_of<S>();
      }
    }
  }

  __device__ void store(uint8_t* tile) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int p = threadIdx.x + i * kTileThreads;
      uint4 out;
      if constexpr (sizeof(E) == 1) {  // s8 operands are copied as they are
        static_assert(sizeof(S) == 1, "s8 tiles come from s8 sources");
        out = *reinterpret_cast<const uint4*>(v[i]);
      } else {
        uint32_t* o = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
        for (int e = 0; e < kE; e += 2) {
          float x0 = to_float(v[i][e]), x1 = to_float(v[i][e + 1]);
          if constexpr (RS) { x0 *= r[i]; x1 *= r[i]; }
          if constexpr (CS) { x0 *= to_float(c[i][e]); x1 *= to_float(c[i][e + 1]); }
          o[e / 2] = pack2<E>(x0, x1);
        }
      }
      *reinterpret_cast<uint4*>(tile + (p >> 2) * kRowBytes + (p & 3) * 16) = out;
    }
  }
};

// The transpose of a C-contiguous matrix src[R][C]: tile row j is column j of src, the
// reduction index runs over src's rows r. 16-bit E only (tile K slice = 32 elements).
// Optional rs[r] (float, indexed by the reduction index) and cs[j] (element S, by the
// tile row). Thread: tile row j = tid & 63, reduction half h = tid >> 6 (16 elements);
// consecutive threads read consecutive columns, so each of the 16 reads is coalesced.
template <class S, class E, bool RS = false, bool CS = false>
struct TransLoader {
  static_assert(sizeof(E) == 2, "transposed tiles are 16-bit");
  const S* src;
  const float* rs;
  const S* cs;
  int R, C;
  S v[16];
  float r[16];
  float c;

  __device__ void fetch(int row0, int kt) {
    const int j = row0 + (threadIdx.x & 63), r0 = kt * 32 + (threadIdx.x >> 6) * 16;
    const bool j_ok = j < C;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      const int rr = r0 + e;
      const bool ok = j_ok && rr < R;
      v[e] = ok ? src[static_cast<int64_t>(rr) * C + j] : zero_of<S>();
      if constexpr (RS) r[e] = rr < R ? rs[rr] : 0.f;
    }
    if constexpr (CS) c = j_ok ? to_float(cs[j]) : 0.f;
  }

  __device__ void store(uint8_t* tile) {
    uint32_t o[8];
#pragma unroll
    for (int e = 0; e < 16; e += 2) {
      float x0 = to_float(v[e]), x1 = to_float(v[e + 1]);
      if constexpr (RS) { x0 *= r[e]; x1 *= r[e + 1]; }
      if constexpr (CS) { x0 *= c; x1 *= c; }
      o[e / 2] = pack2<E>(x0, x1);
    }
    uint8_t* dst = tile + (threadIdx.x & 63) * kRowBytes + (threadIdx.x >> 6) * 32;
    reinterpret_cast<uint4*>(dst)[0] = make_uint4(o[0], o[1], o[2], o[3]);
    reinterpret_cast<uint4*>(dst)[1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
};

inline dim3 gemm_tile_grid(int64_t M, int64_t N) {
  return dim3(static_cast<unsigned>((N + kTileN - 1) / kTileN), static_cast<unsigned>((M + kTileM - 1) / kTileM));
}

}  // namespace lf::cuda
