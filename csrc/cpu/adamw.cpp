// adamw.cpp — the fused AdamW update (see adamw.h). Compiled once per ISA (LF_ISA).
#include "cpu/adamw.h"

#include <omp.h>

#include <cmath>

#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per work item (4 arrays x 64 KiB)

#if defined(__AVX512F__)
inline V vsqrt(V x) { return _mm512_sqrt_ps(x); }
inline V vdivide(V a, V b) { return _mm512_div_ps(a, b); }
#elif defined(__AVX2__)
inline V vsqrt(V x) { return _mm256_sqrt_ps(x); }
inline V vdivide(V a, V b) { return _mm256_div_ps(a, b); }
#else
inline V vsqrt(V x) { return std::sqrt(x); }
inline V vdivide(V a, V b) { return a / b; }
#endif

inline void span(const AdamWArgs& a, int64_t lo, int64_t hi) {
  const V decay = vset1(a.decay), b1c = vset1(1.f - a.beta1), b2 = vset1(a.beta2), b2c = vset1(1.f - a.beta2);
  const V nstep = vset1(-a.step_size), ibc = vset1(a.inv_bc2_sqrt), eps = vset1(a.eps);
  int64_t i = lo;
  for (; i + N <= hi; i += N) {
    const V g = vload(a.g + i);
    V m = vload(a.m + i), v = vload(a.v + i), p = vload(a.p + i);
    p = vmul(p, decay);
    m = vfma(b1c, vsub(g, m), m);
    v = vfma(b2c, vmul(g, g), vmul(b2, v));
    p = vfma(nstep, vdivide(m, vadd(vmul(vsqrt(v), ibc), eps)), p);
    vstore(a.m + i, m);
    vstore(a.v + i, v);
    vstore(a.p + i, p);
  }
  for (; i < hi; ++i) {
    const float g = a.g[i];
    const float m = a.m[i] + (1.f - a.beta1) * (g - a.m[i]);
    const float v = (1.f - a.beta2) * (g * g) + a.beta2 * a.v[i];
    a.m[i] = m;
    a.v[i] = v;
    a.p[i] = -a.step_size * (m / (std::sqrt(v) * a.inv_bc2_sqrt + a.eps)) + a.p[i] * a.decay;
  }
}

}  // namespace

void adamw_step(const AdamWArgs& a) {
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
  const int nt = chunks < a.threads ? static_cast<int>(chunks) : a.threads;
#pragma omp parallel for num_threads(nt > 0 ? nt : 1) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, hi = lo + kChunk < a.n ? lo + kChunk : a.n;
    span(a, lo, hi);
  }
}

}  // namespace lf::cpu::LF_ISA
