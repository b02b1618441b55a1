// paged_attn.cpp — argument checks and dispatch for the CUDA paged KV cache (see paged_attn.h).
#include "paged_attn.h"

#include <cmath>

#include "device.h"
#ifdef LLMFORGE_WITH_CUDA
#include "paged_attn.cuh"
#endif

namespace lf {
namespace {

constexpr const char* kAppend = "paged_kv_append";
constexpr const char* kDecode = "paged_decode_attention";

[[maybe_unused]] void check_gpu(const char* op, const char* arg, const TensorView& t, const TensorView& ref) {
  check_supported_device(op, arg, t);
  LF_CHECK(t.device == DeviceKind::cuda, op, ": ", arg, " must be a CUDA tensor");
  check_same_device(op, arg, t, ref, "k_pool");
  check_contiguous(op, arg, t);
}

[[maybe_unused]] void check_pools(const char* op, const TensorView& k_pool, const TensorView& v_pool,
                                  const TensorView& table, const TensorView& lens) {
  check_gpu(op, "k_pool", k_pool, k_pool);
  check_dtype(op, "k_pool", k_pool, {DType::f32, DType::f16, DType::bf16});
  check_ndim(op, "k_pool", k_pool, 4);
  for (int i = 0; i < 4; ++i)
    LF_CHECK(k_pool.shape[i] > 0, op, ": k_pool must have no zero-size dimension, got shape ", k_pool.shape_str());
  check_gpu(op, "v_pool", v_pool, k_pool);
  check_same_dtype(op, "v_pool", v_pool, k_pool, "k_pool");
  check_shape(op, "v_pool", v_pool, {k_pool.shape[0], k_pool.shape[1], k_pool.shape[2], k_pool.shape[3]});
  LF_CHECK(k_pool.shape[0] < (int64_t{1} << 31), op, ": at most 2^31 - 1 blocks");
  check_gpu(op, "block_table", table, k_pool);
  check_dtype(op, "block_table", table, {DType::i32});
  check_ndim(op, "block_table", table, 2);
  check_gpu(op, "seq_lens", lens, k_pool);
  check_dtype(op, "seq_lens", lens, {DType::i32});
  check_shape(op, "seq_lens", lens, {table.shape[0]});
  LF_CHECK(table.shape[0] <= 65535, op, ": at most 65535 sequences per call, got ", table.shape[0]);
}

#ifdef LLMFORGE_WITH_CUDA
cuda::PagedDecodeParams decode_params(const TensorView& q, const TensorView& k_pool, const TensorView& table,
                                      int64_t max_len) {
  cuda::PagedDecodeParams p;
  p.dtype = cuda_dtype_code(q.dtype);
  p.batch = static_cast<int>(q.shape[0]);
  p.n_heads = static_cast<int>(q.shape[1]);
  p.n_kv_heads = static_cast<int>(k_pool.shape[2]);
  p.head_dim = static_cast<int>(k_pool.shape[3]);
  p.max_blocks = table.shape[1];
  p.block_size = k_pool.shape[1];
  p.num_blocks = k_pool.shape[0];
  cuda::paged_decode_plan(p, max_len, q.device_index);
  return p;
}
#endif

void check_decode(const TensorView& q, const TensorView& k_pool, const TensorView& v_pool, const TensorView& table,
                  const TensorView& lens, const TensorView* out, int64_t max_len) {
  check_pools(kDecode, k_pool, v_pool, table, lens);
  check_gpu(kDecode, "q", q, k_pool);
  check_same_dtype(kDecode, "q", q, k_pool, "k_pool");
  check_ndim(kDecode, "q", q, 3);
  const int64_t D = k_pool.shape[3], Hkv = k_pool.shape[2];
  LF_CHECK(D == 64 || D == 128, kDecode, ": the CUDA kernel takes head_dim 64 or 128, got ", D);
  LF_CHECK(q.shape[0] == table.shape[0], kDecode, ": q has ", q.shape[0], " sequences but block_table has ",
           table.shape[0]);
  LF_CHECK(q.shape[2] == D, kDecode, ": q has head_dim ", q.shape[2], " but the cache has ", D);
  LF_CHECK(q.shape[1] > 0 && q.shape[1] % Hkv == 0 && q.shape[1] <= (int64_t{1} << 20), kDecode,
           ": the number of query heads (", q.shape[1], ") must be a positive multiple of n_kv_heads (", Hkv, ")");
  check_aligned(kDecode, "q", q, 16);
  check_aligned(kDecode, "k_pool", k_pool, 16);
  check_aligned(kDecode, "v_pool", v_pool, 16);
  LF_CHECK(max_len >= 0, kDecode, ": max_len must be >= 0, got ", max_len);
  if (out) {
    check_gpu(kDecode, "out", *out, k_pool);
    check_same_dtype(kDecode, "out", *out, q, "q");
    check_shape(kDecode, "out", *out, {q.shape[0], q.shape[1], q.shape[2]});
  }
}

}  // namespace

void paged_kv_append_cuda(const TensorView& k_pool, const TensorView& v_pool, const TensorView& table,
                          const TensorView& lens, const TensorView& k_new, const TensorView& v_new,
                          const TensorView* counts, intptr_t stream) {
  check_pools(kAppend, k_pool, v_pool, table, lens);
  LF_CHECK(k_pool.data != v_pool.data, kAppend, ": k_pool and v_pool must be different tensors");
  check_gpu(kAppend, "k_new", k_new, k_pool);
  check_same_dtype(kAppend, "k_new", k_new, k_pool, "k_pool");
  check_ndim(kAppend, "k_new", k_new, 4);
  const int64_t batch = table.shape[0];
  LF_CHECK(k_new.shape[0] == batch && k_new.shape[2] == k_pool.shape[2] && k_new.shape[3] == k_pool.shape[3],
           kAppend, ": k_new has shape ", k_new.shape_str(), ", expected (", batch, ", n_new, ", k_pool.shape[2], ", ",
           k_pool.shape[3], ")");
  check_gpu(kAppend, "v_new", v_new, k_pool);
  check_same_dtype(kAppend, "v_new", v_new, k_pool, "k_pool");
  check_shape(kAppend, "v_new", v_new, {k_new.shape[0], k_new.shape[1], k_new.shape[2], k_new.shape[3]});
  if (counts) {
    check_gpu(kAppend, "counts", *counts, k_pool);
    check_dtype(kAppend, "counts", *counts, {DType::i32});
    check_shape(kAppend, "counts", *counts, {batch});
  }
#ifdef LLMFORGE_WITH_CUDA
  cuda::PagedAppendParams p;
  p.elem_size = dtype_size(k_pool.dtype);
  p.k_pool = k_pool.data;
  p.v_pool = v_pool.data;
  p.table = table.ptr<int32_t>();
  p.seq_lens = lens.ptr<int32_t>();
  p.counts = counts ? counts->ptr<int32_t>() : nullptr;
  p.k_new = k_new.data;
  p.v_new = v_new.data;
  p.batch = batch;
  p.n_new = k_new.shape[1];
  p.max_blocks = table.shape[1];
  p.block_size = k_pool.shape[1];
  p.num_blocks = k_pool.shape[0];
  p.row_elems = k_pool.shape[2] * k_pool.shape[3];
  const char* err = cuda::paged_kv_append(p, reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, kAppend, ": CUDA error: ", err);
#else
  (void)stream;
#endif
}

int64_t paged_decode_workspace_cuda(const TensorView& q, const TensorView& k_pool, const TensorView& table,
                                    int64_t max_len) {
#ifdef LLMFORGE_WITH_CUDA
  LF_CHECK(q.ndim == 3 && k_pool.ndim == 4 && table.ndim == 2, kDecode, ": bad shapes for the workspace query");
  LF_CHECK(k_pool.shape[2] > 0 && q.shape[1] % k_pool.shape[2] == 0, kDecode, ": bad head counts");
  cuda::PagedDecodeParams p = decode_params(q, k_pool, table, max_len);
  return p.num_splits > 1 ? int64_t(p.batch) * p.n_heads * p.num_splits * (p.head_dim + 1) : 0;
#else
  (void)q, (void)k_pool, (void)table, (void)max_len;
  fail_value(kDecode, ": this llmforge was built without CUDA kernels");
#endif
}

void paged_decode_attention_cuda(const TensorView& q, const TensorView& k_pool, const TensorView& v_pool,
                                 const TensorView& table, const TensorView& lens, const TensorView& out,
                                 const TensorView* workspace, double scale, int64_t max_len, intptr_t stream) {
  check_decode(q, k_pool, v_pool, table, lens, &out, max_len);
  LF_CHECK(std::isfinite(scale), kDecode, ": scale must be finite, got ", scale);
#ifdef LLMFORGE_WITH_CUDA
  cuda::PagedDecodeParams p = decode_params(q, k_pool, table, max_len);
  p.q = q.data;
  p.k_pool = k_pool.data;
  p.v_pool = v_pool.data;
  p.table = table.ptr<int32_t>();
  p.seq_lens = lens.ptr<int32_t>();
  p.out = out.data;
  p.scale = static_cast<float>(scale);
  if (p.num_splits > 1) {
    const int64_t need = int64_t(p.batch) * p.n_heads * p.num_splits * (p.head_dim + 1);
    LF_CHECK(workspace != nullptr, kDecode, ": this call needs a float32 workspace of ", need, " elements");
    check_gpu(kDecode, "workspace", *workspace, k_pool);
    check_dtype(kDecode, "workspace", *workspace, {DType::f32});
    LF_CHECK(workspace->numel() >= need, kDecode, ": workspace has ", workspace->numel(), " floats, need ", need);
    p.partial_out = workspace->ptr<float>();
    p.partial_lse = p.partial_out + int64_t(p.batch) * p.n_heads * p.num_splits * p.head_dim;
  }
  const char* err = cuda::paged_decode_attention(p, reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, kDecode, ": CUDA error: ", err);
#else
  (void)workspace, (void)stream;
#endif
}

}  // namespace lf
