// paged_kv.h — CPU kernels of the paged KV cache (csrc/cpu/paged_kv.cpp), one per ISA build.
//
// Layout (element type T = float32 or bfloat16 throughout one call):
//   k_pool, v_pool  (num_blocks, block_size, n_kv_heads, head_dim)   a token's K row for
//                   kv head h of sequence b at position p lives in block
//                   table[b][p / block_size], slot p % block_size.
//   table           int32 (batch, max_blocks)   -1 (or anything) past a sequence's end
//   seq_lens        int32 (batch,)
//
//   append:  rows k_new[b, i] (i < count_b) go to position seq_lens[b] + i.
//   gather:  out[b, p] = pool row of (b, p) for p < seq_lens[b], zeros beyond.
//   decode:  out[b, hq] = softmax(scale * q[b, hq] . K[b, :, hq / G]) V[b, :, hq / G]
//            over the seq_lens[b] positions (G = n_heads / n_kv_heads; zeros when the
//            length is 0). Online softmax in fp32 over chunks of at most 32 tokens;
//            the q heads of one kv head share every K/V row load. The adapter cuts
//            the work into items (sequence, kv heads, run of pages); when a sequence
//            is split over several items their partial results are merged by
//            log-sum-exp.
//
// The adapter (csrc/paged_kv.cpp) has checked every block index a call touches:
// these kernels index the pools without further checks.
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

struct PagedAppendArgs {
  int elem_size;            // bytes per element (rows are copied as bytes)
  void* k_pool;
  void* v_pool;
  const int32_t* table;
  const int32_t* seq_lens;
  const int32_t* counts;    // optional (batch,): rows of k_new[b] to write; else n_new
  const void* k_new;        // (batch, n_new, n_kv_heads, head_dim)
  const void* v_new;
  int64_t batch, n_new, max_blocks, block_size;
  int64_t row;              // n_kv_heads * head_dim elements per token
  int threads;
};

struct PagedGatherArgs {
  int elem_size;
  const void* pool;
  const int32_t* table;
  const int32_t* seq_lens;
  void* out;                // (batch, max_len, n_kv_heads, head_dim)
  int64_t batch, max_len, max_blocks, block_size, row;
  int threads;
};

// One unit of decode work: kv heads [h0, h1) of sequence b over units [u0, u1) (a unit is a
// page, or `chunk` tokens of the contiguous layout); split s of that sequence's splits.
struct DecodeWorkItem {
  int64_t b, h0, h1, u0, u1, s;
};

struct DecodeAttnArgs {
  DType dtype;              // f32 or bf16 for q, k, v and out
  const void* q;            // (batch, n_heads, head_dim)
  const void* k;            // paged: pools as above; contiguous (table == nullptr): (batch, n_kv_heads, max_len, head_dim)
  const void* v;
  void* out;                // (batch, n_heads, head_dim)
  const int32_t* table;     // nullptr selects the contiguous layout
  const int32_t* seq_lens;
  int64_t batch, n_heads, n_kv_heads, head_dim;
  int64_t max_blocks, block_size;  // paged layout
  int64_t max_len;                 // contiguous layout
  int64_t chunk;            // tokens per unit: block_size (paged) or a fixed run (contiguous)
  float scale;
  const DecodeWorkItem* items;
  int64_t n_items;
  const int32_t* splits;    // (batch,): how many items share sequence b's length; 1 = no merge
  int64_t max_splits;
  float* partial;           // batch * n_heads * max_splits * (head_dim + 2) floats when max_splits > 1
  float* scratch;           // threads * scratch_floats floats
  int64_t scratch_floats;   // >= rows * (2 * round_up(head_dim, 16) + 48) + 16, rows = q heads of the widest item
  int threads;
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, paged_kv_append, const lf::cpu::PagedAppendArgs&)
LF_DECLARE_CPU_KERNEL(void, paged_kv_gather, const lf::cpu::PagedGatherArgs&)
LF_DECLARE_CPU_KERNEL(void, decode_attention, const lf::cpu::DecodeAttnArgs&)
