// rope.cpp — CPU RoPE apply (forward and inverse rotation), see rope.h.
// Compiled once per ISA (LF_ISA). Tokens (b, s) are split across OpenMP threads;
// the table row of a token is expanded once into stack scratch and then applied
// to all its heads.
#include "cpu/rope.h"

#include <omp.h>

#include <type_traits>

#include "cpu/rope_simd.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

inline int64_t token_pos(const RopeArgs& a, int64_t b, int64_t s) {
  if (!a.pos) return s;
  return a.pos_batched ? a.pos[b * a.seq + s] : a.pos[s];
}

// ---- float32 / bfloat16 -----------------------------------------------------------
// neox: c, s are the table rows (half = d/2 entries); sign = -1 for the inverse.
template <class T>
void neox_head(const T* x, T* y, const float* c, const float* s, int64_t half, float sign) {
  int64_t i = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
  const V sg = vset1(sign);
  for (; i + N <= half; i += N) {
    V cv = vload(c + i), sv = vmul(vload(s + i), sg);
    V x1 = vload(x + i), x2 = vload(x + half + i);
    vstore(y + i, vsub(vmul(x1, cv), vmul(x2, sv)));
    vstore(y + half + i, vfma(x1, sv, vmul(x2, cv)));
  }
#endif
  for (; i < half; ++i) {
    float cv = c[i], sv = sign * s[i];
    float x1 = to_f32(x[i]), x2 = to_f32(x[half + i]);
    y[i] = from_f32<T>(x1 * cv - x2 * sv);
    y[half + i] = from_f32<T>(x2 * cv + x1 * sv);
  }
}

// norm: cd, sd hold each table entry twice (cd[2i] = cd[2i+1] = cos_i), sd already signed.
template <class T>
void norm_head(const T* x, T* y, const float* cd, const float* sd, int64_t d) {
  int64_t i = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
  for (; i + N <= d; i += N) {  // N is even: pairs never straddle a vector
    V xv = vload(x + i);
    vstore(y + i, vfmaddsub(xv, vload(cd + i), vmul(vswap_pairs(xv), vload(sd + i))));
  }
#endif
  for (; i < d; i += 2) {
    float x1 = to_f32(x[i]), x2 = to_f32(x[i + 1]);
    y[i] = from_f32<T>(x1 * cd[i] - x2 * sd[i]);
    y[i + 1] = from_f32<T>(x2 * cd[i] + x1 * sd[i]);
  }
}

template <class T>
void apply_f32(const RopeArgs& a) {
  const int64_t D = a.head_dim, half = D / 2, H = a.heads;
  const float sign = a.inverse ? -1.f : 1.f;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const float* ct = static_cast<const float*>(a.cos);
  const float* st = static_cast<const float*>(a.sin);
#pragma omp parallel num_threads(a.threads)
  {
    alignas(64) float cd[kRopeMaxHeadDim];
    alignas(64) float sd[kRopeMaxHeadDim];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < a.batch * a.seq; ++t) {
      const int64_t b = t / a.seq, s = t % a.seq;
      const int64_t p = token_pos(a, b, s);
      const float* c = ct + p * half;
      const float* sn = st + p * half;
      const T* xt = x + b * a.xs[0] + s * a.xs[1];
      T* yt = y + b * a.ys[0] + s * a.ys[1];
      if (a.neox) {
        for (int64_t h = 0; h < H; ++h) neox_head<T>(xt + h * a.xs[2], yt + h * a.ys[2], c, sn, half, sign);
      } else {
        for (int64_t i = 0; i < half; ++i) {
          cd[2 * i] = cd[2 * i + 1] = c[i];
          sd[2 * i] = sd[2 * i + 1] = sign * sn[i];
        }
        for (int64_t h = 0; h < H; ++h) norm_head<T>(xt + h * a.xs[2], yt + h * a.ys[2], cd, sd, D);
      }
    }
  }
}

// ---- float64: plain loops (the gradcheck path) ------------------------------------------
void apply_f64(const RopeArgs& a) {
  const int64_t D = a.head_dim, half = D / 2, H = a.heads;
  const double sign = a.inverse ? -1.0 : 1.0;
  const double* x = static_cast<const double*>(a.x);
  double* y = static_cast<double*>(a.y);
  const double* ct = static_cast<const double*>(a.cos);
  const double* st = static_cast<const double*>(a.sin);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t t = 0; t < a.batch * a.seq; ++t) {
    const int64_t b = t / a.seq, s = t % a.seq;
    const int64_t p = token_pos(a, b, s);
    const double* c = ct + p * half;
    const double* sn = st + p * half;
    for (int64_t h = 0; h < H; ++h) {
      const double* xh = x + b * a.xs[0] + s * a.xs[1] + h * a.xs[2];
      double* yh = y + b * a.ys[0] + s * a.ys[1] + h * a.ys[2];
      for (int64_t i = 0; i < half; ++i) {
        const int64_t i1 = a.neox ? i : 2 * i, i2 = a.neox ? i + half : 2 * i + 1;
        const double x1 = xh[i1], x2 = xh[i2], cv = c[i], sv = sign * sn[i];
        yh[i1] = x1 * cv - x2 * sv;
        yh[i2] = x2 * cv + x1 * sv;
      }
    }
  }
}

}  // namespace

void rope_apply(const RopeArgs& a) {
  switch (a.dtype) {
    case DType::f32: apply_f32<float>(a); break;
    case DType::bf16: apply_f32<bf16>(a); break;
    case DType::f64: apply_f64(a); break;
    default: break;  // the adapter (csrc/rope.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
