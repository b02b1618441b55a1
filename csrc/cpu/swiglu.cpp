// swiglu.cpp — CPU SwiGLU forward/backward (see swiglu.h). Compiled once per ISA
// (LF_ISA). Work is split into (row, column-chunk) tiles across OpenMP threads so
// that a single long row (decode) also uses every thread.
#include "cpu/swiglu.h"

#include <omp.h>

#include <cmath>
#include <type_traits>

#include "cpu/swiglu_simd.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int64_t kChunk = 4096;

template <class T>
void fwd_span(const T* g, const T* u, T* y, int64_t n) {
  int64_t i = 0;
  if constexpr (!std::is_same_v<T, double>) {
    for (; i + N <= n; i += N) {
      V gv = vload(g + i);
      vstore(y + i, vmul(vmul(gv, vsigmoid(gv)), vload(u + i)));
    }
  }
  for (; i < n; ++i) {
    if constexpr (std::is_same_v<T, double>) {
      y[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    } else {
      float gv = to_f32(g[i]);
      y[i] = from_f32<T>(gv / (1.f + std::exp(-gv)) * to_f32(u[i]));
    }
  }
}

template <class T>
void bwd_span(const T* g, const T* u, const T* dy, T* dg, T* du, int64_t n) {
  int64_t i = 0;
  if constexpr (!std::is_same_v<T, double>) {
    const V one = vset1(1.f);
    for (; i + N <= n; i += N) {
      V gv = vload(g + i), uv = vload(u + i), d = vload(dy + i);
      V s = vsigmoid(gv);
      V silu = vmul(gv, s);
      V ds = vmul(s, vfma(gv, vsub(one, s), one));  // sigmoid * (1 + g (1 - sigmoid))
      vstore(dg + i, vmul(vmul(d, uv), ds));
      vstore(du + i, vmul(d, silu));
    }
  }
  for (; i < n; ++i) {
    if constexpr (std::is_same_v<T, double>) {
      const double s = 1.0 / (1.0 + std::exp(-g[i]));
      const double d = dy[i];
      dg[i] = d * u[i] * s * (1.0 + g[i] * (1.0 - s));
      du[i] = d * g[i] * s;
    } else {
      const float gv = to_f32(g[i]), d = to_f32(dy[i]);
      const float s = 1.f / (1.f + std::exp(-gv));
      dg[i] = from_f32<T>(d * to_f32(u[i]) * s * (1.f + gv * (1.f - s)));
      du[i] = from_f32<T>(d * gv * s);
    }
  }
}

template <class T>
void fwd_impl(const SwigluArgs& a) {
  const int64_t chunks = (a.cols + kChunk - 1) / kChunk;
  const T* g = static_cast<const T*>(a.g);
  const T* u = static_cast<const T*>(a.u);
  T* y = static_cast<T*>(a.y);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t t = 0; t < a.rows * chunks; ++t) {
    const int64_t r = t / chunks, c0 = (t % chunks) * kChunk;
    const int64_t n = a.cols - c0 < kChunk ? a.cols - c0 : kChunk;
    fwd_span<T>(g + r * a.g_stride + c0, u + r * a.u_stride + c0, y + r * a.y_stride + c0, n);
  }
}

template <class T>
void bwd_impl(const SwigluArgs& a) {
  const int64_t chunks = (a.cols + kChunk - 1) / kChunk;
  const T* g = static_cast<const T*>(a.g);
  const T* u = static_cast<const T*>(a.u);
  const T* dy = static_cast<const T*>(a.dy);
  T* dg = static_cast<T*>(a.dg);
  T* du = static_cast<T*>(a.du);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t t = 0; t < a.rows * chunks; ++t) {
    const int64_t r = t / chunks, c0 = (t % chunks) * kChunk;
    const int64_t n = a.cols - c0 < kChunk ? a.cols - c0 : kChunk;
    bwd_span<T>(g + r * a.g_stride + c0, u + r * a.u_stride + c0, dy + r * a.dy_stride + c0,
                dg + r * a.dg_stride + c0, du + r * a.du_stride + c0, n);
  }
}

}  // namespace

void swiglu_fwd(const SwigluArgs& a) {
  with_float_type(a.dtype, [&](auto t) { fwd_impl<decltype(t)>(a); });
}

void swiglu_bwd(const SwigluArgs& a) {
  with_float_type(a.dtype, [&](auto t) { bwd_impl<decltype(t)>(a); });
}

}  // namespace lf::cpu::LF_ISA
