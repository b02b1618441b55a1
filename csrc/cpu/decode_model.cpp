// decode_model.cpp — the one-call Llama decode step (see decode_model.h). Compiled once per ISA.
// One OpenMP region per step: `omp for` splits matrix rows, heads and 32-row chunks across the
// threads; the small row-wise RMSNorms are computed by every thread into its own buffers.
#include "cpu/decode_model.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/int4_unpack.h"
#include "cpu/swiglu_simd.h"
#include "cpu/vec.h"
#include "cpu/vnni.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kRows = 8;  // token rows sharing one load of a weight row (prefill, batched decode)
constexpr int64_t kChunk = 24;  // output rows per work item: a multiple of the 3-row float32 block

// Activations of one linear's input, M rows of K: float, and (when an int4 weight reads them)
// int8 codes per 32-block with the block scale dx and dx * (sum of the block's codes).
struct Act {
  const float* f;
  const int8_t* q;
  const float* dx;
  const float* xs;
  int64_t ldq, ldb;     // row strides: floats/bytes of f and q, floats of dx/xs
  bool q8;              // int4 weights multiply the int8 codes (else the floats)
};

// tanh as Cephes' tanhf: x + x^3 P(x^2) below |x| = 0.625, else 1 - 2 / (e^2|x| + 1) with x's sign;
// relative error ~3e-7 (vexp's); NaN stays NaN.
#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
inline V vabs(V x) { return _mm512_abs_ps(x); }
inline V vcopysign(V mag, V x) {  // mag >= 0 with x's sign
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), sign));
}
inline V vselect_lt(V a, float b, V yes, V no) {  // yes where a < b, else no
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, vset1(b), _CMP_LT_OQ), no, yes);
}
#else
inline V vabs(V x) { return _mm256_andnot_ps(vset1(-0.f), x); }
inline V vcopysign(V mag, V x) { return _mm256_or_ps(mag, _mm256_and_ps(x, vset1(-0.f))); }
inline V vselect_lt(V a, float b, V yes, V no) {
  return _mm256_blendv_ps(no, yes, _mm256_cmp_ps(a, vset1(b), _CMP_LT_OQ));
}
#endif
inline V vtanh(V x) {
  const V a = vabs(x), z = vmul(x, x);
  V p = vset1(-5.70498872745e-3f);
  p = vfma(p, z, vset1(2.06390887954e-2f));
  p = vfma(p, z, vset1(-5.37397155531e-2f));
  p = vfma(p, z, vset1(1.33314422036e-1f));
  p = vfma(p, z, vset1(-3.33332819422e-1f));
  const V small = vfma(vmul(p, z), x, x);
  const V big = vsub(vset1(1.f), vdiv(vset1(2.f), vadd(vexp(vadd(a, a)), vset1(1.f))));
  return vselect_lt(a, 0.625f, small, vcopysign(big, x));
}
#else
inline V vtanh(V x) { return std::tanh(x); }
#endif

// x[i] = cap * tanh(x[i] * mul), i < n (Gemma's soft-caps of attention scores and logits).
inline void softcap(float* x, int64_t n, float mul, float cap) {
  int64_t i = 0;
  for (; i + N <= n; i += N) vstore(x + i, vmul(vtanh(vmul(vload(x + i), vset1(mul))), vset1(cap)));
  for (; i < n; ++i) x[i] = std::tanh(x[i] * mul) * cap;
}

// gelu_tanh(g) * u, as x sigmoid(2z) = x (1 + tanh(z)) / 2 with z = sqrt(2/pi) (x + 0.044715 x^3).
namespace gelu {
constexpr float c1 = float(2 * 0.79788456080286535588), c3 = float(2 * 0.79788456080286535588 * 0.044715);
}
inline V vgeglu(V g, V u) {
  return vmul(vmul(g, vsigmoid(vmul(g, vfma(vmul(g, g), vset1(gelu::c3), vset1(gelu::c1))))), u);
}
inline float geglu(float g, float u) { return g / (1.f + std::exp(-g * (g * g * gelu::c3 + gelu::c1))) * u; }

inline float fp16_round(float x) {  // Q8_0 stores its scale as float16: keep what it keeps
#if defined(__F16C__)
  return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
#else
  if (x == 0.f || !std::isfinite(x)) return x;
  int e;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e); float16 keeps 11 bits down to 2^-14, then steps of 2^-24
  const float step = e >= -13 ? std::ldexp(1.f, e - 11) : std::ldexp(1.f, -24);
  return std::nearbyint(x / step) * step;
#endif
}

// Where the int8 code of activation k sits in a quantised row. Blocks are stored in pairs so
// that one 32-byte load of two int4 blocks lines up with the codes: for blocks 2p and 2p+1, bytes
// 64p..64p+31 hold the first halves (k 0..15) of both blocks, bytes 64p+32..64p+63 the second
// halves (the weights' low and high nibbles). A trailing odd block is stored as is.
inline int64_t q8_slot(int64_t k, int64_t nb) {
  const int64_t b = k / 32, i = k % 32;
  if (b == nb - 1 && nb % 2) return k;
  const int64_t p = b / 2;
  return 64 * p + (i < 16 ? 0 : 32) + (b % 2) * 16 + i % 16;
}

// Prepares blocks [b0, b1) of one row of nb 32-blocks for the int4 kernels. q8: Q8_0 rounding as
// ggml's quantize_row_q8_0 (codes in q8_slot order, dx = block scale, xs = dx * sum of codes);
// otherwise the float row is used as is and xs holds each block's sum (for the zero-point term).
void prep_blocks(const float* x, int64_t nb, int64_t b0, int64_t b1, int8_t* q, float* dx, float* xs, bool q8) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* p = x + 32 * b;
    if (!q8) {
      float sum = 0.f;
      for (int i = 0; i < 32; ++i) sum += p[i];
      xs[b] = sum;
      continue;
    }
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(p[i]));
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    int8_t* q0 = q + q8_slot(32 * b, nb);
    int8_t* q1 = q + q8_slot(32 * b + 16, nb);
    for (int i = 0; i < 32; ++i) {
      const int v = static_cast<int>(std::nearbyint(p[i] * id));  // round half to even
      (i < 16 ? q0 : q1 - 16)[i] = static_cast<int8_t>(v);
      sum += v;
    }
    dx[b] = fp16_round(amax / 127.f);
    xs[b] = dx[b] * static_cast<float>(sum);
  }
}

inline void prep_row(const float* x, int64_t K, int8_t* q, float* dx, float* xs, bool q8) {
  prep_blocks(x, K / 32, 0, K / 32, q, dx, xs, q8);
}

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float f;
  if (e == 0) {
    f = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    f = m ? NAN : INFINITY;
  } else {
    const uint32_t u = ((e + 112) << 23) | (m << 13);
    std::memcpy(&f, &u, 4);
  }
  return sign ? -f : f;
#endif
}

inline float sload(const float* p, int64_t i) { return p[i]; }
inline float sload(const uint16_t* p, int64_t i) { return half_to_float(p[i]); }
#if defined(__AVX2__)
inline __m256 sload8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 sload8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

// Sums of 4 products of unsigned and signed bytes into int32 lanes (the Q8 path's inner step):
// vpdpbusd where the CPU has AVX512-VNNI (vnni.h, chosen at run time), else maddubs + madd.
// Both exact: |sums| <= 4 * 15 * 128.
#if defined(__AVX2__)
template <bool VNNI>
inline __m256i q8_dot2(__m256i lo, __m256i x0, __m256i hi, __m256i x1) {
#if defined(__AVX512F__)
  if constexpr (VNNI) return dpbusd(dpbusd(_mm256_setzero_si256(), lo, x0), hi, x1);
#endif
  const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}
#endif

// acc[r] = sum_b s_b * sum_k q_w,k x_k over the float activations of token row m0 + r.
template <int R, class S>
void int4_float_dot(const uint8_t* row, const S* sc, int gs, int64_t nb, const Act& a, int64_t m0, float* acc1) {
  constexpr int NW = kInt4RunVecs;
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  for (int64_t b = 0; b < nb; ++b) {
    V w[NW];
    int4_unpack_run(row + 16 * b, w);
    const V s = vset1(sload(sc, b >> gs));
    for (int r = 0; r < R; ++r) {
      const float* x = a.f + (m0 + r) * a.ldq + 32 * b;
      V d = vmul(w[0], vload(x));
      for (int j = 1; j < NW; ++j) d = vfma(w[j], vload(x + N * j), d);
      acc[r] = vfma(d, s, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) acc1[r] = vsum(acc[r]);
}

#if defined(__AVX2__)
// acc1[r] = sum_b s_b * d_x,b * (q_w,b . q_x,b) over the int8 codes of token row m0 + r (Q8).
template <int R, class S, bool VNNI>
void int4_q8_dot(const uint8_t* row, const S* sc, int gs, int64_t nb, const Act& a, int64_t m0, float* acc1) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i m4x2 = _mm256_set1_epi8(0x0f);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {  // two blocks per step: low nibbles of both, then high nibbles
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * b));
    const __m256i lo = _mm256_and_si256(bytes, m4x2), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4x2);
    const float s0 = sload(sc, b >> gs), s1 = sload(sc, (b + 1) >> gs);
    for (int r = 0; r < R; ++r) {
      const int8_t* xq = a.q + (m0 + r) * a.ldq + 32 * b;
      const float* dx = a.dx + (m0 + r) * a.ldb + b;
      const __m256i p = q8_dot2<VNNI>(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)), hi,
                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32)));
      const __m256 scale = _mm256_set_m128(_mm_set1_ps(s1 * dx[1]), _mm_set1_ps(s0 * dx[0]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
    }
  }
  if (b < nb) {  // a trailing odd block, stored unpaired
    const float s = sload(sc, b >> gs);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * b));
    const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), _mm_and_si128(bytes, m4));
    for (int r = 0; r < R; ++r) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + (m0 + r) * a.ldq + 32 * b));
      const __m256i p = q8_dot2<VNNI>(w, xq, _mm256_setzero_si256(), _mm256_setzero_si256());
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s * a.dx[(m0 + r) * a.ldb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) acc1[r] = hsum256(acc[r]);
}
#endif

// y[r] = row n of an int4 weight . token row m0 + r, for R token rows; S: the scales' type.
// Per 32-block b: s_b * d_x,b * (sum q_w q_x) - s_b * z_b * (d_x,b * sum q_x), the second term
// (the zero point's share) summed separately as `corr`.
template <int R, class S, bool Q8>
void int4_rows(const DecodeLinear& L, int64_t n, const Act& a, int64_t m0, float* out, bool vnni) {
  const int64_t K = L.K, nb = K / 32, ng = K / L.G;
  const int gs = L.gshift;  // block b has scale b >> gs (G = 32 << gs)
  const uint8_t* row = L.packed + n * (K / 2);
  const S* sc = static_cast<const S*>(L.scales) + n * ng;
  const float* zs = L.zeros ? L.zeros + n * ng : nullptr;
  float acc1[R];
  if constexpr (!Q8) {
    int4_float_dot<R>(row, sc, gs, nb, a, m0, acc1);
  } else {
#if defined(__AVX2__)
    if (vnni)
      int4_q8_dot<R, S, true>(row, sc, gs, nb, a, m0, acc1);
    else
      int4_q8_dot<R, S, false>(row, sc, gs, nb, a, m0, acc1);
#else
  for (int r = 0; r < R; ++r) {
    const int8_t* xq = a.q + (m0 + r) * a.ldq;
    const float* dx = a.dx + (m0 + r) * a.ldb;
    float acc = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      int dot = 0;
      for (int i = 0; i < 16; ++i) {
        dot += (row[16 * b + i] & 0x0f) * xq[q8_slot(32 * b + i, nb)];
        dot += (row[16 * b + i] >> 4) * xq[q8_slot(32 * b + 16 + i, nb)];
      }
      acc += sload(sc, b >> gs) * dx[b] * static_cast<float>(dot);
    }
    acc1[r] = acc;
  }
#endif
  }
  for (int r = 0; r < R; ++r) {
    const float* xs = a.xs + (m0 + r) * a.ldb;
    float corr = 0.f;
    int64_t b = 0;
    if (!zs) {  // one zero point: z * sum_b s_b xs_b
#if defined(__AVX2__)
      if (gs == 0) {
        __m256 c = _mm256_setzero_ps();
        for (; b + 8 <= nb; b += 8) c = _mm256_fmadd_ps(sload8(sc + b), _mm256_loadu_ps(xs + b), c);
        corr = hsum256(c);
      }
#endif
      for (; b < nb; ++b) corr += sload(sc, b >> gs) * xs[b];
      corr *= L.zero;
    } else {
      for (; b < nb; ++b) corr += sload(sc, b >> gs) * zs[b >> gs] * xs[b];
    }
    out[r] = acc1[r] - corr;
  }
}

// Row n of a float32 weight . token row m (one token: two accumulators hide the FMA latency;
// several tokens go through f32_block).
float f32_row(const DecodeLinear& L, int64_t n, const Act& a, int64_t m) {
  const int64_t K = L.K;
  const float* w = L.w + n * K;
  const float* x = a.f + m * a.ldq;
  V acc0 = vzero(), acc1 = vzero();
  int64_t k = 0;
  for (; k + 2 * N <= K; k += 2 * N) {
    acc0 = vfma(vload(w + k), vload(x + k), acc0);
    acc1 = vfma(vload(w + k + N), vload(x + k + N), acc1);
  }
  float s = vsum(vadd(acc0, acc1));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

// Row n of L for every token row: y[m * ldy] (+)= W[n] . x[m] + bias[n]. int4 weights, and float32
// ones for a single token (linear_rows sends several tokens of float32 weights to f32_block).
void linear_row(const DecodeLinear& L, int64_t n, const Act& a, int64_t M, float* y, int64_t ldy, bool add) {
  float out[kRows];
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int64_t R = std::min<int64_t>(kRows, M - m0);
    if (L.int4) {
      const bool h = L.scales_f16, q = a.q8, vn = q && use_vnni();
      switch (R * 4 + (h ? 2 : 0) + (q ? 1 : 0)) {
#define LF_INT4_CASE(r)                                                    \
        case r * 4 + 0: int4_rows<r, float, false>(L, n, a, m0, out, vn); break;    \
        case r * 4 + 1: int4_rows<r, float, true>(L, n, a, m0, out, vn); break;     \
        case r * 4 + 2: int4_rows<r, uint16_t, false>(L, n, a, m0, out, vn); break; \
        case r * 4 + 3: int4_rows<r, uint16_t, true>(L, n, a, m0, out, vn); break;
        LF_INT4_CASE(1)
        LF_INT4_CASE(2)
        LF_INT4_CASE(3)
        LF_INT4_CASE(4)
        LF_INT4_CASE(5)
        LF_INT4_CASE(6)
        LF_INT4_CASE(7)
        LF_INT4_CASE(8)
#undef LF_INT4_CASE
      }
    } else {
      for (int64_t r = 0; r < R; ++r) out[r] = f32_row(L, n, a, m0 + r);
    }
    const float b = L.bias ? L.bias[n] : 0.f;
    for (int64_t r = 0; r < R; ++r) {
      float& dst = y[(m0 + r) * ldy];
      dst = (add ? dst : 0.f) + out[r] + b;
    }
  }
}

#if defined(__AVX2__)
// out[j] = sum of the 8 lanes of a[j], j < n: eight sums in 9 instructions (hadd tree), then fours.
inline void hsums256(const __m256* a, int n, float* out) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[j], a[j + 1]), _mm256_hadd_ps(a[j + 2], a[j + 3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[j + 4], a[j + 5]), _mm256_hadd_ps(a[j + 6], a[j + 7]));
    _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
  }
  for (; j + 4 <= n; j += 4) {
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a[j], a[j + 1]), _mm256_hadd_ps(a[j + 2], a[j + 3]));
    _mm_storeu_ps(out + j, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
  }
  for (; j < n; ++j) out[j] = hsum256(a[j]);
}
#endif

// out[i][r] = row n0 + i of a float32 weight . token row m0 + r: NR weight rows x R token rows of
// accumulators, so every loaded vector feeds several FMAs (batched decode, prefill). Meanwhile it
// prefetches rows pf[0 .. npf) (stride K) a cache line per 16 floats: the weight rows a later block
// reads come from memory while this block computes from L1.
template <int NR, int R>
void f32_block(const DecodeLinear& L, int64_t n0, const Act& a, int64_t m0, float (*out)[4], const float* pf,
               int64_t npf) {
  const int64_t K = L.K;
  V acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = vzero();
  int64_t k = 0;
  for (; k + N <= K; k += N) {
    if ((k & 15) == 0)
      for (int64_t j = 0; j < npf; ++j) __builtin_prefetch(pf + j * K + k, 0, 3);
    V wv[NR];
    for (int i = 0; i < NR; ++i) wv[i] = vload(L.w + (n0 + i) * K + k);
    for (int r = 0; r < R; ++r) {
      const V xv = vload(a.f + (m0 + r) * a.ldq + k);
      for (int i = 0; i < NR; ++i) acc[i][r] = vfma(wv[i], xv, acc[i][r]);
    }
  }
  float sums[NR * R];
#if defined(__AVX2__) && !defined(__AVX512F__)
  hsums256(&acc[0][0], NR * R, sums);  // the NR x R horizontal sums as a tree of hadds
#else
  for (int i = 0; i < NR * R; ++i) sums[i] = vsum((&acc[0][0])[i]);
#endif
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      float t = sums[i * R + r];
      for (int64_t j = k; j < K; ++j) t += L.w[(n0 + i) * K + j] * a.f[(m0 + r) * a.ldq + j];
      out[i][r] = t;
    }
}

// Rows [n0, n1) of L for every token row: y[m * ldy + (n - n0)] (+)= W[n] . x[m] + bias[n].
// Float32 weights with several tokens: blocks of 3 weight rows x 4 tokens. A block's rows are read
// from memory once, in its first pass over the tokens, and stay in L1 for the other passes; the
// passes prefetch the rows kAhead on, spread over them, so that memory streams while the FMAs run.
// Long prompts go through in tiles of kTile tokens (a tile's activations stay in L2; so do the
// item's weight rows, re-read per tile); int4 weights likewise, a row at a time per tile.
void linear_rows(const DecodeLinear& L, int64_t n0, int64_t n1, const Act& a, int64_t M, float* y, int64_t ldy,
                 bool add) {
  constexpr int64_t kTile = 64;
  if (L.int4 || M == 1) {  // tiles of kTile tokens, whose int8 codes stay in L1/L2 across the rows
    for (int64_t t0 = 0; t0 < M; t0 += kTile) {
      const auto at_row = [t0](auto* p, int64_t ld) { return p ? p + t0 * ld : p; };
      const Act at{at_row(a.f, a.ldq), at_row(a.q, a.ldq), at_row(a.dx, a.ldb), at_row(a.xs, a.ldb), a.ldq, a.ldb, a.q8};
      for (int64_t n = n0; n < n1; ++n)
        linear_row(L, n, at, std::min(kTile, M - t0), y + t0 * ldy + (n - n0), ldy, add);
    }
    return;
  }
  constexpr int BN = 3, BM = 4;  // weight rows x token rows per block: 12 accumulators
  constexpr int64_t kAhead = 12;
  float out[BN][4];
  for (int64_t t0 = 0; t0 < M; t0 += kTile) {
    const int64_t t1 = std::min(M, t0 + kTile), passes = (t1 - t0 + BM - 1) / BM;
    for (int64_t n = n0; n < n1; n += BN) {
      const int64_t nr = std::min<int64_t>(BN, n1 - n);
      for (int64_t m0 = t0; m0 < t1; m0 += BM) {
        const int64_t r = std::min<int64_t>(BM, t1 - m0), p = (m0 - t0) / BM;
        // this pass prefetches rows [lo, hi) of the block kAhead rows on (first tile only)
        const int64_t base = n + kAhead, lo = std::min(L.N, base + BN * p / passes),
                      hi = std::min(L.N, base + BN * (p + 1) / passes);
        const float* pf = L.w + lo * L.K;
        const int64_t npf = t0 == 0 ? hi - lo : 0;
        switch (nr * 4 + r - 1) {
#define LF_F32_CASE(i, j) case i * 4 + j - 1: f32_block<i, j>(L, n, a, m0, out, pf, npf); break;
          LF_F32_CASE(1, 1) LF_F32_CASE(1, 2) LF_F32_CASE(1, 3) LF_F32_CASE(1, 4)
          LF_F32_CASE(2, 1) LF_F32_CASE(2, 2) LF_F32_CASE(2, 3) LF_F32_CASE(2, 4)
          LF_F32_CASE(3, 1) LF_F32_CASE(3, 2) LF_F32_CASE(3, 3)
#undef LF_F32_CASE
          default: f32_block<3, 4>(L, n, a, m0, out, pf, npf); break;
        }
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t rr = 0; rr < r; ++rr) {
            float& dst = y[(m0 + rr) * ldy + (n - n0 + i)];
            dst = (add ? dst : 0.f) + out[i][rr] + (L.bias ? L.bias[n + i] : 0.f);
          }
      }
    }
  }
}

// 1 / sqrt(mean(x^2) + eps) over n values, the sum in double: the RMSNorm factor of a row.
inline float rms_scale(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  return static_cast<float>(1.0 / std::sqrt(ss / double(n) + double(eps)));
}

// RMSNorm of rows [m0, m0 + rows) of x into h (float), then prep_row when an int4 weight reads h.
// g null: the rows copied as they are (OLMo 2/3's sublayers read the residual stream unnormed).
void norm_rows(const float* x, const float* g, int64_t D, float eps, float* h, int64_t m0, int64_t rows,
               int64_t ldh, int8_t* q8, float* dx, float* xs, int64_t ldq, int64_t ldb, bool quant, bool q8mode) {
  for (int64_t m = m0; m < m0 + rows; ++m) {
    const float* xr = x + m * D;
    float* hr = h + m * ldh;
    if (g) {
      const float r = rms_scale(xr, D, eps);
      for (int64_t i = 0; i < D; ++i) hr[i] = xr[i] * r * g[i];
    } else {
      std::memcpy(hr, xr, sizeof(float) * D);
    }
    if (quant) prep_row(hr, D, q8 + m * ldq, dx + m * ldb, xs + m * ldb, q8mode);
  }
}

// x[m] += RMSNorm(y[m]) * g for rows m < M (a post-norm before the residual add), split over the
// threads (`omp for`; its barrier ends it).
void add_normed_rows(float* x, const float* y, const float* g, int64_t D, float eps, int64_t M) {
#pragma omp for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const float* yr = y + m * D;
    const float r = rms_scale(yr, D, eps);
    float* xr = x + m * D;
    for (int64_t i = 0; i < D; ++i) xr[i] += yr[i] * r * g[i];
  }
}

// The keys (or values) of one kv head of one sequence: position t at k + t * stride, or, paged,
// at k + table[t / bs] * block_elems + (t % bs) * stride.
struct KvSeq {
  const float* k;
  const float* v;
  int64_t stride;
  const int32_t* table;
  int64_t bs, block_elems;

  int64_t offset(int64_t t) const { return table ? table[t / bs] * block_elems + (t % bs) * stride : t * stride; }
  // fn(keys, values, first position, count) over runs of positions lo..n-1 with the same stride
  template <class Fn>
  void runs(int64_t lo, int64_t n, Fn fn) const {
    if (!table) {
      fn(k + lo * stride, v + lo * stride, lo, n - lo);
      return;
    }
    for (int64_t b = lo / bs; b * bs < n; ++b) {
      const int64_t first = std::max(lo, b * bs), off = table[b] * block_elems + (first - b * bs) * stride;
      fn(k + off, v + off, first, std::min((b + 1) * bs, n) - first);
    }
  }
};

// s[j] = q . k_j, j < J (keys J at stride ks): J accumulators, so the FMAs do not wait on each other.
template <int J>
void dots(const float* q, const float* k, int64_t ks, int64_t hd, float* s) {
  V acc[J];
  for (int j = 0; j < J; ++j) acc[j] = vzero();
  int64_t i = 0;
  for (; i + N <= hd; i += N) {
    const V qv = vload(q + i);
    for (int j = 0; j < J; ++j) acc[j] = vfma(qv, vload(k + j * ks + i), acc[j]);
  }
#if defined(__AVX2__) && !defined(__AVX512F__)
  hsums256(acc, J, s);
#else
  for (int j = 0; j < J; ++j) s[j] = vsum(acc[j]);
#endif
  for (int j = 0; j < J; ++j)
    for (int64_t e = i; e < hd; ++e) s[j] += q[e] * k[j * ks + e];
}

// out[c0 .. c0 + NV * N) += sum_l p[l] * v_l[same dims], l < n (values at stride vs): the NV output
// vectors stay in registers across the positions.
template <int NV>
void weighted_sum(const float* p, const float* v, int64_t vs, int64_t n, int64_t c0, float* out) {
  V acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = vload(out + c0 + j * N);
  for (int64_t l = 0; l < n; ++l) {
    const V pl = vset1(p[l]);
    for (int j = 0; j < NV; ++j) acc[j] = vfma(pl, vload(v + l * vs + c0 + j * N), acc[j]);
  }
  for (int j = 0; j < NV; ++j) vstore(out + c0 + j * N, acc[j]);
}

// softmax(q_g . k_l * scale) . v_l over positions lo..t of one kv head of one sequence (lo > 0: a
// sliding window), for the G query heads that share it (q_g = q + g * hd, out likewise; scores of
// head g at s + g * ls, indexed by position): the keys and values come from memory once and from
// L1 for the group's other heads. cap > 0: the scores are cap * tanh(q . k * scale) (scale then
// holds the softmax scale / cap).
void attend(const float* q, int64_t G, const KvSeq& kv, int64_t lo, int64_t t, int64_t hd, float scale, float cap,
            float* s, int64_t ls, float* out) {
  kv.runs(lo, t + 1, [&](const float* kb, const float*, int64_t l0, int64_t n) {
    int64_t l = 0;
    for (; l + 4 <= n; l += 4) {
      if (l + 8 <= n)  // the next keys, while these are dotted: a line per 64 bytes of each row
        for (int64_t r = 0; r < 4; ++r)
          for (int64_t e = 0; e < hd; e += 16) __builtin_prefetch(kb + (l + 4 + r) * kv.stride + e, 0, 3);
      for (int64_t g = 0; g < G; ++g) dots<4>(q + g * hd, kb + l * kv.stride, kv.stride, hd, s + g * ls + l0 + l);
    }
    for (; l < n; ++l)
      for (int64_t g = 0; g < G; ++g) dots<1>(q + g * hd, kb + l * kv.stride, kv.stride, hd, s + g * ls + l0 + l);
  });
  for (int64_t g = 0; g < G; ++g) {
    float* sg = s + g * ls;
    float mx = -INFINITY;
    if (cap > 0.f) {
      softcap(sg + lo, t + 1 - lo, scale, cap);
      for (int64_t l = lo; l <= t; ++l) mx = std::max(mx, sg[l]);
    } else {
      for (int64_t l = lo; l <= t; ++l) mx = std::max(mx, sg[l] *= scale);
    }
    float sum = 0.f;
    int64_t l = lo;
    for (; l + N <= t + 1; l += N) {
      const V e = vexp(vsub(vload(sg + l), vset1(mx)));
      vstore(sg + l, e);
      sum += vsum(e);
    }
    for (; l <= t; ++l) {
      sg[l] = std::exp(sg[l] - mx);
      sum += sg[l];
    }
    // fold 1 / sum into the weights: the value sums come out normalised
    const float inv = 1.f / sum;
    for (l = lo; l <= t; ++l) sg[l] *= inv;
    for (int64_t i = 0; i < hd; ++i) out[g * hd + i] = 0.f;
  }
  const int64_t hv = hd / N * N;  // dims in whole vectors; the rest one by one
  kv.runs(lo, t + 1, [&](const float*, const float* vb, int64_t l0, int64_t n) {
    for (int64_t g = 0; g < G; ++g) {
      const float* p = s + g * ls + l0;
      float* o = out + g * hd;
      for (int64_t c0 = 0; c0 < hv; c0 += 8 * N) {
        switch (std::min<int64_t>(8, (hv - c0) / N)) {
          case 1: weighted_sum<1>(p, vb, kv.stride, n, c0, o); break;
          case 2: weighted_sum<2>(p, vb, kv.stride, n, c0, o); break;
          case 3: weighted_sum<3>(p, vb, kv.stride, n, c0, o); break;
          case 4: weighted_sum<4>(p, vb, kv.stride, n, c0, o); break;
          case 5: weighted_sum<5>(p, vb, kv.stride, n, c0, o); break;
          case 6: weighted_sum<6>(p, vb, kv.stride, n, c0, o); break;
          case 7: weighted_sum<7>(p, vb, kv.stride, n, c0, o); break;
          default: weighted_sum<8>(p, vb, kv.stride, n, c0, o); break;
        }
      }
      for (int64_t l = 0; l < n; ++l)
        for (int64_t i = hv; i < hd; ++i) o[i] += p[l] * vb[l * kv.stride + i];
    }
  });
}

// Head g of sequence s in layer li.
KvSeq kv_seq(const DecodeWeights& w, const DecodeStep& st, int64_t li, int64_t s, int64_t g) {
  const int64_t hd = w.head_dim;
  const DecodePaged& p = st.paged;
  if (!p.table) {
    const DecodeLayer& L = w.layers[li];
    return KvSeq{L.kcache + g * w.max_len * hd, L.vcache + g * w.max_len * hd, hd, nullptr, 1, 0};
  }
  const int64_t block_elems = p.block_size * w.n_kv_heads * hd;
  const int64_t base = li * p.num_blocks * block_elems + g * hd;
  return KvSeq{p.k_pool + base, p.v_pool + base, w.n_kv_heads * hd, p.table + s * p.table_stride, p.block_size,
               block_elems};
}

// x *= rsqrt(mean(x^2) + eps) * weight over one head (Qwen3's q/k norm; float32 like HF's).
inline void norm_head(float* x, const float* weight, int64_t hd, float eps) {
  float ss = 0.f;
  for (int64_t i = 0; i < hd; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / static_cast<float>(hd) + eps);
  for (int64_t i = 0; i < hd; ++i) x[i] = x[i] * r * weight[i];
}

// The same over n values with a double sum (OLMo 2/3's q/k norm over all heads of a token).
inline void norm_wide(float* x, const float* weight, int64_t n, float eps) {
  const float r = rms_scale(x, n, eps);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * r * weight[i];
}

inline void rope_row(float* x, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i] + a * s[i];
  }
}

}  // namespace

// The per-step buffers a feed-forward uses (see DecodeScratch); route .. gxs only by MoE layers.
struct FfnBufs {
  float* x;                       // residual stream (M, D)
  float* h; int8_t* q8; float* dx; float* xs;  // SwiGLU activations and their int4 form
  float* gu;                      // gate | up rows
  float* route; float* out;       // routing table, one expert's down-projection rows
  float* gh; int8_t* gq; float* gdx; float* gxs;  // this thread's gathered normalised rows
  int64_t kmax, ldb;
  bool act_q8;
  bool gelu;                      // GeGLU instead of SwiGLU
};

// h[i] = silu(gate) * up (or gelu_tanh(gate) * up) for `rows` rows of `in` through (g, u); with d
// int4, the int4 form of h too. One `omp for` over 32-row chunks of the FFN (its implicit barrier
// ends it).
void swiglu_rows(const DecodeLinear& g, const DecodeLinear& u, const DecodeLinear& d, const Act& in, int64_t rows,
                 const FfnBufs& b) {
  const int64_t F = g.N;
#pragma omp for schedule(guided)
  for (int64_t c = 0; c < (F + 31) / 32; ++c) {
    const int64_t f0 = 32 * c, f1 = std::min(F, f0 + 32);
    linear_rows(g, f0, f1, in, rows, b.gu + f0, 2 * F, false);
    linear_rows(u, f0, f1, in, rows, b.gu + F + f0, 2 * F, false);
    for (int64_t m = 0; m < rows; ++m) {
      const float* gr = b.gu + m * 2 * F;
      float* hr = b.h + m * b.kmax;
      int64_t f = f0;
      if (b.gelu) {
        for (; f + N <= f1; f += N) vstore(hr + f, vgeglu(vload(gr + f), vload(gr + F + f)));
        for (; f < f1; ++f) hr[f] = geglu(gr[f], gr[F + f]);
      } else {
        for (; f + N <= f1; f += N) {
          const V gv = vload(gr + f);
          vstore(hr + f, vmul(vmul(gv, vsigmoid(gv)), vload(gr + F + f)));
        }
        for (; f < f1; ++f) hr[f] = gr[f] / (1.f + std::exp(-gr[f])) * gr[F + f];
      }
      if (d.int4) prep_blocks(hr, F / 32, c, c + 1, b.q8 + m * b.kmax, b.dx + m * b.ldb, b.xs + m * b.ldb, b.act_q8);
    }
  }
}

// The MoE feed-forward of one layer for the M rows whose normalised form is `normed` (this
// thread's copy): routing (one thread), then each chosen expert over its tokens, then the
// shared expert; every contribution is added into x, weighted after the down projection (as
// the Python model and llama.cpp: with int4 weights the down projection's input is rounded to
// Q8_0, so weighting before it would round differently).
void moe_ffn(const DecodeWeights& w, const DecodeMoE& moe, const Act& normed, int64_t M, const FfnBufs& b) {
  const int64_t D = w.dim, E = moe.n_experts, K = moe.top_k;
  int32_t* ids = reinterpret_cast<int32_t*>(b.route);          // (M, K)
  float* wts = b.route + M * K;                                  // (M, K)
  float* sh = wts + M * K;                                       // (M,)
  int32_t* start = reinterpret_cast<int32_t*>(sh + M);           // (E + 1,): expert e's list at [start[e], start[e+1])
  int32_t* tok = start + E + 1;                                  // (M K,) token of each list entry
  float* tw = reinterpret_cast<float*>(tok + M * K);             // (M K,) its weight
#pragma omp single
  {
    std::vector<float> p(size_t(E), 0.f);
    std::vector<char> taken(static_cast<size_t>(E), 0);
    for (int64_t m = 0; m < M; ++m) {
      const float* hr = normed.f + m * normed.ldq;
      float mx = -INFINITY;
      for (int64_t e = 0; e < E; ++e) {
        const float* r = moe.router + e * D;
        float acc = 0.f;
        for (int64_t i = 0; i < D; ++i) acc += hr[i] * r[i];
        p[size_t(e)] = acc;
        mx = std::max(mx, acc);
      }
      double sum = 0.0;
      for (int64_t e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(p[size_t(e)] - mx));
      for (int64_t e = 0; e < E; ++e) p[size_t(e)] = static_cast<float>(p[size_t(e)] / sum);
      double kept = 0.0;
      std::fill(taken.begin(), taken.end(), 0);
      for (int64_t s = 0; s < K; ++s) {  // the k largest, the lower index first among equals; always
        int64_t best = -1;               // k distinct valid experts, even if NaNs came in
        for (int64_t e = 0; e < E; ++e)
          if (!taken[size_t(e)] && (best < 0 || p[size_t(e)] > p[size_t(best)])) best = e;
        taken[size_t(best)] = 1;
        ids[m * K + s] = static_cast<int32_t>(best);
        wts[m * K + s] = p[size_t(best)];
        kept += p[size_t(best)];
      }
      if (moe.norm_topk)
        for (int64_t s = 0; s < K; ++s) wts[m * K + s] = static_cast<float>(wts[m * K + s] / kept);
      if (moe.shared_ffn) {
        float acc = 0.f;
        for (int64_t i = 0; i < D; ++i) acc += hr[i] * moe.shared_gate[i];
        sh[m] = 1.f / (1.f + std::exp(-acc));
      }
    }
    for (int64_t e = 0; e <= E; ++e) start[e] = 0;
    for (int64_t i = 0; i < M * K; ++i) ++start[ids[i] + 1];
    for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
    std::vector<int32_t> fill(start, start + E);
    for (int64_t i = 0; i < M * K; ++i) {   // tokens in order within each expert's list
      const int32_t at = fill[size_t(ids[i])]++;
      tok[at] = static_cast<int32_t>(i / K);
      tw[at] = wts[i];
    }
  }
  const Act shared_h{b.h, b.q8, b.dx, b.xs, b.kmax, b.ldb, b.act_q8};
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = start[e + 1] - start[e];
    if (!n) continue;
    const DecodeLinear& g = moe.experts[3 * e];
    const DecodeLinear& u = moe.experts[3 * e + 1];
    const DecodeLinear& d = moe.experts[3 * e + 2];
    for (int64_t i = 0; i < n; ++i) {      // this thread's copy of the expert's tokens' rows
      const int64_t m = tok[start[e] + i];
      std::memcpy(b.gh + i * b.kmax, normed.f + m * normed.ldq, sizeof(float) * D);
      if (g.int4 || u.int4) {
        std::memcpy(b.gq + i * b.kmax, normed.q + m * normed.ldq, size_t(b.kmax));
        std::memcpy(b.gdx + i * b.ldb, normed.dx + m * normed.ldb, sizeof(float) * b.ldb);
        std::memcpy(b.gxs + i * b.ldb, normed.xs + m * normed.ldb, sizeof(float) * b.ldb);
      }
    }
    const Act gathered{b.gh, b.gq, b.gdx, b.gxs, b.kmax, b.ldb, b.act_q8};
    swiglu_rows(g, u, d, gathered, n, b);
#pragma omp for schedule(guided)
    for (int64_t c = 0; c < (D + kChunk - 1) / kChunk; ++c) {
      const int64_t c0 = kChunk * c, c1 = std::min(D, c0 + kChunk);
      linear_rows(d, c0, c1, shared_h, n, b.out + c0, D, false);
      for (int64_t i = 0; i < n; ++i) {
        float* xr = b.x + int64_t(tok[start[e] + i]) * D;
        const float* o = b.out + i * D;
        const float wt = tw[start[e] + i];
        for (int64_t j = c0; j < c1; ++j) xr[j] += wt * o[j];
      }
    }
  }
  if (moe.shared_ffn) {
    swiglu_rows(moe.sh_gate, moe.sh_up, moe.sh_down, normed, M, b);
#pragma omp for schedule(guided)
    for (int64_t c = 0; c < (D + kChunk - 1) / kChunk; ++c) {
      const int64_t c0 = kChunk * c, c1 = std::min(D, c0 + kChunk);
      linear_rows(moe.sh_down, c0, c1, shared_h, M, b.out + c0, D, false);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = c0; j < c1; ++j) b.x[m * D + j] += sh[m] * b.out[m * D + j];
    }
  }
}

void decode_forward(const DecodeWeights& w, const DecodeStep& st) {
  const DecodeScratch sp(w, st.M, st.threads);
  const int64_t M = st.M, D = w.dim, H = w.n_heads, KV = w.n_kv_heads, hd = w.head_dim;
  const int64_t kmax = sp.kmax, ldb = sp.ldb, nqkv = (H + 2 * KV) * hd, half = hd / 2;
  float* x = st.scratch + sp.x;
  float* h = st.scratch + sp.h;
  int8_t* q8 = reinterpret_cast<int8_t*>(st.scratch + sp.q8);
  float* dx = st.scratch + sp.dx;
  float* xs = st.scratch + sp.xs;
  float* qkv = st.scratch + sp.qkv;
  float* gu = st.scratch + sp.gu;
  float* y = st.scratch + sp.y;
  const bool head_blocks = hd % 32 == 0;  // attention items can prepare their own blocks of h
  const Act shared{h, q8, dx, xs, kmax, ldb, w.act_q8};

#pragma omp parallel num_threads(st.threads)
  {
    float* mine = st.scratch + int64_t(omp_get_thread_num()) * sp.per_thread;
    float* nh = mine + sp.norm;
    int8_t* nq = reinterpret_cast<int8_t*>(mine + sp.norm_q8);
    float* ndx = mine + sp.norm_dx;
    float* nxs = mine + sp.norm_xs;
    float* scores = mine + sp.scores;
    const Act normed{nh, nq, ndx, nxs, kmax, ldb, w.act_q8};
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float* e = w.embed + st.tokens[m] * D;
      if (w.embed_scale > 0.f)
        for (int64_t i = 0; i < D; ++i) x[m * D + i] = e[i] * w.embed_scale;
      else
        std::memcpy(x + m * D, e, sizeof(float) * D);
    }

    for (int64_t li = 0; li < w.n_layers; ++li) {
      const DecodeLayer& L = w.layers[li];
      // ---- attention: q/k/v a head at a time, RoPE, k/v into the cache ----
      norm_rows(x, L.attn_norm, D, w.eps, nh, 0, M, kmax, nq, ndx, nxs, kmax, ldb, L.q.int4 || L.k.int4 || L.v.int4,
                w.act_q8);
#pragma omp for schedule(guided)
      for (int64_t j = 0; j < H + 2 * KV; ++j) {
        const DecodeLinear& lin = j < H ? L.q : j < H + KV ? L.k : L.v;
        const int64_t r0 = (j < H ? j : j < H + KV ? j - H : j - H - KV) * hd;
        linear_rows(lin, r0, r0 + hd, normed, M, qkv + j * hd, nqkv, false);
        if (L.qk_full && j < H + KV) continue;  // q, k normed over all heads, rotated and cached below
        for (int64_t m = 0; m < M; ++m) {
          const int64_t t = st.positions[m];
          float* v = qkv + m * nqkv + j * hd;
          if (j < H + KV && L.q_norm) norm_head(v, j < H ? L.q_norm : L.k_norm, hd, w.eps);
          if (j < H + KV && L.rope) rope_row(v, L.rope_cos + t * half, L.rope_sin + t * half, half);
          if (j >= H) {
            const KvSeq kv = kv_seq(w, st, li, st.seqs ? st.seqs[m] : 0, r0 / hd);
            std::memcpy(const_cast<float*>(j < H + KV ? kv.k : kv.v) + kv.offset(t), v, sizeof(float) * hd);
          }
        }
      }
      if (L.qk_full) {  // OLMo 2/3: per token, its q (then its k) normed as one vector, then RoPE per head
#pragma omp for schedule(static)
        for (int64_t i = 0; i < 2 * M; ++i) {
          const int64_t m = i / 2, t = st.positions[m], n = i % 2 ? KV : H;
          float* v = qkv + m * nqkv + (i % 2 ? H * hd : 0);
          norm_wide(v, i % 2 ? L.k_norm : L.q_norm, n * hd, w.eps);
          for (int64_t g = 0; g < n; ++g) {
            if (L.rope) rope_row(v + g * hd, L.rope_cos + t * half, L.rope_sin + t * half, half);
            if (i % 2) {
              const KvSeq kv = kv_seq(w, st, li, st.seqs ? st.seqs[m] : 0, g);
              std::memcpy(const_cast<float*>(kv.k) + kv.offset(t), v + g * hd, sizeof(float) * hd);
            }
          }
        }
      }
      // attention: an item is one token's query heads that share a kv head (or one head, when
      // there are fewer such groups than threads)
      const int64_t grp = H / KV, gs = M * KV >= st.threads ? grp : 1, per_tok = H / gs;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < M * per_tok; ++i) {
        const int64_t m = i / per_tok, j = i % per_tok * gs, g = j / grp;
        float* out = h + m * kmax + j * hd;
        const int64_t t = st.positions[m], lo = L.window > 0 ? std::max<int64_t>(0, t - L.window + 1) : 0;
        attend(qkv + m * nqkv + j * hd, gs, kv_seq(w, st, li, st.seqs ? st.seqs[m] : 0, g), lo, t, hd,
               w.score_scale, w.score_cap, scores, sp.score_ld, out);
        if (L.o.int4 && head_blocks)
          prep_blocks(h + m * kmax, H * hd / 32, j * hd / 32, (j + gs) * hd / 32, q8 + m * kmax, dx + m * ldb,
                      xs + m * ldb, w.act_q8);
      }
      if (L.o.int4 && !head_blocks) {
#pragma omp single
        for (int64_t m = 0; m < M; ++m) prep_row(h + m * kmax, H * hd, q8 + m * kmax, dx + m * ldb, xs + m * ldb, w.act_q8);
      }
      // the o projection adds into x, or, post-normed (Gemma 2/3), goes to y first
      float* ao = L.post_attn_norm ? y : x;
#pragma omp for schedule(guided)
      for (int64_t c = 0; c < (D + kChunk - 1) / kChunk; ++c)
        linear_rows(L.o, kChunk * c, std::min(D, kChunk * c + kChunk), shared, M, ao + kChunk * c, D,
                    !L.post_attn_norm);
      if (L.post_attn_norm) add_normed_rows(x, y, L.post_attn_norm, D, w.eps, M);
      // ---- MLP: gate, up and SwiGLU 32 rows at a time, then down (or the MoE feed-forward) ----
      float* fo = L.post_ffn_norm ? y : x;  // likewise for the FFN output
      const FfnBufs bufs{fo, h, q8, dx, xs, gu, st.scratch + sp.route, st.scratch + sp.moe_out, mine + sp.g_norm,
                         reinterpret_cast<int8_t*>(mine + sp.g_q8), mine + sp.g_dx, mine + sp.g_xs, kmax, ldb,
                         w.act_q8, w.gelu};
      if (L.moe.n_experts) {
        norm_rows(x, L.mlp_norm, D, w.eps, nh, 0, M, kmax, nq, ndx, nxs, kmax, ldb, L.moe.int4_in, w.act_q8);
        if (L.post_ffn_norm) {  // the experts add into y
#pragma omp for schedule(static)
          for (int64_t m = 0; m < M; ++m) std::memset(y + m * D, 0, sizeof(float) * D);
        }
        moe_ffn(w, L.moe, normed, M, bufs);
      } else {
        norm_rows(x, L.mlp_norm, D, w.eps, nh, 0, M, kmax, nq, ndx, nxs, kmax, ldb, L.gate.int4 || L.up.int4,
                  w.act_q8);
        swiglu_rows(L.gate, L.up, L.down, normed, M, bufs);
#pragma omp for schedule(guided)
        for (int64_t c = 0; c < (D + kChunk - 1) / kChunk; ++c)
          linear_rows(L.down, kChunk * c, std::min(D, kChunk * c + kChunk), shared, M, fo + kChunk * c, D,
                      !L.post_ffn_norm);
      }
      if (L.post_ffn_norm) add_normed_rows(x, y, L.post_ffn_norm, D, w.eps, M);
    }
    // ---- output ----
    for (int64_t i = 0; i < st.nout; ++i)  // the rows whose logits are wanted, gathered
      norm_rows(x + st.out_rows[i] * D, w.final_norm, D, w.eps, nh + i * kmax, 0, 1, kmax, nq + i * kmax,
                ndx + i * ldb, nxs + i * ldb, kmax, ldb, w.output.int4, w.act_q8);
    const Act last{nh, nq, ndx, nxs, kmax, ldb, w.act_q8};
#pragma omp for schedule(guided)
    for (int64_t c = 0; c < (w.vocab + kChunk - 1) / kChunk; ++c) {
      const int64_t c0 = kChunk * c, c1 = std::min(w.vocab, c0 + kChunk);
      linear_rows(w.output, c0, c1, last, st.nout, st.logits + c0, w.vocab, false);
      if (w.final_cap > 0.f)
        for (int64_t i = 0; i < st.nout; ++i) softcap(st.logits + i * w.vocab + c0, c1 - c0, w.final_inv, w.final_cap);
    }
  }
}

}  // namespace lf::cpu::LF_ISA
