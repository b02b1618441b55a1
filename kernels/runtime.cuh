// runtime.cuh — CUDA runtime queries that must never fail hard: on a machine with
// no GPU or no driver every error reads as "no device".
#pragma once

namespace lf::cuda {
int device_count();  // 0 on any error
const char* device_name(int device);
}  // namespace lf::cuda
