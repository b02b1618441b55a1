// paged_attn.cuh — host launchers of the CUDA paged KV cache kernels (kernels/paged_attn.cu).
// Same layout and maths as csrc/paged_kv.h (the CPU ops):
//   k_pool, v_pool  (num_blocks, block_size, n_kv_heads, head_dim), f32 / f16 / bf16
//   block_table     int32 (batch, max_blocks);  seq_lens int32 (batch,)
// Device code never trusts the table: a position whose block index is outside [0, num_blocks)
// or whose slot is past max_blocks * block_size is skipped (csrc/ and the Python op check the
// indices first and raise). dtype codes: 0 f32, 1 f16, 2 bf16. Launchers return a CUDA error
// string or nullptr.
#pragma once
#include <cstdint>

namespace lf::cuda {

struct PagedAppendParams {
  int elem_size = 2;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  const int32_t* table = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* counts = nullptr;  // optional: rows to write per sequence (<= n_new)
  const void* k_new = nullptr;      // (batch, n_new, n_kv_heads, head_dim)
  const void* v_new = nullptr;
  int64_t batch = 0, n_new = 0, max_blocks = 0, block_size = 0, num_blocks = 0;
  int64_t row_elems = 0;  // n_kv_heads * head_dim
};
const char* paged_kv_append(const PagedAppendParams& p, void* stream);

struct PagedDecodeParams {
  int dtype = 2;
  const void* q = nullptr;  // (batch, n_heads, head_dim)
  const void* k_pool = nullptr;
  const void* v_pool = nullptr;
  const int32_t* table = nullptr;
  const int32_t* seq_lens = nullptr;
  void* out = nullptr;  // like q
  int batch = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;  // head_dim 64 or 128
  int64_t max_blocks = 0, block_size = 0, num_blocks = 0;
  float scale = 0.f;
  // split-K over the cached positions; set by paged_decode_plan
  int num_splits = 1, split_tokens = 0;
  float* partial_out = nullptr;  // (batch, n_heads, num_splits, head_dim) when num_splits > 1
  float* partial_lse = nullptr;  // (batch, n_heads, num_splits)
};

// Chooses num_splits / split_tokens for a call whose longest sequence has max_len tokens
// (an upper bound is fine) on `device`; returns the floats the partial buffers need
// (0 when one split suffices).
int64_t paged_decode_plan(PagedDecodeParams& p, int64_t max_len, int device);
const char* paged_decode_attention(const PagedDecodeParams& p, void* stream);

}  // namespace lf::cuda
