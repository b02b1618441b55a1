// ggml_quants.cpp — llama.cpp's legacy (Q4_0 .. Q8_0) and k-quant (Q4_K, Q5_K, Q6_K)
// block formats, quantise and dequantise (see ggml_quants.h). Written from the format
// facts of ggml-common.h / ggml-quants.c; every float operation is done in the order
// and precision of ggml's scalar reference code, and the file is compiled without FMA
// contraction (CMakeLists.txt), so the bytes equal ggml_quantize_chunk's without an
// importance matrix. Rows are independent and split across OpenMP threads.
#include "cpu/ggml_quants.h"

#include <omp.h>

#include <cfloat>
#include <cmath>
#include <cstring>

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kQK = 32;    // legacy block
constexpr int kQKK = 256;  // k-quant super-block
constexpr float kGroupMaxEps = 1e-15f;

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

// ---- float16 storage, round to nearest even (what F16C's vcvtps2ph and ggml's
// software path both do) ----
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // at or past 65520: rounds to infinity
  if (ax >= 0x38800000u) {                       // a normal half: keep 10 mantissa bits, round the rest
    uint32_t h = (ax >> 13) - (112u << 10);
    const uint32_t rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  float a;  // subnormal half or zero: the integer nearest |f| * 2^24 (exact scaling), ties to even
  std::memcpy(&a, &ax, 4);
  return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.f)));
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0) {
    const float v = float(m) * 5.9604644775390625e-08f;  // m * 2^-24, exact
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline void put_f16(uint8_t* p, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}
inline float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer
// part in the low mantissa bits of the sum (ggml's nearest_int does the same).
inline int nearest_int(float v) {
  const float t = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// ================================ legacy formats ================================

// The value of largest magnitude (the first one on ties) and its magnitude.
inline void signed_absmax(const float* x, int n, float* amax, float* vmax) {
  float a = 0.f, m = 0.f;
  for (int j = 0; j < n; ++j) {
    if (a < std::fabs(x[j])) {
      a = std::fabs(x[j]);
      m = x[j];
    }
  }
  *amax = a;
  *vmax = m;
}

inline void min_max(const float* x, int n, float* mn, float* mx) {
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int j = 0; j < n; ++j) {
    if (x[j] < lo) lo = x[j];
    if (x[j] > hi) hi = x[j];
  }
  *mn = lo;
  *mx = hi;
}

// Q4_0: d = m / -8 so the extreme value lands on q = 0; q = min(15, trunc(x / d + 8.5)).
void quant_q4_0(const float* x, uint8_t* y) {
  float amax, vmax;
  signed_absmax(x, kQK, &amax, &vmax);
  const float d = vmax / -8.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = imin(15, int(x[j] * id + 8.5f));
    const int q1 = imin(15, int(x[j + kQK / 2] * id + 8.5f));
    y[2 + j] = uint8_t(q0 | (q1 << 4));
  }
}

// Q4_1: d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5)).
void quant_q4_1(const float* x, uint8_t* y) {
  float mn, mx;
  min_max(x, kQK, &mn, &mx);
  const float d = (mx - mn) / 15.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  put_f16(y + 2, mn);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = imin(15, int((x[j] - mn) * id + 0.5f));
    const int q1 = imin(15, int((x[j + kQK / 2] - mn) * id + 0.5f));
    y[4 + j] = uint8_t(q0 | (q1 << 4));
  }
}

// Stores 5-bit codes q[0..31]: low nibbles as Q4 does, bit 4 of q[j] in bit j of qh.
inline void pack_q5(const int* q, uint8_t* qh_out, uint8_t* qs) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + kQK / 2] & 0x0F) << 4));
    qh |= uint32_t((q[j] >> 4) & 1) << j;
    qh |= uint32_t((q[j + kQK / 2] >> 4) & 1) << (j + kQK / 2);
  }
  std::memcpy(qh_out, &qh, 4);  // little-endian, as ggml's memcpy of a uint32_t
}

// Q5_0: d = m / -16; q = min(31, trunc(x / d + 16.5)).
void quant_q5_0(const float* x, uint8_t* y) {
  float amax, vmax;
  signed_absmax(x, kQK, &amax, &vmax);
  const float d = vmax / -16.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  int q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = imin(31, int(x[j] * id + 16.5f));
  pack_q5(q, y + 2, y + 6);
}

// Q5_1: d = (max - min) / 31, m = min; q = trunc((x - min) / d + 0.5).
void quant_q5_1(const float* x, uint8_t* y) {
  float mn, mx;
  min_max(x, kQK, &mn, &mx);
  const float d = (mx - mn) / 31.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  put_f16(y + 2, mn);
  int q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = int((x[j] - mn) * id + 0.5f) & 0xFF;
  pack_q5(q, y + 4, y + 8);
}

// Q8_0: d = amax / 127; q = roundf(x / d) (half away from zero).
void quant_q8_0(const float* x, uint8_t* y) {
  float amax = 0.f;
  for (int j = 0; j < kQK; ++j) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;
  }
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  for (int j = 0; j < kQK; ++j) y[2 + j] = uint8_t(int8_t(std::round(x[j] * id)));
}

// ================================ k-quant searches ================================

// Asymmetric fit x ~ scale * L - the_min, L in [0, nmax], minimising the weighted squared
// error: start from the min/max grid, then try nstep + 1 grid scales (nmax + rmin + rdelta*is)
// and, for each, the closed-form least-squares scale and offset of the rounded codes. The
// running min is updated as better fits are found (as ggml's make_qkx2_quants does).
float fit_qkx2(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
               float rmin, float rdelta, int nstep) {
  float mn = x[0], mx = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < mn) mn = x[i];
    if (x[i] > mx) mx = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (mn > 0) mn = 0;
  if (mx == mn) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -mn;
    return 0.f;
  }
  float iscale = float(nmax) / (mx - mn);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = uint8_t(imax(0, imin(nmax, nearest_int(iscale * (x[i] - mn)))));
    float diff = scale * float(L[i]) + mn - x[i];
    diff = diff * diff;
    best_error += w[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (mx - mn);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - mn))));
      Laux[i] = uint8_t(l);
      const float fl = float(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * float(Laux[i]) + this_min - x[i];
        diff = diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        mn = this_min;
      }
    }
  }
  *the_min = -mn;
  return scale;
}

// Symmetric fit x ~ scale * (L - nmax), L in [0, 2 nmax), weights x^2 (ggml's make_qx_quants
// with rmse_type 1 and no importance): the grid -(nmax + 0.1 is) / max for is in [-9, 9],
// keeping the one whose least-squares scale explains most of x.
float fit_qx(int n, int nmax, const float* x, int8_t* L) {
  float vmax = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      vmax = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = float(-nmax) / vmax;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    const float fl = float(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / vmax;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
      const float w = x[i] * x[i];
      const float fl = float(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// The 6-bit scale and min of sub-block j from the 12 packed bytes of Q4_K / Q5_K:
// j < 4: low 6 bits of bytes j and j + 4; j >= 4: a nibble of byte j + 4 plus the top
// 2 bits of bytes j - 4 (scale) and j (min).
inline void scale_min_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K / Q5_K share everything but the code width (nmax 15 / 31) and the search grid.
// x: 256 values; sc: 12 scale bytes; d_out, dmin_out: the two f16 fields; L: 256 codes.
void quant_k_asym(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t* dm, uint8_t* sc,
                  uint8_t* L) {
  float mins[kQKK / 32], scales[kQKK / 32], weights[32];
  uint8_t Laux[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < kQKK / 32; ++j) {
    const float* xb = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xb[l] * xb[l];
    const float av_x = std::sqrt(sum_x2 / 32.f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xb[l]);
    scales[j] = fit_qkx2(32, nmax, xb, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < kQKK / 32; ++j) {
    const int ls = imin(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const int lm = imin(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      sc[j] = uint8_t(ls);
      sc[j + 4] = uint8_t(lm);
    } else {
      sc[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      sc[j - 4] |= uint8_t((ls >> 4) << 6);
      sc[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  put_f16(dm, max_scale / 63.f);
  put_f16(dm + 2, max_min / 63.f);
  const float d_all = get_f16(dm), m_all = get_f16(dm + 2);
  for (int j = 0; j < kQKK / 32; ++j) {
    int s, m;
    scale_min_k4(j, sc, &s, &m);
    const float d = d_all * float(s);
    if (d == 0.f) continue;  // keeps the search's codes
    const float dmn = m_all * float(m);
    for (int ii = 0; ii < 32; ++ii) {
      L[32 * j + ii] = uint8_t(imax(0, imin(nmax, nearest_int((x[32 * j + ii] + dmn) / d))));
    }
  }
}

void quant_q4_K(const float* x, uint8_t* y) {
  uint8_t L[kQKK];
  quant_k_asym(x, 15, -1.f, 0.1f, 20, y, y + 4, L);
  uint8_t* q = y + 16;
  for (int j = 0; j < kQKK; j += 64) {
    for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
    q += 32;
  }
}

void quant_q5_K(const float* x, uint8_t* y) {
  uint8_t L[kQKK];
  quant_k_asym(x, 31, -0.5f, 0.1f, 15, y, y + 4, L);
  uint8_t* qh = y + 16;
  uint8_t* ql = y + 48;
  std::memset(qh, 0, kQKK / 8);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQKK; n += 64) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j], l2 = L[n + j + 32];
      if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
      if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
      ql[j] = uint8_t(l1 | (l2 << 4));
    }
    m1 = uint8_t(m1 << 2);
    m2 = uint8_t(m2 << 2);
    ql += 32;
  }
}

void quant_q6_K(const float* x, uint8_t* y) {
  int8_t L[kQKK];
  float scales[kQKK / 16];
  uint8_t* ql = y;
  uint8_t* qh = y + 128;
  int8_t* sc = reinterpret_cast<int8_t*>(y + 192);
  uint8_t* dp = y + 208;
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < kQKK / 16; ++ib) {
    const float s = fit_qx(16, 32, x + 16 * ib, L + 16 * ib);
    scales[ib] = s;
    if (std::fabs(s) > max_abs_scale) {
      max_abs_scale = std::fabs(s);
      max_scale = s;
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(y, 0, 210);
    return;
  }
  const float iscale = -128.f / max_scale;
  put_f16(dp, 1 / iscale);
  for (int ib = 0; ib < kQKK / 16; ++ib) sc[ib] = int8_t(imin(127, nearest_int(iscale * scales[ib])));
  const float d_all = get_f16(dp);
  for (int j = 0; j < kQKK / 16; ++j) {
    const float d = d_all * float(sc[j]);
    if (d == 0.f) continue;
    for (int ii = 0; ii < 16; ++ii) {
      L[16 * j + ii] = int8_t(imax(-32, imin(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
  }
  for (int j = 0; j < kQKK; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
      ql[l] = uint8_t(q1 | (q3 << 4));
      ql[l + 32] = uint8_t(q2 | (q4 << 4));
      qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                      ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

// ================================ dequantisation ================================
// Same float expressions as ggml's dequantize_row_*: q * d (+ m), or (d * sc) * q - (dmin * m).

void deq_q4_0(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float((b[2 + j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = float((b[2 + j] >> 4) - 8) * d;
  }
}

void deq_q4_1(const uint8_t* b, float* y) {
  const float d = get_f16(b), m = get_f16(b + 2);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float(b[4 + j] & 0x0F) * d + m;
    y[j + kQK / 2] = float(b[4 + j] >> 4) * d + m;
  }
}

// 5-bit codes from qh (4 bytes) and qs (16 bytes).
inline void unpack_q5(const uint8_t* qhp, const uint8_t* qs, int* q) {
  uint32_t qh;
  std::memcpy(&qh, qhp, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = (qs[j] & 0x0F) | int(((qh >> j) & 1u) << 4);
    q[j + kQK / 2] = (qs[j] >> 4) | int(((qh >> (j + kQK / 2)) & 1u) << 4);
  }
}

void deq_q5_0(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  int q[kQK];
  unpack_q5(b + 2, b + 6, q);
  for (int j = 0; j < kQK; ++j) y[j] = float(q[j] - 16) * d;
}

void deq_q5_1(const uint8_t* b, float* y) {
  const float d = get_f16(b), m = get_f16(b + 2);
  int q[kQK];
  unpack_q5(b + 4, b + 8, q);
  for (int j = 0; j < kQK; ++j) y[j] = float(q[j]) * d + m;
}

void deq_q8_0(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  for (int j = 0; j < kQK; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}

void deq_q4_K(const uint8_t* b, float* y) {
  const float d = get_f16(b), dmin = get_f16(b + 2);
  const uint8_t* sc = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < kQKK; j += 64, is += 2, q += 32) {
    int s, m;
    scale_min_k4(is, sc, &s, &m);
    const float d1 = d * float(s), m1 = dmin * float(m);
    scale_min_k4(is + 1, sc, &s, &m);
    const float d2 = d * float(s), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
  }
}

void deq_q5_K(const uint8_t* b, float* y) {
  const float d = get_f16(b), dmin = get_f16(b + 2);
  const uint8_t* sc = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < kQKK; j += 64, is += 2, ql += 32) {
    int s, m;
    scale_min_k4(is, sc, &s, &m);
    const float d1 = d * float(s), m1 = dmin * float(m);
    scale_min_k4(is + 1, sc, &s, &m);
    const float d2 = d * float(s), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    u1 = uint8_t(u1 << 2);
    u2 = uint8_t(u2 << 2);
  }
}

void deq_q6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = get_f16(b + 208);
  for (int n = 0; n < kQKK; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}

using QuantFn = void (*)(const float*, uint8_t*);
using DequantFn = void (*)(const uint8_t*, float*);

QuantFn quant_fn(GgmlType t) {
  switch (t) {
    case GgmlType::q4_0: return quant_q4_0;
    case GgmlType::q4_1: return quant_q4_1;
    case GgmlType::q5_0: return quant_q5_0;
    case GgmlType::q5_1: return quant_q5_1;
    case GgmlType::q8_0: return quant_q8_0;
    case GgmlType::q4_K: return quant_q4_K;
    case GgmlType::q5_K: return quant_q5_K;
    case GgmlType::q6_K: return quant_q6_K;
  }
  return nullptr;
}

DequantFn dequant_fn(GgmlType t) {
  switch (t) {
    case GgmlType::q4_0: return deq_q4_0;
    case GgmlType::q4_1: return deq_q4_1;
    case GgmlType::q5_0: return deq_q5_0;
    case GgmlType::q5_1: return deq_q5_1;
    case GgmlType::q8_0: return deq_q8_0;
    case GgmlType::q4_K: return deq_q4_K;
    case GgmlType::q5_K: return deq_q5_K;
    case GgmlType::q6_K: return deq_q6_K;
  }
  return nullptr;
}

}  // namespace

void ggml_quantize(const GgmlQuantArgs& a) {
  const QuantFn fn = quant_fn(a.type);
  const int64_t bs = ggml_block_size(int(a.type)), bb = ggml_block_bytes(int(a.type));
  const int64_t nb = a.cols / bs, row_bytes = nb * bb;
  if (!fn) return;  // the adapter (csrc/ggml_quants.cpp) has checked the type
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * a.cols;
    uint8_t* q = a.q + r * row_bytes;
    for (int64_t b = 0; b < nb; ++b) fn(x + b * bs, q + b * bb);
  }
}

void ggml_dequantize(const GgmlQuantArgs& a, float* out) {
  const DequantFn fn = dequant_fn(a.type);
  const int64_t bs = ggml_block_size(int(a.type)), bb = ggml_block_bytes(int(a.type));
  const int64_t nb = a.cols / bs, row_bytes = nb * bb;
  if (!fn) return;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const uint8_t* q = a.q + r * row_bytes;
    float* y = out + r * a.cols;
    for (int64_t b = 0; b < nb; ++b) fn(q + b * bb, y + b * bs);
  }
}

}  // namespace lf::cpu::LF_ISA
