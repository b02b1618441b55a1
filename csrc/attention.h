// attention.h — the fused attention op at the native boundary: argument checks, then
// the CPU kernel (csrc/cpu/attention.cpp). Layout (B, H, S, D), contiguous; k and v have
// Hkv heads with Hkv dividing q's H; Sq may differ from Sk (bottom-right aligned causal).
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lf {

// q, out: (B, Hq, Sq, D); k, v: (B, Hkv, Sk, D); lse: (B, Hq, Sq) float32 (float64 for f64).
// window < 0: no sliding window; otherwise query i sees keys j >= i + Sk - Sq - window.
void attention_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                   const TensorView& lse, bool causal, double scale, int64_t window, int threads);

// dout, out, dq like q; dk, dv like k; lse and dlse (optional, the gradient at lse) like lse.
void attention_bwd(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out, const TensorView& lse, const TensorView* dlse, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv, bool causal, double scale, int64_t window,
                   int threads);

}  // namespace lf
