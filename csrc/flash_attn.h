// flash_attn.h — the CUDA fused attention at the native boundary: argument checks, then the
// kernels in kernels/flash_attn_{fwd,bwd}.cu (launchers in kernels/flash_attn.cuh).
//
// Two layouts, both contiguous, float16 or bfloat16, head dim 64 or 128:
//   padded (cu_seqlens null):  q, out (B, H, Sq, D); k, v (B, Hkv, Sk, D); lse (B, H, Sq)
//   packed (cu_seqlens given): q, out (Tq, H, D);    k, v (Tk, Hkv, D);    lse (H, Tq)
//     cu_seqlens_q / _k: int32 (B + 1,) on the same GPU, 0 = c[0] <= c[1] <= ... <= c[B] = Tq / Tk
//     (their contents live on the GPU and are checked by the Python op, not here);
//     max_seqlen_q / _k bound every sequence's length.
// lse and delta are float32. Masks as in attention.h (bottom-right aligned causal, left window).
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lf {

void flash_attn_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                    const TensorView& lse, const TensorView* cu_seqlens_q, const TensorView* cu_seqlens_k,
                    int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal, double scale, int64_t window,
                    intptr_t stream);

// delta: float32 workspace shaped like lse. dlse (optional): the gradient arriving at lse.
void flash_attn_bwd(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& out, const TensorView& lse, const TensorView* dlse, const TensorView& dq,
                    const TensorView& dk, const TensorView& dv, const TensorView& delta,
                    const TensorView* cu_seqlens_q, const TensorView* cu_seqlens_k, int64_t max_seqlen_q,
                    int64_t max_seqlen_k, bool causal, double scale, int64_t window, intptr_t stream);

}  // namespace lf
