// ggml_quants.h — llama.cpp's GGUF block quantisation formats (csrc/cpu/ggml_quants.cpp),
// one per ISA build. Rows of float32 become the exact block bytes ggml's reference
// quantisers (quantize_row_*_ref, what ggml_quantize_chunk runs without an importance
// matrix) write, and blocks become float32 the way ggml's dequantize_row_* computes them.
//
//   type   ggml id  block  bytes  layout (in order)
//   Q4_0   2        32     18     f16 d; u8 qs[16]                  x = (q - 8) d
//   Q4_1   3        32     20     f16 d, m; u8 qs[16]               x = q d + m
//   Q5_0   6        32     22     f16 d; u8 qh[4]; u8 qs[16]        x = (q - 16) d, q 5 bits
//   Q5_1   7        32     24     f16 d, m; u8 qh[4]; u8 qs[16]     x = q d + m
//   Q8_0   8        32     34     f16 d; i8 qs[32]                  x = q d
//   Q4_K   12       256    144    f16 d, dmin; u8 scales[12]; u8 qs[128]
//   Q5_K   13       256    176    f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//   Q6_K   14       256    210    u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
//
// The quantiser is compiled with -ffp-contract=off (CMakeLists.txt) and no fast-math:
// every float operation rounds as in ggml's scalar C, so the bytes match bit for bit.
#pragma once
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

// Values are ggml's enum ggml_type.
enum class GgmlType : int { q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q4_K = 12, q5_K = 13, q6_K = 14 };

struct GgmlQuantArgs {
  GgmlType type;
  const float* x;  // (rows, cols) float32, contiguous
  uint8_t* q;      // (rows, cols / block * block_bytes)
  int64_t rows, cols;
  int threads;
};

// Elements per block and bytes per block; 0 for an unknown type id.
inline int ggml_block_size(int type) {
  switch (type) {
    case 2: case 3: case 6: case 7: case 8: return 32;
    case 12: case 13: case 14: return 256;
    default: return 0;
  }
}
inline int ggml_block_bytes(int type) {
  switch (type) {
    case 2: return 18;
    case 3: return 20;
    case 6: return 22;
    case 7: return 24;
    case 8: return 34;
    case 12: return 144;
    case 13: return 176;
    case 14: return 210;
    default: return 0;
  }
}

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, ggml_quantize, const lf::cpu::GgmlQuantArgs&)
// Reads the blocks at a.q (a.x is unused) and writes (rows, cols) float32 to out.
LF_DECLARE_CPU_KERNEL(void, ggml_dequantize, const lf::cpu::GgmlQuantArgs&, float* out)
