// tensor_core.cuh — device helpers shared by the GEMM-style tensor-core kernels (sm_80+): mma.sync
// wrappers, cp.async, bf16/fp16 packing. Device code only; no launchers here.
//
// Fragment maps (PTX ISA, "Matrix Fragments for mma.m16n8k16" (.f16/.bf16) and
// "mma.m16n8k32" (.s8)); lane = 4 * g + t, g = lane >> 2 (groupID), t = lane & 3:
//   A (16 x K-step, row-major), four .b32 registers:
//     a[0] row g,     a[1] row g + 8   : K-step bytes [4t, 4t + 4)
//     a[2] row g,     a[3] row g + 8   : K-step bytes [16 + 4t, 16 + 4t + 4)
//   B (K-step x 8, "col", i.e. stored as B^T rows = output columns n), two .b32:
//     b[0] column g : K-step bytes [4t, 4t + 4);  b[1] column g : bytes [16 + 4t, 16 + 4t + 4)
//   C/D (16 x 8, f32 or s32): c[0], c[1] row g, columns 2t, 2t + 1; c[2], c[3] row g + 8.
// A K-step is 32 bytes for both shapes (16 bf16/f16 or 32 s8), so a tile whose rows are
// stored K-contiguous is read the same way for every element type: the 32-bit word at
// byte 4t (and 16 + 4t) of the row's K-step. Within a .b32 the lower K index sits in
// the lower bits (bf16 pair: .x = lower half).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace lf::cuda {

struct MmaBf16 {
  using Elem = __nv_bfloat16;
  using Acc = float;
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

struct MmaF16 {
  using Elem = __half;
  using Acc = float;
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

struct MmaS8 {
  using Elem = int8_t;
  using Acc = int;
  static __device__ __forceinline__ void run(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// ---- cp.async (16 bytes; src_bytes 0 zero-fills the destination) --------------------
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// ---- conversions -----------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(int8_t v) { return static_cast<float>(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Two floats as one .b32 of 16-bit elements, `lo` in the lower half (round to nearest even).
template <class E> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <class T> __device__ __forceinline__ T zero_of() { return from_float<T>(0.f); }
template <> __device__ __forceinline__ int8_t zero_of<int8_t>() { return 0; }

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace lf::cuda
