// gemm.cpp — CPU float32 GEMM (see gemm.h). Compiled once per ISA (LF_ISA).
#include "cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <new>

#include "cpu/gemm_kernel.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

using gemm::MR;
using gemm::NR;
constexpr int64_t kKC = 384;   // k block bound: a B panel (KC x NR) in L1, an A sliver streaming from L2
constexpr int64_t kMC = 144;   // m block: the packed A block (MC x KC, 216 KiB) in L2
constexpr int64_t kNC = 2048;  // n block: the shared packed B block (KC x NC, 3 MiB) in L3
constexpr int64_t kMinRows = 72;  // smallest row block a thread takes when M is split finer than kMC

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The packing buffers of the calling thread, reused across calls (grown when too small).
// A plain struct, not std::unique_ptr: no template instance that could be emitted as a weak
// symbol outside this ISA's namespace (tests/test_build.py).
struct Workspace {
  float* data = nullptr;
  int64_t floats = 0;
  ~Workspace() { std::free(data); }
};

float* workspace(int64_t floats) {
  thread_local Workspace ws;
  if (floats > ws.floats) {
    std::free(ws.data);
    ws.data = static_cast<float*>(std::malloc(sizeof(float) * (floats + 16)));
    if (!ws.data) throw std::bad_alloc();
    ws.floats = floats;
  }
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ws.data) + 63) & ~uintptr_t{63});
}

void run(const GemmArgs& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t kc_max = cdiv(K, cdiv(K, kKC));  // balanced k blocks (K = 640: 2 x 320, not 384 + 256)
  const int64_t nc_max = std::min(kNC, cdiv(N, NR) * NR);
  const int nt = std::max(1, std::min<int>(g.threads, static_cast<int>(cdiv(M, MR) * cdiv(N, NR))));
  // Work items: row blocks of kMinRows..kMC rows, up to 4 per thread when M allows (so a
  // thread the OS deschedules leaves its remaining items to the others; fewer rows would
  // stream each B panel from L2 for too little work), times column parts when there are
  // too few rows to go round.
  const int64_t m_items = std::max(cdiv(M, kMC), std::min(int64_t{4} * nt, cdiv(M, kMinRows)));
  const int64_t item_rows = cdiv(cdiv(M, m_items), MR) * MR;
  const int64_t mb = cdiv(M, item_rows);
  const int64_t a_floats = item_rows * kc_max + 16;
  float* ws = workspace(kc_max * nc_max + 16 + nt * a_floats);
  float* bp = ws;
#pragma omp parallel num_threads(nt)
  {
    float* ap = ws + kc_max * nc_max + 16 + omp_get_thread_num() * a_floats;
    for (int64_t jc = 0; jc < N; jc += nc_max) {
      const int64_t nc = std::min(nc_max, N - jc), np = cdiv(nc, NR);
      const int64_t nparts = std::max<int64_t>(1, std::min(np, cdiv(2 * nt, mb)));
      for (int64_t pc = 0; pc < K; pc += kc_max) {
        const int64_t kc = std::min(kc_max, K - pc);
        const bool first = pc == 0 && !g.accumulate;
#pragma omp barrier
#pragma omp for schedule(dynamic, 4)
        for (int64_t p = 0; p < np; ++p)
          gemm::pack_b<float>(g.b, g.b_rs, g.b_cs, nullptr, nullptr, jc + p * NR, std::min(int64_t{NR}, nc - p * NR), pc,
                              kc, bp + p * kc * NR);
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t item = 0; item < mb * nparts; ++item) {
          const int64_t ic = (item / nparts) * item_rows, part = item % nparts;
          const int64_t mc = std::min(item_rows, M - ic);
          gemm::pack_a<float>(g.a, g.a_rs, g.a_cs, nullptr, nullptr, ic, mc, pc, kc, ap);
          for (int64_t p = np * part / nparts; p < np * (part + 1) / nparts; ++p) {
            const int64_t jr = p * NR;
            const int nr = static_cast<int>(std::min(int64_t{NR}, nc - jr));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int mr = static_cast<int>(std::min(int64_t{MR}, mc - ir));
              gemm::micro_kernel<float>(kc, ap + (ir / MR) * kc * MR, bp + p * kc * NR,
                                        g.c + (ic + ir) * g.ldc + jc + jr, g.ldc, nullptr, 0, first, false, mr, nr);
            }
          }
        }
      }
    }
  }
}

}  // namespace

void sgemm(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {  // an empty sum
    if (!g.accumulate)
      for (int64_t i = 0; i < g.M; ++i) std::fill(g.c + i * g.ldc, g.c + i * g.ldc + g.N, 0.f);
    return;
  }
  run(g);
}

}  // namespace lf::cpu::LF_ISA
