// rmsnorm_gemm.cpp — y = rmsnorm(x) @ w^T with the normalisation in the GEMM's prologue
// (see rmsnorm_gemm.h). Compiled once per ISA (LF_ISA).
//
// Pass 1 (rows over threads): rstd[m].
// Pass 2, one of two paths:
//  - dot path (small M, the memory-bound decode regime): the M normalised rows are packed
//    once (M x K floats, at most kDotMaxM rows) and every thread streams its share of w's
//    rows straight from memory, MB x NB dot products at a time; no B packing.
//  - packed path (BLIS loop order jc -> pc -> ic -> jr -> ir): each thread owns a block of
//    the tm x tn grid over (M, N), packs KC x NC panels of w (converted to f32) and MC x KC
//    panels of x with rstd[m] * g[k] applied, and runs the MR x NR micro-kernel
//    (rmsnorm_gemm_kernel.h). bf16 output accumulates across k blocks in an f32 buffer and
//    is rounded once, in the last k block's epilogue.
#include "cpu/rmsnorm_gemm.h"

#include <omp.h>

#include <cmath>
#include <type_traits>

#include "cpu/rmsnorm_gemm_kernel.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

using gemm::KC;
using gemm::MC;
using gemm::MR;
using gemm::NC;
using gemm::NR;

constexpr int64_t kDotMaxM = 48;  // below this many rows the dot path wins (measured, AVX2: 32 yes, 64 no)
constexpr int DMB = 4, DNB = 3;   // dot-path tile: 4 rows of x by 3 rows of w = 12 accumulators

inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

int choose_path(const RmsNormGemmArgs& a) {
  if (a.path == 1 || a.path == 2) return a.path;
  return a.M < kDotMaxM ? 1 : 2;
}

// thread grid for the packed path: split N when it is wide enough, else M
void grid(const RmsNormGemmArgs& a, int* tm, int* tn) {
  const int T = a.threads;
  int n_parts = static_cast<int>(a.N / (4 * NR));
  *tn = n_parts >= T ? T : (n_parts < 1 ? 1 : n_parts);
  *tm = T / *tn;
}

template <class T>
void rstd_rows(const RmsNormGemmArgs& a, int64_t m, float* xhat) {
  const int64_t K = a.K;
  const T* x = static_cast<const T*>(a.x) + m * K;
  V s0 = vzero(), s1 = vzero();
  float tail = 0.f;
  int64_t k = 0;
  for (; k + 2 * N <= K; k += 2 * N) {
    V v0 = vload(x + k), v1 = vload(x + k + N);
    s0 = vfma(v0, v0, s0);
    s1 = vfma(v1, v1, s1);
  }
  for (; k + N <= K; k += N) {
    V v = vload(x + k);
    s0 = vfma(v, v, s0);
  }
  for (; k < K; ++k) tail += to_f32(x[k]) * to_f32(x[k]);
  const float ss = vsum(vadd(s0, s1)) + tail;
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(K) + static_cast<float>(a.eps));
  static_cast<float*>(a.rstd)[m] = inv;
  if (xhat) {  // dot path: the packed A operand, normalised
    const T* g = static_cast<const T*>(a.g);
    float* o = xhat + m * K;
    const V iv = vset1(inv);
    k = 0;
    for (; k + N <= K; k += N) vstore(o + k, vmul(vmul(vload(x + k), iv), vload(g + k)));
    for (; k < K; ++k) o[k] = to_f32(x[k]) * inv * to_f32(g[k]);
  }
}

// ---- dot path ----------------------------------------------------------------------------
template <int MB, int NB, class T>
inline void dot_tile(const float* xh, const T* w, T* y, int64_t K, int64_t ldy) {
  V acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = vzero();
  int64_t k = 0;
  for (; k + N <= K; k += N) {
    V wv[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) wv[j] = vload(w + j * K + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) {
      const V xv = vload(xh + i * K + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) acc[i][j] = vfma(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      float s = vsum(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk) s += xh[i * K + kk] * to_f32(w[j * K + kk]);
      y[i * ldy + j] = from_f32<T>(s);
    }
}

template <int NB, class T>
inline void dot_columns(const float* xh, const T* w, T* y, int64_t M, int64_t K, int64_t N) {
  int64_t m = 0;
  for (; m + DMB <= M; m += DMB) dot_tile<DMB, NB, T>(xh + m * K, w, y + m * N, K, N);
  for (; m < M; ++m) dot_tile<1, NB, T>(xh + m * K, w, y + m * N, K, N);
}

template <class T>
void dot_path(const RmsNormGemmArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  float* xhat = a.workspace;
  const T* w = static_cast<const T*>(a.w);
  T* y = static_cast<T*>(a.y);
  const int nt = a.threads;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) rstd_rows<T>(a, m, xhat);
    const int t = omp_get_thread_num(), n_threads = omp_get_num_threads();
    const int64_t units = (N + DNB - 1) / DNB;
    for (int part = t; part < nt; part += n_threads) {
      const int64_t lo = units * part / nt * DNB;
      const int64_t hi_u = units * (part + 1) / nt * DNB;
      const int64_t hi = hi_u < N ? hi_u : N;
      int64_t n = lo;
      for (; n + DNB <= hi; n += DNB) dot_columns<DNB, T>(xhat, w + n * K, y + n, M, K, N);
      for (; n < hi; ++n) dot_columns<1, T>(xhat, w + n * K, y + n, M, K, N);
    }
  }
}

// ---- packed path -------------------------------------------------------------------------
template <class T>
void packed_block(const RmsNormGemmArgs& a, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi, float* ap,
                  float* bp, float* c32) {
  const int64_t N = a.N, K = a.K;
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.g);
  const T* w = static_cast<const T*>(a.w);
  T* y = static_cast<T*>(a.y);
  const float* rstd = static_cast<const float*>(a.rstd);
  constexpr bool f32_out = std::is_same_v<T, float>;
  // Few rows (one MC block): pack each KC x NR panel of w just before its use, into an
  // L1-resident buffer, so w is read once from memory and the packed copy is never
  // written back. More rows: pack a KC x NC block of w once and reuse it for every MC block.
  const bool jit_b = m_hi - m_lo <= MC;
  for (int64_t jc = n_lo; jc < n_hi; jc += NC) {
    const int64_t nc = n_hi - jc < NC ? n_hi - jc : NC;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = K - pc < KC ? K - pc : KC;
      const bool first = pc == 0, last = pc + kc == K;
      if (!jit_b) gemm::pack_b<T>(w, K, jc, nc, pc, kc, bp);
      for (int64_t ic = m_lo; ic < m_hi; ic += MC) {
        const int64_t mc = m_hi - ic < MC ? m_hi - ic : MC;
        gemm::pack_a<T>(x, K, rstd, g, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(nc - jr < NR ? nc - jr : NR);
          const float* bpan = bp + (jr / NR) * kc * NR;
          if (jit_b) {
            gemm::pack_b<T>(w, K, jc + jr, nr, pc, kc, bp);
            bpan = bp;
          }
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(mc - ir < MR ? mc - ir : MR);
            const int64_t off = (ic + ir) * N + jc + jr;
            if constexpr (f32_out) {
              gemm::micro_kernel<float>(kc, ap + (ir / MR) * kc * MR, bpan, y + off, N, nullptr, 0, first, last, mr,
                                        nr);
            } else {
              gemm::micro_kernel<T>(kc, ap + (ir / MR) * kc * MR, bpan, c32 ? c32 + off : nullptr, N, y + off, N,
                                    first, last, mr, nr);
            }
          }
        }
      }
    }
  }
}

int64_t packed_floats_per_thread() { return MC * KC + KC * align_up(NC, NR) + 16; }

template <class T>
void packed_path(const RmsNormGemmArgs& a) {
  const int64_t M = a.M, N = a.N;
  const int nt = a.threads;
  int tm, tn;
  grid(a, &tm, &tn);
  const int64_t per = packed_floats_per_thread();
  float* c32 = (!std::is_same_v<T, float> && a.K > KC) ? a.workspace + per * nt : nullptr;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) rstd_rows<T>(a, m, nullptr);
    const int t = omp_get_thread_num(), n_threads = omp_get_num_threads();
    float* ap = a.workspace + per * t;
    float* bp = ap + MC * KC;
    const int64_t mu = (M + MR - 1) / MR, nu = (N + NR - 1) / NR;
    for (int part = t; part < tm * tn; part += n_threads) {
      const int pm = part / tn, pn = part % tn;
      const int64_t m_lo = mu * pm / tm * MR, m_hi_u = mu * (pm + 1) / tm * MR;
      const int64_t n_lo = nu * pn / tn * NR, n_hi_u = nu * (pn + 1) / tn * NR;
      const int64_t m_hi = m_hi_u < M ? m_hi_u : M, n_hi = n_hi_u < N ? n_hi_u : N;
      if (m_lo < m_hi && n_lo < n_hi) packed_block<T>(a, m_lo, m_hi, n_lo, n_hi, ap, bp, c32);
    }
  }
}

// ---- float64: plain loops (the gradcheck path) ---------------------------------------------
void fwd_f64(const RmsNormGemmArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const double* x = static_cast<const double*>(a.x);
  const double* g = static_cast<const double*>(a.g);
  const double* w = static_cast<const double*>(a.w);
  double* y = static_cast<double*>(a.y);
  double* rstd = static_cast<double*>(a.rstd);
#pragma omp parallel num_threads(a.threads)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      double ss = 0;
      for (int64_t k = 0; k < K; ++k) ss += x[m * K + k] * x[m * K + k];
      rstd[m] = 1.0 / std::sqrt(ss / static_cast<double>(K) + a.eps);
    }
#pragma omp for schedule(static)
    for (int64_t mn = 0; mn < M * N; ++mn) {
      const int64_t m = mn / N, n = mn % N;
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * g[k] * w[n * K + k];
      y[mn] = s * rstd[m];
    }
  }
}

}  // namespace

void rmsnorm_gemm_plan(const RmsNormGemmArgs& a, RmsNormGemmPlan* plan) {
  plan->path = a.dtype == DType::f64 ? 0 : choose_path(a);
  if (plan->path == 1) {
    plan->floats = a.M * a.K;
  } else if (plan->path == 2) {
    plan->floats = packed_floats_per_thread() * a.threads;
    if (a.dtype != DType::f32 && a.K > KC) plan->floats += a.M * a.N;
  } else {
    plan->floats = 0;
  }
}

void rmsnorm_gemm_fwd(const RmsNormGemmArgs& a) {
  if (a.dtype == DType::f64) {
    fwd_f64(a);
    return;
  }
  const int path = choose_path(a);
  switch (a.dtype) {
    case DType::f32: path == 1 ? dot_path<float>(a) : packed_path<float>(a); break;
    case DType::bf16: path == 1 ? dot_path<bf16>(a) : packed_path<bf16>(a); break;
    default: break;  // the adapter (csrc/rmsnorm_gemm.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
