// adamw.h — the fused AdamW update (csrc/cpu/adamw.cpp), one per ISA build: one pass over a
// float32 parameter, its gradient and both moments, with torch.optim.AdamW's maths:
//   p -= lr * wd * p                                  (decoupled weight decay)
//   m += (1 - beta1) * (g - m)
//   v  = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
#pragma once
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

struct AdamWArgs {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  float decay;      // 1 - lr * weight_decay
  float beta1, beta2;
  float step_size;  // lr / (1 - beta1^step)
  float inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^step)
  float eps;
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, adamw_step, const lf::cpu::AdamWArgs&)
