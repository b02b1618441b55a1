// rmsnorm.cpp — CPU RMSNorm forward/backward (see rmsnorm.h for the maths).
// Compiled once per ISA (LF_ISA); rows are split across OpenMP threads. Each row
// is read from memory once: its second pass hits L1/L2.
#include "cpu/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <type_traits>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

// ---- float32 / bfloat16: vector path ---------------------------------------------
template <class T>
void fwd_row(const RmsNormFwdArgs& a, int64_t r) {
  const int64_t H = a.hidden;
  const T* x = static_cast<const T*>(a.x) + r * H;
  const T* w = static_cast<const T*>(a.w);
  T* y = static_cast<T*>(a.y) + r * H;
  const T* src = x;
  V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
  float tail = 0.f;
  int64_t i = 0;
  if (a.res) {
    const T* res = static_cast<const T*>(a.res) + r * H;
    T* h = static_cast<T*>(a.h_out) + r * H;
    for (; i + N <= H; i += N) {
      vstore(h + i, vadd(vload(x + i), vload(res + i)));
      V hv = vload(h + i);  // square the stored (rounded) value
      s0 = vfma(hv, hv, s0);
    }
    for (; i < H; ++i) {
      h[i] = from_f32<T>(to_f32(x[i]) + to_f32(res[i]));
      float v = to_f32(h[i]);
      tail += v * v;
    }
    src = h;
  } else {
    for (; i + 4 * N <= H; i += 4 * N) {
      V v0 = vload(x + i), v1 = vload(x + i + N), v2 = vload(x + i + 2 * N), v3 = vload(x + i + 3 * N);
      s0 = vfma(v0, v0, s0);
      s1 = vfma(v1, v1, s1);
      s2 = vfma(v2, v2, s2);
      s3 = vfma(v3, v3, s3);
    }
    for (; i + N <= H; i += N) {
      V v = vload(x + i);
      s0 = vfma(v, v, s0);
    }
    for (; i < H; ++i) tail += to_f32(x[i]) * to_f32(x[i]);
  }
  float ss = vsum(vadd(vadd(s0, s1), vadd(s2, s3))) + tail;
  float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(a.eps));
  static_cast<float*>(a.rstd)[r] = inv;
  V iv = vset1(inv);
  i = 0;
  if (a.stream_y) {
    for (; i + N <= H; i += N) vstream(y + i, vmul(vmul(vload(src + i), iv), vload(w + i)));
  } else {
    for (; i + N <= H; i += N) vstore(y + i, vmul(vmul(vload(src + i), iv), vload(w + i)));
  }
  for (; i < H; ++i) y[i] = from_f32<T>(to_f32(src[i]) * inv * to_f32(w[i]));
}

template <class T>
void bwd_row(const RmsNormBwdArgs& a, int64_t r, float* dw_acc) {
  const int64_t H = a.hidden;
  const T* dy = static_cast<const T*>(a.dy) + r * H;
  const T* h = static_cast<const T*>(a.h) + r * H;
  const T* w = static_cast<const T*>(a.w);
  T* dx = static_cast<T*>(a.dx) + r * H;
  const float inv = static_cast<const float*>(a.rstd)[r];
  // pass 1: sum(dy * w * h)
  V s0 = vzero(), s1 = vzero();
  float tail = 0.f;
  int64_t i = 0;
  for (; i + 2 * N <= H; i += 2 * N) {
    s0 = vfma(vmul(vload(dy + i), vload(w + i)), vload(h + i), s0);
    s1 = vfma(vmul(vload(dy + i + N), vload(w + i + N)), vload(h + i + N), s1);
  }
  for (; i + N <= H; i += N) s0 = vfma(vmul(vload(dy + i), vload(w + i)), vload(h + i), s0);
  for (; i < H; ++i) tail += to_f32(dy[i]) * to_f32(w[i]) * to_f32(h[i]);
  const float dot = vsum(vadd(s0, s1)) + tail;
  const float k = inv * inv * inv * dot / static_cast<float>(H);  // dh = inv*g - h*k
  // pass 2: dx and the dw partial sums
  const V iv = vset1(inv), nkv = vset1(-k);
  const T* dh_out = a.dh_out ? static_cast<const T*>(a.dh_out) + r * H : nullptr;
  i = 0;
  for (; i + N <= H; i += N) {
    V d = vload(dy + i), hv = vload(h + i);
    V g = vmul(d, vload(w + i));
    V out = vfma(hv, nkv, vmul(g, iv));
    if (dh_out) out = vadd(out, vload(dh_out + i));
    vstore(dx + i, out);
    vstore(dw_acc + i, vfma(vmul(d, hv), iv, vload(dw_acc + i)));
  }
  for (; i < H; ++i) {
    float d = to_f32(dy[i]), hv = to_f32(h[i]);
    float out = d * to_f32(w[i]) * inv - hv * k;
    if (dh_out) out += to_f32(dh_out[i]);
    dx[i] = from_f32<T>(out);
    dw_acc[i] += d * hv * inv;
  }
}

// ---- float64: plain loops (the gradcheck path) -------------------------------------
void fwd_row_f64(const RmsNormFwdArgs& a, int64_t r) {
  const int64_t H = a.hidden;
  const double* x = static_cast<const double*>(a.x) + r * H;
  const double* w = static_cast<const double*>(a.w);
  double* y = static_cast<double*>(a.y) + r * H;
  const double* src = x;
  if (a.res) {
    const double* res = static_cast<const double*>(a.res) + r * H;
    double* h = static_cast<double*>(a.h_out) + r * H;
    for (int64_t i = 0; i < H; ++i) h[i] = x[i] + res[i];
    src = h;
  }
  double ss = 0;
  for (int64_t i = 0; i < H; ++i) ss += src[i] * src[i];
  double inv = 1.0 / std::sqrt(ss / static_cast<double>(H) + a.eps);
  static_cast<double*>(a.rstd)[r] = inv;
  for (int64_t i = 0; i < H; ++i) y[i] = src[i] * inv * w[i];
}

void bwd_row_f64(const RmsNormBwdArgs& a, int64_t r, double* dw_acc) {
  const int64_t H = a.hidden;
  const double* dy = static_cast<const double*>(a.dy) + r * H;
  const double* h = static_cast<const double*>(a.h) + r * H;
  const double* w = static_cast<const double*>(a.w);
  double* dx = static_cast<double*>(a.dx) + r * H;
  const double* dh_out = a.dh_out ? static_cast<const double*>(a.dh_out) + r * H : nullptr;
  const double inv = static_cast<const double*>(a.rstd)[r];
  double dot = 0;
  for (int64_t i = 0; i < H; ++i) dot += dy[i] * w[i] * h[i];
  const double k = inv * inv * inv * dot / static_cast<double>(H);
  for (int64_t i = 0; i < H; ++i) {
    dx[i] = dy[i] * w[i] * inv - h[i] * k + (dh_out ? dh_out[i] : 0.0);
    dw_acc[i] += dy[i] * h[i] * inv;
  }
}

template <class T>
void fwd_impl(const RmsNormFwdArgs& a) {
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    if constexpr (std::is_same_v<T, double>) fwd_row_f64(a, r);
    else fwd_row<T>(a, r);
  }
  if (a.stream_y) vfence();
}

// Rows are split into one contiguous chunk per thread; thread t sums its dw
// contribution into workspace row t, and the rows are added in a fixed order,
// so the result does not depend on scheduling.
template <class T, class Acc>
void bwd_impl(const RmsNormBwdArgs& a) {
  const int64_t H = a.hidden;
  Acc* ws = static_cast<Acc*>(a.workspace);
  const int nt = a.threads;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    for (int part = t; part < nt; part += n) {  // fewer threads than asked: take several parts
      const int64_t lo = a.rows * part / nt, hi = a.rows * (part + 1) / nt;
      Acc* acc = ws + static_cast<int64_t>(part) * H;
      for (int64_t r = lo; r < hi; ++r) {
        if constexpr (std::is_same_v<T, double>) bwd_row_f64(a, r, acc);
        else bwd_row<T>(a, r, acc);
      }
    }
  }
  T* dw = static_cast<T*>(a.dw);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < H; ++i) {
    Acc s = 0;
    for (int p = 0; p < nt; ++p) s += ws[static_cast<int64_t>(p) * H + i];
    if constexpr (std::is_same_v<T, double>) dw[i] = s;
    else dw[i] = from_f32<T>(s);
  }
}

}  // namespace

void rmsnorm_fwd(const RmsNormFwdArgs& a) {
  with_float_type(a.dtype, [&](auto t) { fwd_impl<decltype(t)>(a); });
}

void rmsnorm_bwd(const RmsNormBwdArgs& a) {
  switch (a.dtype) {
    case DType::f32: bwd_impl<float, float>(a); break;
    case DType::bf16: bwd_impl<bf16, float>(a); break;
    case DType::f64: bwd_impl<double, double>(a); break;
    default: break;  // the adapter (csrc/rmsnorm.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
