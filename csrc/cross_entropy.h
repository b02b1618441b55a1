// cross_entropy.h — cross-entropy over rows of logits at the native boundary: argument
// checks, then the CPU kernel (csrc/cpu/cross_entropy.cpp). CPU tensors only.
#pragma once
#include "tensor.h"

namespace lf {

// logits (rows, vocab) f32/bf16/f64; targets (rows,) int64 in [0, vocab) or == ignore_index;
// loss, lse (rows,) f32 (f64 for f64 logits): per-row loss (0 where ignored) and log-sum-exp.
// grad (optional, like logits, may be logits itself): also softmax - one_hot(target) per row
// (zero rows where ignored), the gradient for dloss = 1, computed in the same pass.
void cross_entropy_fwd(const TensorView& logits, const TensorView& targets, const TensorView& loss,
                       const TensorView& lse, const TensorView* grad, int64_t ignore_index, int threads);
// grad (rows, vocab) like logits (may be logits itself) = dloss[r] * (softmax - one_hot(target))
// per row, zero rows where ignored; lse from the forward; dloss (rows,) like lse.
void cross_entropy_bwd(const TensorView& logits, const TensorView& targets, const TensorView& lse,
                       const TensorView& dloss, const TensorView& grad, int64_t ignore_index, int threads);

}  // namespace lf
