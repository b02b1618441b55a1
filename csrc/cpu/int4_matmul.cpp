// int4_matmul.cpp — int4 GEMV / skinny GEMM and dequantisation (layout in int4_matmul.h).
// Up to 8 rows of x share each unpacked weight run; OpenMP splits the output rows.
#include "cpu/int4_matmul.h"

#include <omp.h>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kMaxRows = 8;

// Unpack 32 weights (16 bytes) into 32 floats.
inline void unpack32(const uint8_t* p, float* out) {
#if defined(__AVX2__)
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
  __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)));
  _mm256_storeu_ps(out + 8, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))));
  _mm256_storeu_ps(out + 16, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)));
  _mm256_storeu_ps(out + 24, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))));
#else
  for (int i = 0; i < 16; ++i) {
    out[i] = static_cast<float>(p[i] & 0x0f);
    out[i + 16] = static_cast<float>(p[i] >> 4);
  }
#endif
}

#if defined(__AVX2__)

// AVX2 (also used by the AVX-512 build): nibbles -> 4 x 8 floats in registers, FMA against x.
// y = sum_g s_g * dot_g - sum_g s_g z_g xsum_g; the first sum stays a vector across groups,
// with A independent accumulators per x row to hide the FMA latency when R is small.
template <int R>
void gemv_rows(const Int4GemvArgs& a, int64_t m0, int64_t n) {
  constexpr int A = R <= 2 ? 4 : 1;
  const int64_t K = a.K, G = a.G, ng = K / G;
  const uint8_t* row = a.packed + n * (K / 2);
  const float* sc = a.scales + n * ng;
  const float* zs = a.zeros + n * ng;
  const __m256i mask = _mm256_set1_epi32(0x0f);
  __m256 total[R];
  for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m256 dot[R][A];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < A; ++i) dot[r][i] = _mm256_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      // bytes 0-7 and 8-15 widened to int32 straight from memory; low nibbles are weights
      // k..k+15, high nibbles k+16..k+31
      const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2)));
      const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2 + 8)));
      __m256 w[4] = {_mm256_cvtepi32_ps(_mm256_and_si256(b0, mask)),
                     _mm256_cvtepi32_ps(_mm256_and_si256(b1, mask)),
                     _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)),
                     _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4))};
      for (int r = 0; r < R; ++r) {
        const float* xr = a.x + (m0 + r) * K + k;
        for (int j = 0; j < 4; ++j) dot[r][j % A] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(xr + 8 * j), dot[r][j % A]);
      }
    }
    const __m256 s = _mm256_set1_ps(sc[g]);
    for (int r = 0; r < R; ++r) {
      __m256 d = dot[r][0];
      for (int i = 1; i < A; ++i) d = _mm256_add_ps(d, dot[r][i]);
      total[r] = _mm256_fmadd_ps(d, s, total[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float corr = 0.f;
    for (int64_t g = 0; g < ng; ++g) corr += sc[g] * zs[g] * a.xsum[(m0 + r) * ng + g];
    a.y[(m0 + r) * a.N + n] = hsum256(total[r]) - corr;
  }
}
#else
template <int R>
void gemv_rows(const Int4GemvArgs& a, int64_t m0, int64_t n) {
  const int64_t K = a.K, G = a.G, ng = K / G;
  const uint8_t* row = a.packed + n * (K / 2);
  const float* sc = a.scales + n * ng;
  const float* zs = a.zeros + n * ng;
  float acc[R] = {};
  float w[32];
  for (int64_t g = 0; g < ng; ++g) {
    float dot[R] = {};
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      unpack32(row + k / 2, w);
      for (int j = 0; j < 32; ++j)
        for (int r = 0; r < R; ++r) dot[r] += w[j] * a.x[(m0 + r) * K + k + j];
    }
    for (int r = 0; r < R; ++r) acc[r] += sc[g] * (dot[r] - zs[g] * a.xsum[(m0 + r) * ng + g]);
  }
  for (int r = 0; r < R; ++r) a.y[(m0 + r) * a.N + n] = acc[r];
}
#endif

template <int R>
void gemv_block(const Int4GemvArgs& a, int64_t m0) {
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t n = 0; n < a.N; ++n) gemv_rows<R>(a, m0, n);
}

}  // namespace

void int4_gemv(const Int4GemvArgs& a) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRows) {
    switch (a.M - m0 >= kMaxRows ? kMaxRows : a.M - m0) {
      case 1: gemv_block<1>(a, m0); break;
      case 2: gemv_block<2>(a, m0); break;
      case 3: gemv_block<3>(a, m0); break;
      case 4: gemv_block<4>(a, m0); break;
      case 5: gemv_block<5>(a, m0); break;
      case 6: gemv_block<6>(a, m0); break;
      case 7: gemv_block<7>(a, m0); break;
      default: gemv_block<8>(a, m0); break;
    }
  }
}

void int4_dequant(const Int4DequantArgs& a) {
  const int64_t K = a.K, G = a.G, ng = K / G;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t n = a.row0 + r;
    const uint8_t* row = a.packed + n * (K / 2);
    float* out = a.w + r * K;
    for (int64_t k = 0; k < K; k += 32) {
      unpack32(row + k / 2, out + k);
      const V s = vset1(a.scales[n * ng + k / G]), z = vset1(a.zeros[n * ng + k / G]);
      for (int j = 0; j < 32; j += N) vstore(out + k + j, vmul(vsub(vload(out + k + j), z), s));
    }
  }
}

}  // namespace lf::cpu::LF_ISA
