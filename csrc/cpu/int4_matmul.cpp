// int4_matmul.cpp — int4 GEMV / skinny GEMM and dequantisation (layout in int4_matmul.h).
// Up to 8 rows of x share each unpacked weight run (int4_unpack.h); OpenMP splits the output rows.
#include "cpu/int4_matmul.h"

#include <omp.h>

#include "cpu/gemv_rows.h"
#include "cpu/int4_unpack.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

// y[m0 + r, n0 + b] = x[m0 + r] . dequant(W[n0 + b]) for R rows of x and NB rows of W, in this
// build's vectors: y = sum_g s_g * dot_g - sum_g s_g z_g xsum_g. Each x vector loaded serves the
// NB weight rows (x, read from L1/L2, is the larger stream); the first sum stays a vector across
// groups; up to 64 weights per step, with A independent accumulators per (row, row) pair to hide
// the FMA latency when R * NB is small.
template <int R, int NB>
void gemv_rows(const Int4GemvArgs& a, int64_t m0, int64_t n0) {
  constexpr int NW = kInt4RunVecs, RB = R * NB, A = RB <= 2 ? 4 : RB <= 4 ? 2 : 1;
  const int64_t K = a.K, G = a.G, ng = K / G;
  const uint8_t* rows[NB];
  const float *sc[NB], *zs[NB];
  for (int b = 0; b < NB; ++b) {
    rows[b] = a.packed + (n0 + b) * (K / 2);
    sc[b] = a.scales + (n0 + b) * ng;
    zs[b] = a.zeros + (n0 + b) * ng;
  }
  V total[NB][R];
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) total[b][r] = vzero();
  for (int64_t g = 0; g < ng; ++g) {
    V dot[NB][R][A];
    for (int b = 0; b < NB; ++b)
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < A; ++i) dot[b][r][i] = vzero();
    // the 32 weights from k of each row, into accumulators (half * NW + j) % A
    auto run = [&](int64_t k, int half) {
      V w[NB][NW];
      for (int b = 0; b < NB; ++b) int4_unpack_run(rows[b] + k / 2, w[b]);
      for (int r = 0; r < R; ++r) {
        const float* xr = a.x + (m0 + r) * K + k;
        for (int j = 0; j < NW; ++j) {
          const V xv = vload(xr + N * j);
          const int i = (half * NW + j) % A;
          for (int b = 0; b < NB; ++b) dot[b][r][i] = vfma(w[b][j], xv, dot[b][r][i]);
        }
      }
    };
    const int64_t end = (g + 1) * G;
    int64_t k = g * G;
    for (; k + 64 <= end; k += 64) {
      run(k, 0);
      run(k + 32, 1);
    }
    if (k < end) run(k, 0);  // G = 32
    for (int b = 0; b < NB; ++b) {
      const V s = vset1(sc[b][g]);
      for (int r = 0; r < R; ++r) {
        V d = dot[b][r][0];
        for (int i = 1; i < A; ++i) d = vadd(d, dot[b][r][i]);
        total[b][r] = vfma(d, s, total[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    for (int r = 0; r < R; ++r) {  // the zero points' share, in vectors (a scalar chain would
      const float* xs = a.xsum + (m0 + r) * ng;  // cost 4 cycles a group)
      V c = vzero();
      int64_t g = 0;
      for (; g + N <= ng; g += N) c = vfma(vmul(vload(sc[b] + g), vload(zs[b] + g)), vload(xs + g), c);
      float corr = vsum(c);
      for (; g < ng; ++g) corr += sc[b][g] * zs[b][g] * xs[g];
      a.y[(m0 + r) * a.N + n0 + b] = vsum(total[b][r]) - corr;
    }
  }
}

struct Int4Rows {
  template <int R, int NB>
  static void run(const Int4GemvArgs& a, int64_t m0, int64_t n0) { gemv_rows<R, NB>(a, m0, n0); }
};

}  // namespace

void int4_gemv(const Int4GemvArgs& a) { gemv_all_rows<Int4Rows>(a); }

void int4_dequant(const Int4DequantArgs& a) {
  const int64_t K = a.K, G = a.G, ng = K / G;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t n = a.row0 + r;
    const uint8_t* row = a.packed + n * (K / 2);
    float* out = a.w + r * K;
    for (int64_t k = 0; k < K; k += 32) {
      V w[kInt4RunVecs];
      int4_unpack_run(row + k / 2, w);
      const V s = vset1(a.scales[n * ng + k / G]), z = vset1(a.zeros[n * ng + k / G]);
      for (int j = 0; j < kInt4RunVecs; ++j) vstore(out + k + N * j, vmul(vsub(w[j], z), s));
    }
  }
}

}  // namespace lf::cpu::LF_ISA
