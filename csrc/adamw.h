// adamw.h — the fused AdamW step at the native boundary (kernel: csrc/cpu/adamw.cpp):
// updates param, exp_avg and exp_avg_sq in place from grad; float32 CPU tensors, contiguous,
// of one size, not sharing memory.
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lf {

void adamw_step(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                const TensorView& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, int threads);

}  // namespace lf
