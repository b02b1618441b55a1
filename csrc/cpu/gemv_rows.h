// gemv_rows.h — the row loop of the skinny quantised GEMVs (int4_matmul.cpp, int8_matmul.cpp).
// x (M rows) is taken 8 rows at a time; each block of R rows runs Kernel::run<R, NB>(a, m0, n0)
// over the weight rows NB at a time (OpenMP splits them), so each x vector loaded from L1/L2
// serves NB weight rows (for several x rows, x is the larger stream). Measured on Zen 5
// (4096-wide layers): NB = 2 makes 2-8 rows 1.2-1.9x faster. One x row keeps NB = 1 (two
// interleaved weight streams from DRAM measured slower); AVX2 has 16 registers, so 5-8 rows
// keep NB = 1 there.
#pragma once
#include <omp.h>

#include <cstdint>

namespace lf::cpu::LF_ISA {

constexpr int kGemvMaxRows = 8;

constexpr int gemv_weight_rows(int R) {
#if defined(__AVX512F__)
  return R >= 2 ? 2 : 1;
#else
  return R >= 2 && R <= 4 ? 2 : 1;
#endif
}

template <class Kernel, int R, class Args>
void gemv_block(const Args& a, int64_t m0) {
  constexpr int NB = gemv_weight_rows(R);
  const int64_t pairs = a.N / NB;
#pragma omp parallel num_threads(a.threads)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) Kernel::template run<R, NB>(a, m0, p * NB);
#pragma omp for schedule(static)
    for (int64_t n = pairs * NB; n < a.N; ++n) Kernel::template run<R, 1>(a, m0, n);
  }
}

// y = x @ W^T for every row of x (a.M rows, a.N weight rows)
template <class Kernel, class Args>
void gemv_all_rows(const Args& a) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kGemvMaxRows) {
    switch (a.M - m0 >= kGemvMaxRows ? kGemvMaxRows : a.M - m0) {
      case 1: gemv_block<Kernel, 1>(a, m0); break;
      case 2: gemv_block<Kernel, 2>(a, m0); break;
      case 3: gemv_block<Kernel, 3>(a, m0); break;
      case 4: gemv_block<Kernel, 4>(a, m0); break;
      case 5: gemv_block<Kernel, 5>(a, m0); break;
      case 6: gemv_block<Kernel, 6>(a, m0); break;
      case 7: gemv_block<Kernel, 7>(a, m0); break;
      default: gemv_block<Kernel, 8>(a, m0); break;
    }
  }
}

}  // namespace lf::cpu::LF_ISA
