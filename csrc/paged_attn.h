// paged_attn.h — the CUDA paged KV cache ops at the native boundary (kernels in
// kernels/paged_attn.cu): dtype/shape/device/alignment checks, then the launchers. Layout as
// in paged_kv.h; the pools may be float32, float16 or bfloat16 and head_dim must be 64 or 128
// for decode. The table and length *contents* live on the GPU: the Python op checks them
// (one synchronising read) before calling; the kernels themselves skip any block index
// outside the pool, so a bad table can never touch memory outside it.
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lf {

void paged_kv_append_cuda(const TensorView& k_pool, const TensorView& v_pool, const TensorView& block_table,
                          const TensorView& seq_lens, const TensorView& k_new, const TensorView& v_new,
                          const TensorView* counts, intptr_t stream);

// Floats of workspace paged_decode_attention_cuda needs for this shape (0: none), given the
// longest sequence max_len (an upper bound is fine: positions past it are not read).
int64_t paged_decode_workspace_cuda(const TensorView& q, const TensorView& k_pool, const TensorView& block_table,
                                    int64_t max_len);

// q, out (batch, n_heads, head_dim). workspace: float32 1-D of at least the size above (may be
// absent when that size is 0).
void paged_decode_attention_cuda(const TensorView& q, const TensorView& k_pool, const TensorView& v_pool,
                                 const TensorView& block_table, const TensorView& seq_lens, const TensorView& out,
                                 const TensorView* workspace, double scale, int64_t max_len, intptr_t stream);

}  // namespace lf
