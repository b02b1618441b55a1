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
//    (gemm_kernel.h). bf16 output accumulates across k blocks in an f32 buffer and
//    is rounded once, in the last k block's epilogue.
// Backward: the same packed GEMM computes da = dy @ w and dw = dy^T @ (x * rstd * g), the
// latter with the normalisation applied while packing its B panels.
#include "cpu/rmsnorm_gemm.h"

#include <omp.h>

#include <cmath>
#include <type_traits>

#include "cpu/gemm_kernel.h"
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

template <class T>
void rstd_rows(const RmsNormGemmArgs& a, int64_t m, float* xhat, bool write_rstd = true) {
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
  if (write_rstd) static_cast<float*>(a.rstd)[m] = inv;
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

// Every thread normalises its own copy of the M (< kDotMaxM) rows, so no thread waits for
// another; w's rows are then handed out in chunks, dynamically (robust to a busy machine).
template <class T>
void dot_path(const RmsNormGemmArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const T* w = static_cast<const T*>(a.w);
  T* y = static_cast<T*>(a.y);
  constexpr int64_t kChunk = 16 * DNB;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(a.threads)
  {
    const int t = omp_get_thread_num();
    float* xhat = a.workspace + static_cast<int64_t>(t) * M * K;
    for (int64_t m = 0; m < M; ++m) rstd_rows<T>(a, m, xhat, t == 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t lo = ch * kChunk, hi = lo + kChunk < N ? lo + kChunk : N;
      int64_t n = lo;
      for (; n + DNB <= hi; n += DNB) dot_columns<DNB, T>(xhat, w + n * K, y + n, M, K, N);
      for (; n < hi; ++n) dot_columns<1, T>(xhat, w + n * K, y + n, M, K, N);
    }
  }
}

// ---- packed path -------------------------------------------------------------------------
// C (M x N, ldc) = A (M x K) B (K x N); operand layouts and scales as pack_a / pack_b take them.
struct GemmOp {
  const void* a;
  int64_t a_rs, a_cs;
  const float* a_si;
  const float* a_sk;
  const void* b;
  int64_t b_rs, b_cs;
  const float* b_sk;
  const float* b_sj;
  void* c;
  int64_t ldc;
  float* c32;  // (M x N) f32 partial sums: bf16 output with K > KC
  int64_t M, N, K;
};

template <class T>
void packed_block(const GemmOp& op, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi, float* ap, float* bp) {
  const int64_t K = op.K;
  const T* A = static_cast<const T*>(op.a);
  const T* B = static_cast<const T*>(op.b);
  T* Cm = static_cast<T*>(op.c);
  constexpr bool f32_out = std::is_same_v<T, float>;
  // Few rows (one MC block): pack each KC x NR panel of B just before its use, into an
  // L1-resident buffer, so B is read once from memory and the packed copy is never
  // written back. More rows: pack a KC x NC block of B once and reuse it for every MC block.
  const bool jit_b = m_hi - m_lo <= MC;
  for (int64_t jc = n_lo; jc < n_hi; jc += NC) {
    const int64_t nc = n_hi - jc < NC ? n_hi - jc : NC;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = K - pc < KC ? K - pc : KC;
      const bool first = pc == 0, last = pc + kc == K;
      if (!jit_b) gemm::pack_b<T>(B, op.b_rs, op.b_cs, op.b_sk, op.b_sj, jc, nc, pc, kc, bp);
      for (int64_t ic = m_lo; ic < m_hi; ic += MC) {
        const int64_t mc = m_hi - ic < MC ? m_hi - ic : MC;
        gemm::pack_a<T>(A, op.a_rs, op.a_cs, op.a_si, op.a_sk, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(nc - jr < NR ? nc - jr : NR);
          const float* bpan = bp + (jr / NR) * kc * NR;
          if (jit_b) {
            gemm::pack_b<T>(B, op.b_rs, op.b_cs, op.b_sk, op.b_sj, jc + jr, nr, pc, kc, bp);
            bpan = bp;
          }
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(mc - ir < MR ? mc - ir : MR);
            const int64_t i = ic + ir, j = jc + jr;
            const float* apan = ap + (ir / MR) * kc * MR;
            if constexpr (f32_out) {
              gemm::micro_kernel<float>(kc, apan, bpan, Cm + i * op.ldc + j, op.ldc, nullptr, 0, first, last, mr, nr);
            } else {
              gemm::micro_kernel<T>(kc, apan, bpan, op.c32 ? op.c32 + i * op.N + j : nullptr, op.N,
                                    Cm + i * op.ldc + j, op.ldc, first, last, mr, nr);
            }
          }
        }
      }
    }
  }
}

int64_t packed_floats_per_thread() { return MC * KC + KC * align_up(NC, NR) + 16; }

// The per-thread part of a packed GEMM; call inside `omp parallel num_threads(nt)`.
// The work is a tm x tn grid of blocks over (M, N), handed out dynamically: N is cut into
// 2 blocks per thread when it is wide enough (each block re-packs its A panels, a few % of
// the work, and a descheduled thread's block is taken by another), else M is split.
template <class T>
void gemm_in_parallel(const GemmOp& op, int nt, float* ws) {
  int tn = static_cast<int>(op.N / (4 * NR));
  tn = tn >= 2 * nt ? 2 * nt : (tn < 1 ? 1 : tn);
  const int tm = tn >= nt ? 1 : nt / tn;
  const int t = omp_get_thread_num();
  float* ap = ws + packed_floats_per_thread() * t;
  float* bp = ap + MC * KC;
  const int64_t mu = (op.M + MR - 1) / MR, nu = (op.N + NR - 1) / NR;
#pragma omp for schedule(dynamic, 1)
  for (int part = 0; part < tm * tn; ++part) {
    const int pm = part / tn, pn = part % tn;
    const int64_t m_lo = mu * pm / tm * MR, m_hi_u = mu * (pm + 1) / tm * MR;
    const int64_t n_lo = nu * pn / tn * NR, n_hi_u = nu * (pn + 1) / tn * NR;
    const int64_t m_hi = m_hi_u < op.M ? m_hi_u : op.M, n_hi = n_hi_u < op.N ? n_hi_u : op.N;
    if (m_lo < m_hi && n_lo < n_hi) packed_block<T>(op, m_lo, m_hi, n_lo, n_hi, ap, bp);
  }
}

// workspace: [per-thread packing buffers][g as f32: K][c32: M x N when needed]
template <class T>
void packed_path(const RmsNormGemmArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const int nt = a.threads;
  float* gf = a.workspace + packed_floats_per_thread() * nt;
  float* c32 = (!std::is_same_v<T, float> && K > KC) ? gf + align_up(K, 16) : nullptr;
  const T* g = static_cast<const T*>(a.g);
  const GemmOp op{a.x, K, 1, static_cast<const float*>(a.rstd), gf, a.w, 1, K, nullptr, nullptr,
                  a.y, N, c32, M, N, K};
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t k = 0; k < K; ++k) gf[k] = to_f32(g[k]);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) rstd_rows<T>(a, m, nullptr);
    gemm_in_parallel<T>(op, nt, a.workspace);
  }
}

int64_t bwd_floats(const RmsNormGemmBwdArgs& a) {
  int64_t c32 = 0;
  if (a.dtype != DType::f32) {
    if (a.da && a.N > KC) c32 = a.M * a.K;
    if (a.dw && a.M > KC && a.N * a.K > c32) c32 = a.N * a.K;
  }
  return packed_floats_per_thread() * a.threads + align_up(a.K, 16) + c32;
}

template <class T>
void bwd_packed(const RmsNormGemmBwdArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const int nt = a.threads;
  float* gf = a.workspace + packed_floats_per_thread() * nt;
  float* c32 = gf + align_up(K, 16);
  const bool bf = !std::is_same_v<T, float>;
  const T* g = static_cast<const T*>(a.g);
  // da (M x K) = dy (M x N, row-major) @ w (N x K, row-major)
  const GemmOp op_da{a.dy, N, 1, nullptr, nullptr, a.w, K, 1, nullptr, nullptr,
                     a.da, K, (bf && N > KC) ? c32 : nullptr, M, K, N};
  // dw (N x K) = dy^T (N x M: dy read column-major) @ (x * rstd[m] * g[k]) (M x K)
  const GemmOp op_dw{a.dy, 1, N, nullptr, nullptr, a.x, K, 1, static_cast<const float*>(a.rstd), gf,
                     a.dw, K, (bf && M > KC) ? c32 : nullptr, N, K, M};
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < K; ++k) gf[k] = to_f32(g[k]);
    if (a.da) gemm_in_parallel<T>(op_da, nt, a.workspace);
#pragma omp barrier
    if (a.dw) gemm_in_parallel<T>(op_dw, nt, a.workspace);
  }
}

void bwd_f64(const RmsNormGemmBwdArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const double* dy = static_cast<const double*>(a.dy);
  const double* x = static_cast<const double*>(a.x);
  const double* g = static_cast<const double*>(a.g);
  const double* w = static_cast<const double*>(a.w);
  const double* rstd = static_cast<const double*>(a.rstd);
  double* da = static_cast<double*>(a.da);
  double* dw = static_cast<double*>(a.dw);
#pragma omp parallel num_threads(a.threads)
  {
    if (da) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t k = 0; k < K; ++k) da[m * K + k] = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) da[m * K + k] += dy[m * N + n] * w[n * K + k];
      }
    }
    if (dw) {
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) dw[n * K + k] = 0;
        for (int64_t m = 0; m < M; ++m) {
          const double d = dy[m * N + n] * rstd[m];
          for (int64_t k = 0; k < K; ++k) dw[n * K + k] += d * x[m * K + k] * g[k];
        }
      }
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
    plan->floats = a.M * a.K * a.threads;
  } else if (plan->path == 2) {
    plan->floats = packed_floats_per_thread() * a.threads + align_up(a.K, 16);
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

int64_t rmsnorm_gemm_bwd_workspace(const RmsNormGemmBwdArgs& a) {
  return a.dtype == DType::f64 ? 0 : bwd_floats(a);
}

void rmsnorm_gemm_bwd(const RmsNormGemmBwdArgs& a) {
  switch (a.dtype) {
    case DType::f32: bwd_packed<float>(a); break;
    case DType::bf16: bwd_packed<bf16>(a); break;
    case DType::f64: bwd_f64(a); break;
    default: break;  // the adapter (csrc/rmsnorm_gemm.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
