// flash_attn.cuh — host launchers of the fused attention kernels (kernels/flash_attn_fwd.cu,
// kernels/flash_attn_bwd.cu): FlashAttention-2 style, fp16/bf16, head dim 64 or 128, fp32
// accumulation and log-sum-exp, causal / sliding window / full, grouped-query heads, and
// either a padded (B, H, S, D) batch or a packed variable-length batch (cu_seqlens).
//
// Element (b, h, i, d) of q / out / grad tensors lives at
//     q_start(b) * q_row + b * q_batch + h * q_head + i * q_row + d
// where q_start(b) = cu_seqlens_q[b] for a packed batch (q_batch = 0) and 0 otherwise;
// k and v (and their gradients) use the k_* strides and cu_seqlens_k. lse (fp32) is at
//     b * lse_batch + h * lse_head + q_start(b) + i.
// Masks (query i of a sequence with Sq queries and Sk keys sits at position i + Sk - Sq):
//     causal: key j visible iff j <= i + Sk - Sq;  window >= 0: iff j >= i + Sk - Sq - window.
// A query that sees no key gets zeros and lse = -inf. Launchers return a CUDA error string
// or nullptr. All pointers are device pointers; rows 16-byte aligned (checked by csrc/).
#pragma once
#include <cstdint>

namespace lf::cuda {

struct FlashAttnParams {
  int dtype = 1;  // 1 = f16, 2 = bf16
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  // backward only
  const void* dout = nullptr;
  const float* dlse = nullptr;  // optional gradient at lse (same layout as lse)
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* delta = nullptr;  // workspace, lse's layout: rowsum(dout * out) - dlse
  // layout
  int64_t q_batch = 0, q_head = 0, q_row = 0;
  int64_t k_batch = 0, k_head = 0, k_row = 0;
  int64_t lse_batch = 0, lse_head = 0;
  const int32_t* cu_seqlens_q = nullptr;  // (B + 1) or nullptr (padded batch)
  const int32_t* cu_seqlens_k = nullptr;
  int batch = 0, heads = 0, kv_heads = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;  // the padded Sq/Sk, or the longest packed sequence
  int head_dim = 0;                        // 64 or 128
  float scale = 0.f;
  bool causal = false;
  int window = -1;
};

const char* flash_attn_fwd(const FlashAttnParams& p, void* stream);
// Deterministic (no atomics): one pass for dk/dv per key tile, one for dq per query tile.
const char* flash_attn_bwd(const FlashAttnParams& p, void* stream);

}  // namespace lf::cuda
