// int4_matmul.cu — CUDA int4 weight-only matmuls: decode GEMV (M <= 16), prefill/training
// GEMM, and the activation backward dX = dY @ dequant(W) (QLoRA), all reading the CPU's
// packed layout (see int4_matmul.cuh) and never writing a dequantised weight to memory.
//
// Why no repacking is needed: an mma.m16n8k16 B fragment gives lane (g, t) the weights
// (2t, 2t+1) and (2t+8, 2t+9) of output row g in each 16-wide k-step. In a 16-byte run of
// 32 weights, bytes (2t, 2t+1) and (2t+8, 2t+9) hold exactly those weights of the first
// k-step in their low nibbles and of the second k-step (k + 16) in their high nibbles,
// so one 16-byte run feeds two k-steps, and every lane takes two 16-bit halves of it.
//
// Dequantisation (bit-identical to dequantize_int4 in torch): q as float via the
// 2^23 trick (as_float(0x4B000000 | q) - 2^23 == q exactly), then (q - zero) * scale with
// one rounding each (the __fsub_rn/__fmul_rn intrinsics forbid contraction), then
// round-to-nearest bfloat16 for the mma operand. Accumulation is float32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_tile.cuh"
#include "int4_matmul.cuh"
#include "skinny_gemm.cuh"

namespace lf::cuda {
namespace {

__device__ __forceinline__ float deq4(uint32_t q, float z, float s) {
  const float qf = __fsub_rn(__uint_as_float(0x4B000000u | q), 8388608.f);
  return __fmul_rn(__fsub_rn(qf, z), s);
}

// Two 4-bit codes (bits [sh, sh+4) of the two bytes of a 16-bit half) as a bf16 pair.
__device__ __forceinline__ uint32_t deq4_pair(uint32_t half16, int sh, float z, float s) {
  return pack2<__nv_bfloat16>(deq4((half16 >> sh) & 0xFu, z, s), deq4((half16 >> (8 + sh)) & 0xFu, z, s));
}

// ---- decode: the weight format of the skinny kernel (skinny_gemm.cuh) ---------------------
struct Int4Skinny {
  static constexpr int kK = 128;                      // 64 bytes of a row = 4 runs of 32
  static constexpr int kAuxFloats = 2 * kSkinnyRows * 4;  // scales then zeros, [row][<= 4 groups]
  const uint8_t* data;
  int64_t row_bytes;
  const float* scales;
  const float* zeros;
  int ng;      // groups per row, K / G
  int gshift;  // log2(G)

  __device__ void stage_aux(float* aux, int n0, int kb, int N) const {
    const int per = kK >> gshift;  // groups per 128-wide slice: 1, 2 or 4
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int e = threadIdx.x + i * kSkinnyThreads;
      if (e < kSkinnyRows * per) {
        const int row = e / per, gi = e % per, n = n0 + row, grp = kb * per + gi;
        const bool ok = n < N && grp < ng;  // beyond K: scale 0, zero 0, so padding dequantises to 0
        const int64_t off = static_cast<int64_t>(n) * ng + grp;
        cp_async4(&aux[row * 4 + gi], ok ? scales + off : scales, ok);
        cp_async4(&aux[kSkinnyRows * 4 + row * 4 + gi], ok ? zeros + off : zeros, ok);
      }
    }
  }

  __device__ void frags(const uint8_t* wrow, const float* aux, int row, int t, uint32_t (&b)[kK / 16][2]) const {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint4 u = *reinterpret_cast<const uint4*>(wrow + c * 16);
      uint32_t lo, hi;
      lane_halves(u, t, lo, hi);
      const int gi = (c * 32) >> gshift;
      const float s = aux[row * 4 + gi], z = aux[kSkinnyRows * 4 + row * 4 + gi];
      b[2 * c][0] = deq4_pair(lo, 0, z, s);      // k = 2t, 2t+1 of this run
      b[2 * c][1] = deq4_pair(hi, 0, z, s);      // k = 2t+8, 2t+9
      b[2 * c + 1][0] = deq4_pair(lo, 4, z, s);  // k = 16+2t, 16+2t+1
      b[2 * c + 1][1] = deq4_pair(hi, 4, z, s);  // k = 24+2t, 24+2t+1
    }
  }
};

// ---- prefill / training: B tiles for gemm_tile_kernel ---------------------------------------
// Forward: tile rows are output rows n, the reduction tile kt is one 32-weight run. Thread:
// row tid >> 1, bytes [8h, 8h + 8) of the run (h = tid & 1): low nibbles are k = 8h..8h+7,
// high nibbles k = 16+8h..16+8h+7.
struct Int4Rows {
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  int N, K, ng, gshift;
  uint2 raw;
  float s, z;

  __device__ void fetch(int row0, int kt) {
    const int n = row0 + (threadIdx.x >> 1), h = threadIdx.x & 1, k0 = kt * 32;
    if (n < N && k0 < K) {
      raw = __ldg(reinterpret_cast<const uint2*>(packed + static_cast<int64_t>(n) * (K / 2) + kt * 16 + h * 8));
      const int64_t off = static_cast<int64_t>(n) * ng + (k0 >> gshift);
      s = __ldg(scales + off);
      z = __ldg(zeros + off);
    } else {
      raw = make_uint2(0, 0);
      s = 0.f;
      z = 0.f;
    }
  }

  __device__ void store(uint8_t* tile) const {
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // byte pair (2i, 2i+1) of the thread's 8 bytes
      const uint32_t w = (i < 2 ? raw.x : raw.y) >> ((i & 1) * 16);
      lo[i] = deq4_pair(w, 0, z, s);
      hi[i] = deq4_pair(w, 4, z, s);
    }
    uint8_t* r = tile + (threadIdx.x >> 1) * kRowBytes + (threadIdx.x & 1) * 16;
    *reinterpret_cast<uint4*>(r) = make_uint4(lo[0], lo[1], lo[2], lo[3]);       // k = 8h .. 8h+7
    *reinterpret_cast<uint4*>(r + 32) = make_uint4(hi[0], hi[1], hi[2], hi[3]);  // k = 16+8h ..
  }
};

// Backward dX = dY @ W: tile rows are input features k (64 per tile), the reduction runs
// over output rows n (32 per tile). Thread: n = tid >> 2, and of that row's 64 weights
// k0..k0+63 (two runs) the bytes [8h, 8h+8) of run c, with c = (tid >> 1) & 1, h = tid & 1.
// Each dequantised weight is written to tile row k, column n (a transposed store).
struct Int4Cols {
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  int N, K, ng, gshift;
  uint2 raw;
  float s, z;

  __device__ void fetch(int row0, int kt) {
    const int n = kt * 32 + (threadIdx.x >> 2), c = (threadIdx.x >> 1) & 1, h = threadIdx.x & 1;
    const int kc = row0 + c * 32;  // first k of the thread's run
    if (n < N && kc < K) {
      raw = __ldg(reinterpret_cast<const uint2*>(packed + static_cast<int64_t>(n) * (K / 2) + kc / 2 + h * 8));
      const int64_t off = static_cast<int64_t>(n) * ng + (kc >> gshift);
      s = __ldg(scales + off);
      z = __ldg(zeros + off);
    } else {
      raw = make_uint2(0, 0);
      s = 0.f;
      z = 0.f;
    }
  }

  __device__ void store(uint8_t* tile) const {
    const int nl = threadIdx.x >> 2, c = (threadIdx.x >> 1) & 1, h = threadIdx.x & 1;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t byte = ((i < 4 ? raw.x : raw.y) >> ((i & 3) * 8)) & 0xFFu;
      const int k_lo = c * 32 + h * 8 + i;  // tile row of the low nibble; the high one is k_lo + 16
      *reinterpret_cast<__nv_bfloat16*>(tile + k_lo * kRowBytes + nl * 2) =
          __float2bfloat16_rn(deq4(byte & 0xFu, z, s));
      *reinterpret_cast<__nv_bfloat16*>(tile + (k_lo + 16) * kRowBytes + nl * 2) =
          __float2bfloat16_rn(deq4(byte >> 4, z, s));
    }
  }
};

struct StoreF32 {
  float* y;
  int ld;
  __device__ void operator()(int m, int n, float v) const { y[static_cast<int64_t>(m) * ld + n] = v; }
};

__global__ void dequant_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ scales,
                               const float* __restrict__ zeros, float* __restrict__ w, int64_t row0, int64_t rows,
                               int64_t K, int gshift) {
  const int64_t nbytes = rows * (K / 2), ng = K >> gshift;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nbytes;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / (K / 2), b = i % (K / 2);
    const int64_t k = (b / 16) * 32 + (b % 16);  // low nibble; the high nibble is k + 16
    const int64_t n = row0 + r;
    const uint32_t byte = packed[n * (K / 2) + b];
    const int64_t off = n * ng + (k >> gshift);
    const float s = scales[off], z = zeros[off];
    w[r * K + k] = deq4(byte & 0xFu, z, s);
    w[r * K + k + 16] = deq4(byte >> 4, z, s);
  }
}

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* int4_matmul(const void* x, const uint8_t* packed, const float* scales, const float* zeros, float* y,
                        float* ws, int64_t M, int64_t N, int64_t K, int64_t G, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int gshift = G == 32 ? 5 : G == 64 ? 6 : 7;
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  if (M <= kSkinnyMaxM) {
    Int4Skinny w{packed, K / 2, scales, zeros, static_cast<int>(K / G), gshift};
    return skinny_launch(xb, w, y, ws, kInt4MaxSplits, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), s);
  }
  RowLoader<__nv_bfloat16, __nv_bfloat16> la{xb, nullptr, nullptr, static_cast<int>(M), static_cast<int>(K), true};
  Int4Rows lb{packed, scales, zeros, static_cast<int>(N), static_cast<int>(K), static_cast<int>(K / G), gshift};
  gemm_tile_kernel<MmaBf16><<<gemm_tile_grid(M, N), kTileThreads, 0, s>>>(
      la, lb, StoreF32{y, static_cast<int>(N)}, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K / 32));
  return last_error();
}

const char* int4_grad_x(const void* dy, const uint8_t* packed, const float* scales, const float* zeros, float* dx,
                        int64_t M, int64_t N, int64_t K, int64_t G, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int gshift = G == 32 ? 5 : G == 64 ? 6 : 7;
  const bool vec = N % 8 == 0 && aligned16(dy);
  RowLoader<__nv_bfloat16, __nv_bfloat16> la{static_cast<const __nv_bfloat16*>(dy), nullptr, nullptr,
                                             static_cast<int>(M), static_cast<int>(N), vec};
  Int4Cols lb{packed, scales, zeros, static_cast<int>(N), static_cast<int>(K), static_cast<int>(K / G), gshift};
  gemm_tile_kernel<MmaBf16><<<gemm_tile_grid(M, K), kTileThreads, 0, s>>>(
      la, lb, StoreF32{dx, static_cast<int>(K)}, static_cast<int>(M), static_cast<int>(K),
      static_cast<int>((N + 31) / 32));
  return last_error();
}

const char* int4_dequant(const uint8_t* packed, const float* scales, const float* zeros, float* w, int64_t row0,
                         int64_t rows, int64_t K, int64_t G, void* stream) {
  const int gshift = G == 32 ? 5 : G == 64 ? 6 : 7;
  int64_t blocks = (rows * (K / 2) + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  if (blocks < 1) return nullptr;
  dequant_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      packed, scales, zeros, w, row0, rows, K, gshift);
  return last_error();
}

}  // namespace lf::cuda
