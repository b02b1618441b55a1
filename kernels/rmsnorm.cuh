// rmsnorm.cuh — host launchers of the CUDA RMSNorm kernels (kernels/rmsnorm.cu).
// Same maths as csrc/cpu/rmsnorm.h. dtype codes: 0 = f32, 1 = f16, 2 = bf16.
// All pointers are device pointers; rows are contiguous with length `hidden`.
// Launchers return a CUDA error string, or nullptr on success.
#pragma once
#include <cstdint>

namespace lf::cuda {

const char* rmsnorm_fwd(int dtype, const void* x, const void* res, const void* w, void* y, void* h_out,
                        float* rstd, int64_t rows, int64_t hidden, float eps, void* stream);

// workspace: float[ws_rows * hidden], ws_rows = rmsnorm_bwd_workspace_rows(rows, device)
int64_t rmsnorm_bwd_workspace_rows(int64_t rows, int device);
const char* rmsnorm_bwd(int dtype, const void* dy, const void* h, const void* w, const float* rstd,
                        const void* dh_out, void* dx, void* dw, float* workspace, int64_t ws_rows,
                        int64_t rows, int64_t hidden, void* stream);

}  // namespace lf::cuda
