// device.h — shared checks for where an op may run, and the CUDA dtype code.
#pragma once
#include "tensor.h"

namespace lf {

inline bool built_with_cuda() {
#ifdef LLMFORGE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Raises unless t is on the CPU, or on a GPU and this build has CUDA kernels.
inline void check_supported_device(const char* op, const char* arg, const TensorView& t) {
  if (t.device == DeviceKind::cpu) return;
  LF_CHECK(t.device == DeviceKind::cuda, op, ": ", arg, " is on an unsupported device (CPU and CUDA only)");
  LF_CHECK(built_with_cuda(), op, ": ", arg,
           " is a CUDA tensor but this llmforge was built without CUDA kernels");
}

// dtype code the CUDA launchers take: 0 f32, 1 f16, 2 bf16.
inline int cuda_dtype_code(DType d) { return d == DType::f32 ? 0 : d == DType::f16 ? 1 : 2; }

inline void check_threads(const char* op, int threads) {
  LF_CHECK(threads >= 1 && threads <= 4096, op, ": threads must be in [1, 4096], got ", threads);
}

}  // namespace lf
