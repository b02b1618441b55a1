// int4_unpack.h — one run of 32 int4 weights (16 bytes: byte i holds weight i in its low nibble
// and weight 16 + i in its high nibble, see int4_matmul.h) as 32 / N float vectors of this ISA
// build's V, in weight order: w[j] holds weights N*j .. N*j + N - 1 (codes 0..15, not yet
// shifted by the zero point or scaled). Shared by int4_matmul.cpp and decode_model.cpp.
#pragma once
#include <cstdint>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {

constexpr int kInt4RunVecs = 32 / N;  // vectors per 32-weight run

inline void int4_unpack_run(const uint8_t* p, V (&w)[kInt4RunVecs]) {
#if defined(__AVX512F__)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i mask = _mm512_set1_epi32(0x0f);
  w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, mask));
  w[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
#elif defined(__AVX2__)
  // bytes 0-7 and 8-15 widened to int32 straight from memory
  const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
  const __m256i mask = _mm256_set1_epi32(0x0f);
  w[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, mask));
  w[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, mask));
  w[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
  w[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
#else
  for (int i = 0; i < 16; ++i) {
    w[i] = static_cast<float>(p[i] & 0x0f);
    w[i + 16] = static_cast<float>(p[i] >> 4);
  }
#endif
}

}  // namespace lf::cpu::LF_ISA
