// cross_entropy.h — CPU cross-entropy over rows of logits (csrc/cpu/cross_entropy.cpp),
// one per ISA build.
//
//   forward:  lse[r] = log(sum_j exp(x[r][j]));  loss[r] = lse[r] - x[r][t[r]]
//   backward: g[r][j] = dloss[r] * (exp(x[r][j] - lse[r]) - [j == t[r]])
//   forward with grad: also g[r][j] = exp(x[r][j] - lse[r]) - [j == t[r]] (dloss = 1), written
//             while the row is in L1; g may alias x (the logits are then overwritten)
// Rows whose target equals ignore_index get loss 0 (lse is still computed) and a zero
// gradient row. Logits are f32, bf16 or f64; arithmetic, loss and lse are f32 (f64 for f64);
// the gradient has the logits' dtype. Targets are int64 and have been range-checked.
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

struct CrossEntropyArgs {
  DType dtype;         // of logits and grad
  const void* logits;  // (rows, vocab), row stride `vocab`
  const int64_t* targets;
  int64_t ignore_index;
  void* loss;          // forward: (rows,) f32 / f64
  void* lse;           // forward output, backward input: (rows,) f32 / f64
  void* grad;          // backward, optional in the forward: (rows, vocab), may alias logits
  const void* dloss;   // backward only: (rows,) f32 / f64, the gradient arriving at loss (null: 1)
  int64_t rows, vocab;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, cross_entropy_fwd, const lf::cpu::CrossEntropyArgs&)
LF_DECLARE_CPU_KERNEL(void, cross_entropy_bwd, const lf::cpu::CrossEntropyArgs&)
