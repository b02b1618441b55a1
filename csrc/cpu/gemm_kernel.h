// gemm_kernel.h — the register-blocked GEMM pieces behind gemm.cpp and rmsnorm_gemm.cpp,
// per ISA build (namespace lf::cpu::LF_ISA).
//
// BLIS-style: C (MR x NR tile) += A_panel (MR x kc, packed k-major) * B_panel (kc x NR,
// packed k-major). Per k the micro-kernel loads NV vectors of B and broadcasts MR
// values of A: MR * NV FMAs on MR * NV accumulator registers (AVX2: 6 x 16 floats =
// 12 ymm accumulators + 2 B vectors + 1 broadcast; AVX-512: 6 x 64 floats = 24 zmm
// accumulators + 4 B vectors + 1 broadcast, 2.4 FMAs per load: on a Sapphire Rapids Xeon
// 6% faster than 6 x 32, 0.93x MKL instead of 0.88x over the training shapes).
//   pack_b: a kc x nc block of B (either layout, optional scales) -> NR-wide panels
//   pack_a: an mc x kc block of A (either layout, optional row/k scales: the RMSNorm
//           prologue multiplies by rstd[m] * g[k] here) -> MR-high panels
#pragma once
#include <cstdint>
#include <type_traits>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace gemm {
// Internal linkage: a template emitted as a weak symbol could be merged across ISA builds
// (tests/test_build.py checks). Each including .cpp (gemm.cpp, rmsnorm_gemm.cpp) gets its own copy.
namespace {

constexpr int NV = N == 1 ? 8 : N == 16 ? 4 : 2;  // vectors per B row of a tile (scalar: 8 floats, AVX-512: 4)
constexpr int NR = NV * N;          // tile width
constexpr int MR = 6;               // tile height
constexpr int64_t KC = 256;         // k block: an A sliver (MR x KC) and a B panel (KC x NR) stay in L1
constexpr int64_t MC = 24 * MR;     // m block: the packed A block (MC x KC, 144 KiB) stays in L2
constexpr int64_t NC = 2048 / NR * NR;  // n block: the packed B block (KC x NC, 2 MiB) stays in L3

#if defined(__AVX2__)  // also in the AVX-512 build, which implies AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// r[i] = column i of the 8 x 8 block whose rows are r[0..7]
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}
#endif

// B(k, j) = src[k * rs + j * cs] * (sk ? sk[k] : 1) * (sj ? sj[j] : 1), for j in [j0, j0 + nc)
// and k in [k0, k0 + kc), into NR-wide panels (zero padded). rs == 1 (w in the forward: each
// column contiguous along k) or cs == 1 (each row contiguous along j).
template <class T>
inline void pack_b(const T* src, int64_t rs, int64_t cs, const float* sk, const float* sj, int64_t j0, int64_t nc,
                   int64_t k0, int64_t kc, float* bp) {
  for (int64_t p0 = 0; p0 < nc; p0 += NR) {
    float* panel = bp + (p0 / NR) * kc * NR;
    const int64_t cols = nc - p0 < NR ? nc - p0 : NR;
    const int64_t jb = j0 + p0;
    if (cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = src + (k0 + k) * rs + jb;
        float* o = panel + k * NR;
        const float fk = sk ? sk[k0 + k] : 1.f;
        const V fv = vset1(fk);
        int64_t c = 0;
        for (; c + N <= cols; c += N) {
          V v = vmul(vload(s + c), fv);
          if (sj) v = vmul(v, vload(sj + jb + c));
          vstore(o + c, v);
        }
        for (; c < cols; ++c) o[c] = to_f32(s[c]) * fk * (sj ? sj[jb + c] : 1.f);
        for (; c < NR; ++c) o[c] = 0.f;
      }
      continue;
    }
    int64_t c = 0;
#if defined(__AVX2__)
    // 8 columns (contiguous along k) at a time through 8 x 8 transposes
    if (!sk && !sj) {
      for (; c + 8 <= cols; c += 8) {
        const T* s = src + (jb + c) * cs + k0;
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = load8(s + i * cs + k);
          transpose8(r);
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (k + i) * NR + c, r[i]);
        }
        for (; k < kc; ++k)
          for (int i = 0; i < 8; ++i) panel[k * NR + c + i] = to_f32(s[i * cs + k]);
      }
    }
#endif
    for (; c < cols; ++c) {
      const T* s = src + (jb + c) * cs + k0;
      const float fj = sj ? sj[jb + c] : 1.f;
      for (int64_t k = 0; k < kc; ++k) panel[k * NR + c] = to_f32(s[k]) * fj * (sk ? sk[k0 + k] : 1.f);
    }
    for (c = cols; c < NR; ++c)
      for (int64_t k = 0; k < kc; ++k) panel[k * NR + c] = 0.f;
  }
}

#if defined(__AVX2__)
// The first k of one full, unscaled float32 A panel (MR = 6 rows from ib) with 8-wide loads:
// rows along k through 8 x 8 transposes, k-major rows one load per k. Each k's 6 values are
// stored as an 8-float vector whose last two lanes the next k overwrites, so the last k is
// left to the caller (nothing is written past the panel). A k-major load reads rows ib + 6
// and ib + 7 too: `spare_rows` says they exist. Returns how many k were packed.
inline int64_t pack_a_panel_f32(const float* src, int64_t rs, int64_t cs, int64_t ib, bool spare_rows, int64_t k0,
                                int64_t kc, float* panel) {
  static_assert(MR == 6, "the vector packing stores 6 rows per k");
  int64_t k = 0;
  if (cs == 1) {
    for (; k + 8 < kc; k += 8) {
      __m256 r[8];
      for (int i = 0; i < MR; ++i) r[i] = _mm256_loadu_ps(src + (ib + i) * rs + k0 + k);
      r[6] = r[7] = _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(panel + (k + j) * MR, r[j]);
    }
  } else if (spare_rows) {
    for (; k + 1 < kc; ++k) _mm256_storeu_ps(panel + k * MR, _mm256_loadu_ps(src + (k0 + k) * cs + ib));
  }
  return k;
}
#endif

#if defined(__AVX2__)
// Full, unscaled float32 panels of a k-major A (rs == 1: each k's rows contiguous), np of
// them from row ib, k outer and up to 8 panels inner: each k reads its 48 rows as three whole
// cache lines, once. (Panel by panel, each k's line served 2-3 panels apart; with a leading
// dimension of 2048 floats those lines alias in L1 and L2 and came back from L3: 5% of a
// weight-gradient GEMM.) Loads read 8 rows, so rows ib + 6 * np + 1 must exist.
inline void pack_a_kmajor_f32(const float* src, int64_t cs, int64_t ib, int64_t np, int64_t k0, int64_t kc,
                              float* ap) {
  for (int64_t g = 0; g < np; g += 8) {
    const int64_t gn = np - g < 8 ? np - g : 8;
    const float* s = src + k0 * cs + ib + g * MR;
    float* dst = ap + g * kc * MR;
    for (int64_t k = 0; k + 1 < kc; ++k, s += cs)
      for (int64_t q = 0; q < gn; ++q)  // 6 values and 2 the next k overwrites
        _mm256_storeu_ps(dst + q * kc * MR + k * MR, _mm256_loadu_ps(s + q * MR));
    for (int64_t q = 0; q < gn; ++q)
      for (int r = 0; r < MR; ++r) dst[q * kc * MR + (kc - 1) * MR + r] = s[q * MR + r];
  }
}
#endif

// A(i, k) = src[i * rs + k * cs] * (si ? si[i] : 1) * (sk ? sk[k] : 1), for i in [i0, i0 + mc)
// and k in [k0, k0 + kc), into MR-high panels (zero padded). In the forward si = rstd and
// sk = the norm weight: this is where RMSNorm happens. cs == 1 or rs == 1. Unscaled float32
// panels start with pack_a_panel_f32.
template <class T>
inline void pack_a(const T* src, int64_t rs, int64_t cs, const float* si, const float* sk, int64_t i0, int64_t mc,
                   int64_t k0, int64_t kc, float* ap) {
  int64_t p_start = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (rs == 1 && cs != 1 && !si && !sk && mc >= 8) {
      const int64_t np = (mc - 2) / MR;  // panels whose 8-row loads stay inside the block
      pack_a_kmajor_f32(src, cs, i0, np, k0, kc, ap);
      p_start = np * MR;
    }
#endif
  for (int64_t p0 = p_start; p0 < mc; p0 += MR) {
    float* panel = ap + (p0 / MR) * kc * MR;
    const int64_t rows = mc - p0 < MR ? mc - p0 : MR;
    const int64_t ib = i0 + p0;
    int64_t kv = 0;  // k already packed
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>)
      if (rows == MR && !si && !sk) kv = pack_a_panel_f32(src, rs, cs, ib, p0 + 8 <= mc, k0, kc, panel);
#endif
    if (cs == 1) {
      for (int64_t r = 0; r < rows; ++r) {
        const T* s = src + (ib + r) * rs + k0;
        const float f = si ? si[ib + r] : 1.f;
        if (sk) {
          for (int64_t k = kv; k < kc; ++k) panel[k * MR + r] = to_f32(s[k]) * f * sk[k0 + k];
        } else {
          for (int64_t k = kv; k < kc; ++k) panel[k * MR + r] = to_f32(s[k]) * f;
        }
      }
    } else {
      for (int64_t k = kv; k < kc; ++k) {
        const T* s = src + (k0 + k) * cs + ib;
        const float fk = sk ? sk[k0 + k] : 1.f;
        for (int64_t r = 0; r < rows; ++r) panel[k * MR + r] = to_f32(s[r]) * fk * (si ? si[ib + r] : 1.f);
      }
    }
    for (int64_t r = rows; r < MR; ++r)
      for (int64_t k = 0; k < kc; ++k) panel[k * MR + r] = 0.f;
  }
}

// One MR x NR tile over kc. `first`: C is overwritten, else accumulated into. Out is float
// (C itself) or bf16: then C is the float32 partial-sum buffer and, when `last`, the
// finished tile goes to y (ldy) instead. mr x nr is the valid part of the tile.
template <class Out>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                         Out* y, int64_t ldy, bool first, bool last, int mr, int nr) {
  V acc[MR][NV];
#if defined(__AVX2__)
  if (!first) {  // the C tile is read after the k loop: start fetching its rows now
    for (int i = 0; i < mr; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
    }
  }
#endif
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + v * N);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V av = vset1(a[i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(av, bv[v], acc[i][v]);
    }
    a += MR;
    b += NR;
  }
  constexpr bool to_y = !std::is_same_v<Out, float>;
  if (mr == MR && nr == NR) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        V r = acc[i][v];
        if (!first) r = vadd(r, vload(c + i * ldc + v * N));
        if (to_y && last) vstore(y + i * ldy + v * N, r);
        else vstore(c + i * ldc + v * N, r);
      }
    return;
  }
  alignas(64) float tmp[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) vstore(&tmp[i][v * N], acc[i][v]);
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float r = tmp[i][j];
      if (!first) r += c[i * ldc + j];
      if (to_y && last) y[i * ldy + j] = from_f32<Out>(r);
      else c[i * ldc + j] = r;
    }
}

}  // namespace
}  // namespace gemm
}  // namespace lf::cpu::LF_ISA
