// rmsnorm_gemm.cuh — host launchers of the CUDA RMSNorm+GEMM (kernels/rmsnorm_gemm.cu).
// Same maths as csrc/cpu/rmsnorm_gemm.h: rstd[m] = 1 / sqrt(mean_k x[m,k]^2 + eps),
// y = (x * rstd * g) @ w^T; backward da = dy @ w and dw = dy^T @ (x * rstd * g).
// dtype codes: 0 = f32, 1 = f16, 2 = bf16 (x, g, w, y, dy, da, dw share it); rstd float32.
// Tensor-core operands are bf16 (f16 for f16 data), accumulation float32; float32 data is
// rounded to bf16 as it enters shared memory. Rows contiguous; device pointers.
// Launchers return a CUDA error string, or nullptr on success.
#pragma once
#include <cstdint>

namespace lf::cuda {

const char* rmsnorm_gemm_fwd(int dtype, const void* x, const void* g, const void* w, void* y, float* rstd,
                             int64_t M, int64_t N, int64_t K, float eps, void* stream);

// da (M, K) and/or dw (N, K) (either may be null); rstd is the forward's.
const char* rmsnorm_gemm_bwd(int dtype, const void* dy, const void* x, const void* g, const void* w,
                             const float* rstd, void* da, void* dw, int64_t M, int64_t N, int64_t K, void* stream);

}  // namespace lf::cuda
