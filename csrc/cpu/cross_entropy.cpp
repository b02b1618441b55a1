// cross_entropy.cpp — CPU cross-entropy forward/backward (see cross_entropy.h). Compiled
// once per ISA (LF_ISA). One row (a token's logits, a few KiB) stays in L1 across its
// passes: max, sum of exp, then (backward, or the forward when asked for the gradient) the
// scaled softmax minus the one-hot target.
#include "cpu/cross_entropy.h"

#include <omp.h>

#include <cmath>
#include <type_traits>

#include "cpu/swiglu_simd.h"  // vexp
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

// log(sum(exp(x))) of one float32/bf16 row.
template <class T>
float row_lse(const T* x, int64_t n) {
  int64_t j = 0;
  float mx = -INFINITY;
  if (n >= N) {
    V m = vload(x);
    for (j = N; j + N <= n; j += N) m = vmax(m, vload(x + j));
    mx = vhmax(m);
  }
  for (; j < n; ++j) mx = std::fmax(mx, to_f32(x[j]));
  if (std::isinf(mx)) return mx;  // all -inf (or a +inf logit): lse is that infinity
  const V vm = vset1(mx);
  V s = vzero();
  j = 0;
  for (; j + N <= n; j += N) s = vadd(s, vexp(vsub(vload(x + j), vm)));
  float sum = vsum(s);
  for (; j < n; ++j) sum += std::exp(to_f32(x[j]) - mx);
  return mx + std::log(sum);
}

template <class T>
void row_grad(const T* x, float lse, float scale, T* g, int64_t n) {
  const V vl = vset1(lse), vs = vset1(scale);
  int64_t j = 0;
  for (; j + N <= n; j += N) vstore(g + j, vmul(vexp(vsub(vload(x + j), vl)), vs));
  for (; j < n; ++j) g[j] = from_f32<T>(std::exp(to_f32(x[j]) - lse) * scale);
}

template <class T, class A>
inline T store_as(A v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else return from_f32<T>(static_cast<float>(v));
}

double row_lse_f64(const double* x, int64_t n) {
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::fmax(mx, x[j]);
  if (std::isinf(mx)) return mx;
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - mx);
  return mx + std::log(sum);
}

template <class T, class A>
void grad_row(const T* row, int64_t t, A lse, A scale, T* grow, const CrossEntropyArgs& a);

template <class T>
void fwd_impl(const CrossEntropyArgs& a) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* x = static_cast<const T*>(a.logits);
  A* loss = static_cast<A*>(a.loss);
  A* lse = static_cast<A*>(a.lse);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* row = x + r * a.vocab;
    A l;
    if constexpr (std::is_same_v<T, double>) l = row_lse_f64(row, a.vocab);
    else l = row_lse<T>(row, a.vocab);
    lse[r] = l;
    const int64_t t = a.targets[r];
    loss[r] = t == a.ignore_index ? A(0) : l - static_cast<A>(to_f32(row[t]));
    if (a.grad) grad_row<T, A>(row, t, l, A(1), static_cast<T*>(a.grad) + r * a.vocab, a);
  }
}

// grow = scale * (softmax(row) - one_hot(t)); zeros for an ignored row. grow may alias row.
template <class T, class A>
void grad_row(const T* row, int64_t t, A lse, A scale, T* grow, const CrossEntropyArgs& a) {
  if (t == a.ignore_index) {
    for (int64_t j = 0; j < a.vocab; ++j) grow[j] = store_as<T>(A(0));
    return;
  }
  const A xt = static_cast<A>(to_f32(row[t]));  // read before an aliased grad overwrites it
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t j = 0; j < a.vocab; ++j) grow[j] = std::exp(row[j] - lse) * scale;
  } else {
    row_grad<T>(row, lse, scale, grow, a.vocab);
  }
  grow[t] = store_as<T>((std::exp(xt - lse) - A(1)) * scale);
}

template <class T>
void bwd_impl(const CrossEntropyArgs& a) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* x = static_cast<const T*>(a.logits);
  T* g = static_cast<T*>(a.grad);
  const A* lse = static_cast<const A*>(a.lse);
  const A* dloss = static_cast<const A*>(a.dloss);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r)
    grad_row<T, A>(x + r * a.vocab, a.targets[r], lse[r], dloss ? dloss[r] : A(1), g + r * a.vocab, a);
}

}  // namespace

void cross_entropy_fwd(const CrossEntropyArgs& a) {
  with_float_type(a.dtype, [&](auto t) { fwd_impl<decltype(t)>(a); });
}

void cross_entropy_bwd(const CrossEntropyArgs& a) {
  with_float_type(a.dtype, [&](auto t) { bwd_impl<decltype(t)>(a); });
}

}  // namespace lf::cpu::LF_ISA
