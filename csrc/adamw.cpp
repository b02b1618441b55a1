// adamw.cpp — argument checks and dispatch for the fused AdamW step (see adamw.h).
#include "adamw.h"

#include <cmath>

#include "cpu/adamw.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kOp = "adamw_step";

void check_state(const char* arg, const TensorView& t, const TensorView& p) {
  check_cpu(kOp, arg, t);
  check_dtype(kOp, arg, t, {DType::f32});
  check_contiguous(kOp, arg, t);
  LF_CHECK(t.numel() == p.numel(), kOp, ": ", arg, " has shape ", t.shape_str(), " but param has ",
           p.shape_str());
}

bool overlap(const TensorView& a, const TensorView& b) {
  const char* a0 = static_cast<const char*>(a.data);
  const char* b0 = static_cast<const char*>(b.data);
  return a.numel() && b.numel() && a0 < b0 + 4 * b.numel() && b0 < a0 + 4 * a.numel();
}

}  // namespace

void adamw_step(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                const TensorView& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, int threads) {
  check_state("param", param, param);
  check_state("grad", grad, param);
  check_state("exp_avg", exp_avg, param);
  check_state("exp_avg_sq", exp_avg_sq, param);
  const TensorView* all[] = {&param, &grad, &exp_avg, &exp_avg_sq};
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      LF_CHECK(!overlap(*all[i], *all[j]), kOp, ": param, grad, exp_avg and exp_avg_sq must not share memory");
  LF_CHECK(std::isfinite(lr) && lr >= 0, kOp, ": lr must be finite and >= 0, got ", lr);
  LF_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, kOp, ": betas must be in [0, 1), got (", beta1,
           ", ", beta2, ")");
  LF_CHECK(std::isfinite(eps) && eps > 0, kOp, ": eps must be finite and > 0, got ", eps);
  LF_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, kOp, ": weight_decay must be finite and >= 0, got ",
           weight_decay);
  LF_CHECK(step >= 1, kOp, ": step counts from 1, got ", step);
  check_threads(kOp, threads);
  cpu::AdamWArgs a{};
  a.p = static_cast<float*>(param.data);
  a.g = static_cast<const float*>(grad.data);
  a.m = static_cast<float*>(exp_avg.data);
  a.v = static_cast<float*>(exp_avg_sq.data);
  a.n = param.numel();
  a.decay = static_cast<float>(1.0 - lr * weight_decay);
  a.beta1 = static_cast<float>(beta1);
  a.beta2 = static_cast<float>(beta2);
  a.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(step))));
  a.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  a.eps = static_cast<float>(eps);
  a.threads = threads;
  if (a.n) LF_CPU_DISPATCH(adamw_step, a);
}

}  // namespace lf
