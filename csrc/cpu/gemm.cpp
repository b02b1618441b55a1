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
constexpr int64_t kKC = 1024;  // k block bound (a B panel of KC x NR, 64 KiB, streams from L2 through
                               // the micro-kernel: measured 2-5% faster than 384 when K >= 1024, as
                               // C is read and written fewer times)
constexpr int64_t kNC = 2048;  // n block: the shared packed B block (KC x NC, 3 MiB) in L3
constexpr int64_t kMinTiles = 64;   // rows (in MR tiles) of a work item, when M allows: each B panel
                                    // fetched serves this many micro-kernel calls
constexpr int64_t kMaxRows = 1024;  // rows of a work item at most (its packed A block, 1.5 MiB, in L3)

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
  // Work items: blocks of C of at least kMinTiles row tiles when M allows. Two per thread
  // by rows (so a thread the OS deschedules can leave one to the others); when M is too
  // small for that, one per thread, the columns split (each thread packs all of A).
  // Rows are shared out by tile count (the items' counts differ by at most one) and the row
  // block count is a multiple of the thread count. Measured (M = 384..4096, K = 384..4096,
  // 2 threads): items of 96-144 rows, 8 per thread, ran 3-18% slower (each B panel in L1
  // served fewer tiles; an odd count of items left one thread up to 5% more rows), and for
  // M = 384 and 640 two items per thread 2-4% slower than one.
  const int64_t tiles = cdiv(M, MR);
  int64_t mb = tiles >= 2 * nt * kMinTiles ? 2 * nt : std::min<int64_t>(nt, std::max<int64_t>(1, tiles / kMinTiles));
  mb = std::max(mb, cdiv(cdiv(M, kMaxRows), nt) * nt);
  mb = std::min(mb, tiles);
  const int64_t a_floats = cdiv(tiles, mb) * MR * kc_max + 16;
  float* ws = workspace(kc_max * nc_max + 16 + nt * a_floats);
  float* bp = ws;
#pragma omp parallel num_threads(nt)
  {
    float* ap = ws + kc_max * nc_max + 16 + omp_get_thread_num() * a_floats;
    for (int64_t jc = 0; jc < N; jc += nc_max) {
      const int64_t nc = std::min(nc_max, N - jc), np = cdiv(nc, NR);
      const int64_t nparts = std::max<int64_t>(1, std::min(np, cdiv(nt, mb)));
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
          const int64_t m_item = item / nparts, part = item % nparts;
          const int64_t ic = tiles * m_item / mb * MR;
          const int64_t mc = std::min(tiles * (m_item + 1) / mb * MR, M) - ic;
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
