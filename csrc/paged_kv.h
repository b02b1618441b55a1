// paged_kv.h — the paged KV cache ops at the native boundary: argument checks
// (shapes, dtypes, and every block index a call will touch), then the CPU kernels
// in csrc/cpu/paged_kv.cpp. CPU only.
//
//   k_pool, v_pool  (num_blocks, block_size, n_kv_heads, head_dim)  float32 | bfloat16
//   block_table     int32 (batch, max_blocks)   entries past a sequence's last block are ignored
//   seq_lens        int32 (batch,)
#pragma once
#include "tensor.h"

namespace lf {

// Writes k_new/v_new (batch, n_new, n_kv_heads, head_dim) at positions seq_lens[b]...
// counts (optional, int32 (batch,), each in [0, n_new]) limits the rows written per sequence.
void paged_kv_append(const TensorView& k_pool, const TensorView& v_pool, const TensorView& block_table,
                     const TensorView& seq_lens, const TensorView& k_new, const TensorView& v_new,
                     const TensorView* counts, int threads);

// out (batch, max_len, n_kv_heads, head_dim): the first seq_lens[b] positions, zeros beyond.
void paged_kv_gather(const TensorView& pool, const TensorView& block_table, const TensorView& seq_lens,
                     const TensorView& out, int threads);

// q, out (batch, n_heads, head_dim); n_kv_heads divides n_heads. One query per sequence
// attends to the seq_lens[b] cached positions (zeros for a length of 0).
void paged_decode_attention(const TensorView& q, const TensorView& k_pool, const TensorView& v_pool,
                            const TensorView& block_table, const TensorView& seq_lens, const TensorView& out,
                            double scale, int threads);

// The same attention over a contiguous cache k, v (batch, n_kv_heads, max_len, head_dim).
void contiguous_decode_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                                 const TensorView& seq_lens, const TensorView& out, double scale, int threads);

}  // namespace lf
