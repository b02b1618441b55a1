// cross_entropy.cpp — argument checks and dispatch for cross-entropy (see cross_entropy.h).
#include "cross_entropy.h"

#include "cpu/cross_entropy.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kFwd = "cross_entropy";
constexpr const char* kBwd = "cross_entropy_backward";

// Checks logits and targets; returns the kernel arguments with shapes filled in.
cpu::CrossEntropyArgs check_common(const char* op, const TensorView& logits, const TensorView& targets,
                                   int64_t ignore_index, int threads) {
  check_cpu(op, "logits", logits);
  check_dtype(op, "logits", logits, {DType::f32, DType::bf16, DType::f64});
  check_ndim(op, "logits", logits, 2);
  check_contiguous(op, "logits", logits);
  LF_CHECK(logits.shape[1] > 0, op, ": logits must have a positive vocabulary size, got shape ", logits.shape_str());
  check_cpu(op, "targets", targets);
  check_dtype(op, "targets", targets, {DType::i64});
  check_ndim(op, "targets", targets, 1);
  check_contiguous(op, "targets", targets);
  LF_CHECK(targets.shape[0] == logits.shape[0], op, ": targets has shape ", targets.shape_str(), " but logits has ",
           logits.shape_str(), "; one target per row expected");
  check_threads(op, threads);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  const int64_t* t = targets.ptr<const int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    LF_CHECK(t[r] == ignore_index || (t[r] >= 0 && t[r] < vocab), op, ": target ", t[r], " at row ", r,
             " is outside [0, ", vocab, ") and is not ignore_index (", ignore_index, ")");
  cpu::CrossEntropyArgs a{};
  a.dtype = logits.dtype;
  a.logits = logits.data;
  a.targets = t;
  a.ignore_index = ignore_index;
  a.rows = rows;
  a.vocab = vocab;
  a.threads = threads;
  return a;
}

void check_row_stat(const char* op, const char* arg, const TensorView& t, const TensorView& logits) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {logits.dtype == DType::f64 ? DType::f64 : DType::f32});
  check_ndim(op, arg, t, 1);
  check_contiguous(op, arg, t);
  LF_CHECK(t.shape[0] == logits.shape[0], op, ": ", arg, " has shape ", t.shape_str(), " but logits has ",
           logits.shape_str());
}

void check_grad(const char* op, const TensorView& grad, const TensorView& logits) {
  check_cpu(op, "grad", grad);
  check_same_dtype(op, "grad", grad, logits, "logits");
  check_contiguous(op, "grad", grad);
  LF_CHECK(grad.ndim == 2 && grad.shape[0] == logits.shape[0] && grad.shape[1] == logits.shape[1], op,
           ": grad has shape ", grad.shape_str(), " but logits has ", logits.shape_str());
}

}  // namespace

void cross_entropy_fwd(const TensorView& logits, const TensorView& targets, const TensorView& loss,
                       const TensorView& lse, const TensorView* grad, int64_t ignore_index, int threads) {
  cpu::CrossEntropyArgs a = check_common(kFwd, logits, targets, ignore_index, threads);
  check_row_stat(kFwd, "loss", loss, logits);
  check_row_stat(kFwd, "lse", lse, logits);
  if (grad) check_grad(kFwd, *grad, logits);
  a.loss = loss.data;
  a.lse = lse.data;
  a.grad = grad ? grad->data : nullptr;
  if (a.rows) LF_CPU_DISPATCH(cross_entropy_fwd, a);
}

void cross_entropy_bwd(const TensorView& logits, const TensorView& targets, const TensorView& lse,
                       const TensorView& dloss, const TensorView& grad, int64_t ignore_index, int threads) {
  cpu::CrossEntropyArgs a = check_common(kBwd, logits, targets, ignore_index, threads);
  check_row_stat(kBwd, "lse", lse, logits);
  check_row_stat(kBwd, "grad_loss", dloss, logits);
  check_grad(kBwd, grad, logits);
  a.lse = lse.data;
  a.grad = grad.data;
  a.dloss = dloss.data;
  if (a.rows) LF_CPU_DISPATCH(cross_entropy_bwd, a);
}

}  // namespace lf
