// int4_matmul.cpp — int4 GEMV / skinny GEMM and dequantisation (layout in int4_matmul.h).
// Up to 8 rows of x share each unpacked weight run (int4_unpack.h); OpenMP splits the output rows.
#include "cpu/int4_matmul.h"

#include <omp.h>

#include "cpu/int4_unpack.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kMaxRows = 8;

// y[m0 + r, n] = x[m0 + r] . dequant(W[n]) for R rows of x, in this build's vectors:
// y = sum_g s_g * dot_g - sum_g s_g z_g xsum_g. The first sum stays a vector across groups; up to
// 64 weights per step, with A independent accumulators per x row to hide the FMA latency when R
// is small.
template <int R>
void gemv_rows(const Int4GemvArgs& a, int64_t m0, int64_t n) {
  constexpr int NW = kInt4RunVecs, A = R <= 2 ? 4 : R <= 4 ? 2 : 1;
  const int64_t K = a.K, G = a.G, ng = K / G;
  const uint8_t* row = a.packed + n * (K / 2);
  const float* sc = a.scales + n * ng;
  const float* zs = a.zeros + n * ng;
  V total[R];
  for (int r = 0; r < R; ++r) total[r] = vzero();
  for (int64_t g = 0; g < ng; ++g) {
    V dot[R][A];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < A; ++i) dot[r][i] = vzero();
    const int64_t end = (g + 1) * G;
    int64_t k = g * G;
    for (; k + 64 <= end; k += 64) {
      V w0[NW], w1[NW];
      int4_unpack_run(row + k / 2, w0);
      int4_unpack_run(row + k / 2 + 16, w1);
      for (int r = 0; r < R; ++r) {
        const float* xr = a.x + (m0 + r) * K + k;
        for (int j = 0; j < NW; ++j) dot[r][j % A] = vfma(w0[j], vload(xr + N * j), dot[r][j % A]);
        for (int j = 0; j < NW; ++j)
          dot[r][(NW + j) % A] = vfma(w1[j], vload(xr + 32 + N * j), dot[r][(NW + j) % A]);
      }
    }
    if (k < end) {  // G = 32
      V w[NW];
      int4_unpack_run(row + k / 2, w);
      for (int r = 0; r < R; ++r) {
        const float* xr = a.x + (m0 + r) * K + k;
        for (int j = 0; j < NW; ++j) dot[r][j % A] = vfma(w[j], vload(xr + N * j), dot[r][j % A]);
      }
    }
    const V s = vset1(sc[g]);
    for (int r = 0; r < R; ++r) {
      V d = dot[r][0];
      for (int i = 1; i < A; ++i) d = vadd(d, dot[r][i]);
      total[r] = vfma(d, s, total[r]);
    }
  }
  for (int r = 0; r < R; ++r) {  // the zero points' share, in vectors (a scalar chain would
    const float* xs = a.xsum + (m0 + r) * ng;  // cost 4 cycles a group)
    V c = vzero();
    int64_t g = 0;
    for (; g + N <= ng; g += N) c = vfma(vmul(vload(sc + g), vload(zs + g)), vload(xs + g), c);
    float corr = vsum(c);
    for (; g < ng; ++g) corr += sc[g] * zs[g] * xs[g];
    a.y[(m0 + r) * a.N + n] = vsum(total[r]) - corr;
  }
}

template <int R>
void gemv_block(const Int4GemvArgs& a, int64_t m0) {
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t n = 0; n < a.N; ++n) gemv_rows<R>(a, m0, n);
}

}  // namespace

void int4_gemv(const Int4GemvArgs& a) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRows) {
    switch (a.M - m0 >= kMaxRows ? kMaxRows : a.M - m0) {
      case 1: gemv_block<1>(a, m0); break;
      case 2: gemv_block<2>(a, m0); break;
      case 3: gemv_block<3>(a, m0); break;
      case 4: gemv_block<4>(a, m0); break;
      case 5: gemv_block<5>(a, m0); break;
      case 6: gemv_block<6>(a, m0); break;
      case 7: gemv_block<7>(a, m0); break;
      default: gemv_block<8>(a, m0); break;
    }
  }
}

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
