// rmsnorm.h — the RMSNorm op at the native boundary: argument checks, then the
// CPU kernel (csrc/cpu/rmsnorm.cpp) or the CUDA kernel (kernels/rmsnorm.cu).
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lf {

// x, res, y, h_out: (rows, hidden); w: (hidden,); rstd: (rows,) float32 (float64 for f64 x).
// res and h_out are both given (residual variant) or both null.
void rmsnorm_fwd(const TensorView& x, const TensorView* res, const TensorView& w, const TensorView& y,
                 const TensorView* h_out, const TensorView& rstd, double eps, int threads, intptr_t stream);

// dy, h, dx, dh_out: (rows, hidden); dw like w. workspace: CUDA only, float32
// (rmsnorm_bwd_workspace_rows(rows, device), hidden).
void rmsnorm_bwd(const TensorView& dy, const TensorView& h, const TensorView& w, const TensorView& rstd,
                 const TensorView* dh_out, const TensorView& dx, const TensorView& dw,
                 const TensorView* workspace, int threads, intptr_t stream);

int64_t rmsnorm_bwd_workspace_rows(int64_t rows, int device);

// rstd must be (rows of x,) float32 (float64 for f64 x), contiguous, on x's device (also used by
// the RMSNorm+GEMM op).
void check_rstd(const char* op, const TensorView& rstd, const TensorView& x);

}  // namespace lf
