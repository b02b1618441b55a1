// paged_kv.cpp — argument checks and dispatch for the paged KV cache (see paged_kv.h).
// Every block index a kernel will read or write is checked here first, so a corrupt
// block table raises ValueError instead of reaching memory outside the pool.
#include "paged_kv.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/paged_kv.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kAppend = "paged_kv_append";
constexpr const char* kGather = "paged_kv_gather";
constexpr const char* kDecode = "paged_decode_attention";
constexpr const char* kContig = "contiguous_decode_attention";

constexpr int64_t kContigChunk = 32;     // tokens per split unit in the contiguous layout
constexpr int64_t kMinSplitTokens = 128;  // a KV-length split covers at least this many tokens
constexpr int64_t kMaxSplits = 256;       // cpu/paged_kv.cpp merges at most this many splits

void check_cache_tensor(const char* op, const char* arg, const TensorView& t) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {DType::f32, DType::bf16});
  check_ndim(op, arg, t, 4);
  for (int i = 0; i < 4; ++i)
    LF_CHECK(t.shape[i] > 0, op, ": ", arg, " must have no zero-size dimension, got shape ", t.shape_str());
  check_contiguous(op, arg, t);
}

void check_like(const char* op, const char* arg, const TensorView& t, const TensorView& ref, const char* ref_name) {
  check_cpu(op, arg, t);
  check_same_dtype(op, arg, t, ref, ref_name);
  LF_CHECK(t.ndim == ref.ndim, op, ": ", arg, " has shape ", t.shape_str(), " but ", ref_name, " has ",
           ref.shape_str());
  for (int i = 0; i < t.ndim; ++i)
    LF_CHECK(t.shape[i] == ref.shape[i], op, ": ", arg, " has shape ", t.shape_str(), " but ", ref_name, " has ",
             ref.shape_str());
  check_contiguous(op, arg, t);
}

void check_int_vector(const char* op, const char* arg, const TensorView& t, int64_t batch) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {DType::i32});
  check_shape(op, arg, t, {batch});
  check_contiguous(op, arg, t);
}

// Checks the table and lengths; returns batch. The table's dtype/shape only: the
// entries are checked per call against the positions it touches.
int64_t check_table(const char* op, const TensorView& table, const TensorView& seq_lens) {
  check_cpu(op, "block_table", table);
  check_dtype(op, "block_table", table, {DType::i32});
  check_ndim(op, "block_table", table, 2);
  check_contiguous(op, "block_table", table);
  check_int_vector(op, "seq_lens", seq_lens, table.shape[0]);
  return table.shape[0];
}

// Raises unless blocks [j0, j1) of sequence b are valid pool indices.
void check_blocks(const char* op, const TensorView& table, int64_t b, int64_t j0, int64_t j1, int64_t num_blocks) {
  const int32_t* row = table.ptr<int32_t>() + b * table.shape[1];
  for (int64_t j = j0; j < j1; ++j)
    LF_CHECK(row[j] >= 0 && row[j] < num_blocks, op, ": block_table[", b, ", ", j, "] = ", row[j],
             " is not a block of the pool (0 <= index < ", num_blocks, ") but sequence ", b, " needs it");
}

// seq_lens in [0, capacity] and every block a length covers valid; returns the longest length.
int64_t check_lengths_and_blocks(const char* op, const TensorView& table, const TensorView& seq_lens,
                                 int64_t block_size, int64_t num_blocks) {
  const int64_t batch = table.shape[0], capacity = table.shape[1] * block_size;
  const int32_t* lens = seq_lens.ptr<int32_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    LF_CHECK(lens[b] >= 0 && lens[b] <= capacity, op, ": seq_lens[", b, "] = ", lens[b],
             " is outside [0, ", capacity, "] (block_table has ", table.shape[1], " blocks of ", block_size,
             " per sequence)");
    check_blocks(op, table, b, 0, (lens[b] + block_size - 1) / block_size, num_blocks);
    if (lens[b] > longest) longest = lens[b];
  }
  return longest;
}

// Cuts the attention into work items. Each sequence's pages are split into S runs
// (S = 1 unless the batch gives the threads too little to do: then long sequences are
// split, at least kMinSplitTokens tokens per run, and merged by log-sum-exp). Paged: an
// item takes every kv head (reads follow the page layout); contiguous: one kv head.
// The items are listed longest first for the dynamic schedule.
void plan_decode(cpu::DecodeAttnArgs& a, bool all_heads, std::vector<cpu::DecodeWorkItem>& items,
                 std::vector<int32_t>& splits) {
  const int64_t B = a.batch, Hkv = a.n_kv_heads, unit = a.chunk;
  const int64_t per_item = all_heads ? Hkv : 1, groups = Hkv / per_item;
  const int32_t* lens = a.seq_lens;
  int64_t total = 0;  // cost in (unit x kv head)
  for (int64_t b = 0; b < B; ++b) total += (lens[b] + unit - 1) / unit * Hkv;
  int64_t target = (total + 4 * a.threads - 1) / (4 * a.threads);
  if (target < 1) target = 1;
  const int64_t min_units = (kMinSplitTokens + unit - 1) / unit;
  splits.assign(static_cast<size_t>(B), 1);
  a.max_splits = 1;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t units = (lens[b] + unit - 1) / unit;
    int64_t S = 1;
    if (a.threads > 1 && units > 0) {
      S = (units * per_item + target - 1) / target;
      const int64_t cap = units / min_units;
      S = S < cap ? S : cap;
      S = S < kMaxSplits ? S : kMaxSplits;
      S = S < 1 ? 1 : S;
    }
    splits[b] = static_cast<int32_t>(S);
    a.max_splits = S > a.max_splits ? S : a.max_splits;
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t s = 0; s < S; ++s)
        items.push_back({b, g * per_item, (g + 1) * per_item, units * s / S, units * (s + 1) / S, s});
  }
  std::stable_sort(items.begin(), items.end(), [](const cpu::DecodeWorkItem& x, const cpu::DecodeWorkItem& y) {
    return x.u1 - x.u0 > y.u1 - y.u0;
  });
}

void check_query(const char* op, const TensorView& q, const TensorView& out, int64_t batch, int64_t n_kv_heads,
                 int64_t head_dim, const TensorView& cache, const char* cache_name) {
  check_cpu(op, "q", q);
  check_same_dtype(op, "q", q, cache, cache_name);
  check_ndim(op, "q", q, 3);
  check_contiguous(op, "q", q);
  LF_CHECK(q.shape[0] == batch, op, ": q has ", q.shape[0], " sequences but the cache has ", batch);
  LF_CHECK(q.shape[2] == head_dim, op, ": q has head_dim ", q.shape[2], " but ", cache_name, " has ", head_dim);
  LF_CHECK(q.shape[1] > 0 && q.shape[1] % n_kv_heads == 0, op, ": the number of query heads (", q.shape[1],
           ") must be a positive multiple of the number of kv heads (", n_kv_heads, ")");
  check_like(op, "out", out, q, "q");
}

void run_decode(cpu::DecodeAttnArgs& a, bool all_heads) {
  std::vector<cpu::DecodeWorkItem> items;
  std::vector<int32_t> splits;
  plan_decode(a, all_heads, items, splits);
  const int64_t rows = (all_heads ? a.n_heads : a.n_heads / a.n_kv_heads);
  const int64_t Dp = (a.head_dim + 15) / 16 * 16;
  a.scratch_floats = (rows * (2 * Dp + 48) + 15) / 16 * 16 + 16;  // + 64 bytes between threads
  std::vector<float> scratch(static_cast<size_t>(a.threads * a.scratch_floats));
  std::vector<float> partial;
  if (a.max_splits > 1) partial.resize(static_cast<size_t>(a.batch * a.n_heads * a.max_splits * (a.head_dim + 2)));
  a.items = items.data();
  a.n_items = static_cast<int64_t>(items.size());
  a.splits = splits.data();
  a.scratch = scratch.data();
  a.partial = partial.empty() ? nullptr : partial.data();
  LF_CPU_DISPATCH(decode_attention, a);
}

// The fields both layouts share; head_dim is k's last dimension.
cpu::DecodeAttnArgs decode_args(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                                const TensorView& seq_lens, int64_t n_kv_heads, double scale, int threads) {
  cpu::DecodeAttnArgs a{};
  a.dtype = q.dtype;
  a.q = q.data;
  a.k = k.data;
  a.v = v.data;
  a.out = out.data;
  a.seq_lens = seq_lens.ptr<int32_t>();
  a.batch = q.shape[0];
  a.n_heads = q.shape[1];
  a.n_kv_heads = n_kv_heads;
  a.head_dim = k.shape[3];
  a.scale = static_cast<float>(scale);
  a.threads = threads;
  return a;
}

void check_scale(const char* op, double scale) {
  LF_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
}

}  // namespace

void paged_kv_append(const TensorView& k_pool, const TensorView& v_pool, const TensorView& block_table,
                     const TensorView& seq_lens, const TensorView& k_new, const TensorView& v_new,
                     const TensorView* counts, int threads) {
  check_cache_tensor(kAppend, "k_pool", k_pool);
  check_like(kAppend, "v_pool", v_pool, k_pool, "k_pool");
  LF_CHECK(k_pool.data != v_pool.data, kAppend, ": k_pool and v_pool must be different tensors");
  const int64_t batch = check_table(kAppend, block_table, seq_lens);
  check_cpu(kAppend, "k_new", k_new);
  check_same_dtype(kAppend, "k_new", k_new, k_pool, "k_pool");
  check_ndim(kAppend, "k_new", k_new, 4);
  check_contiguous(kAppend, "k_new", k_new);
  LF_CHECK(k_new.shape[0] == batch && k_new.shape[2] == k_pool.shape[2] && k_new.shape[3] == k_pool.shape[3],
           kAppend, ": k_new has shape ", k_new.shape_str(), ", expected (", batch, ", n_new, ", k_pool.shape[2],
           ", ", k_pool.shape[3], ") for ", batch, " sequences and k_pool ", k_pool.shape_str());
  check_like(kAppend, "v_new", v_new, k_new, "k_new");
  if (counts) check_int_vector(kAppend, "counts", *counts, batch);
  check_threads(kAppend, threads);

  const int64_t n_new = k_new.shape[1], bs = k_pool.shape[1], num_blocks = k_pool.shape[0];
  const int64_t capacity = block_table.shape[1] * bs;
  const int32_t* lens = seq_lens.ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t cnt = counts ? counts->ptr<int32_t>()[b] : n_new;
    LF_CHECK(cnt >= 0 && cnt <= n_new, kAppend, ": counts[", b, "] = ", cnt, " is outside [0, ", n_new, "]");
    LF_CHECK(lens[b] >= 0, kAppend, ": seq_lens[", b, "] = ", lens[b], " is negative");
    LF_CHECK(lens[b] + cnt <= capacity, kAppend, ": sequence ", b, " would grow to ", lens[b] + cnt,
             " tokens but block_table has room for ", capacity, " (", block_table.shape[1], " blocks of ", bs,
             "); allocate more blocks first");
    if (cnt > 0) check_blocks(kAppend, block_table, b, lens[b] / bs, (lens[b] + cnt - 1) / bs + 1, num_blocks);
  }
  if (batch == 0 || n_new == 0) return;
  cpu::PagedAppendArgs a{dtype_size(k_pool.dtype), k_pool.data, v_pool.data, block_table.ptr<int32_t>(), lens,
                         counts ? counts->ptr<int32_t>() : nullptr, k_new.data, v_new.data, batch, n_new,
                         block_table.shape[1], bs, k_pool.shape[2] * k_pool.shape[3], threads};
  LF_CPU_DISPATCH(paged_kv_append, a);
}

void paged_kv_gather(const TensorView& pool, const TensorView& block_table, const TensorView& seq_lens,
                     const TensorView& out, int threads) {
  check_cache_tensor(kGather, "pool", pool);
  const int64_t batch = check_table(kGather, block_table, seq_lens);
  check_cpu(kGather, "out", out);
  check_same_dtype(kGather, "out", out, pool, "pool");
  check_ndim(kGather, "out", out, 4);
  if (out.numel() > 0) check_contiguous(kGather, "out", out);  // a zero-size view's strides are arbitrary
  LF_CHECK(out.shape[0] == batch && out.shape[2] == pool.shape[2] && out.shape[3] == pool.shape[3], kGather,
           ": out has shape ", out.shape_str(), ", expected (", batch, ", max_len, ", pool.shape[2], ", ",
           pool.shape[3], ")");
  check_threads(kGather, threads);
  const int64_t longest = check_lengths_and_blocks(kGather, block_table, seq_lens, pool.shape[1], pool.shape[0]);
  LF_CHECK(longest <= out.shape[1], kGather, ": max_len ", out.shape[1], " is shorter than the longest sequence (",
           longest, ")");
  if (batch == 0 || out.shape[1] == 0) return;
  cpu::PagedGatherArgs a{dtype_size(pool.dtype), pool.data, block_table.ptr<int32_t>(), seq_lens.ptr<int32_t>(),
                         out.data, batch, out.shape[1], block_table.shape[1], pool.shape[1],
                         pool.shape[2] * pool.shape[3], threads};
  LF_CPU_DISPATCH(paged_kv_gather, a);
}

void paged_decode_attention(const TensorView& q, const TensorView& k_pool, const TensorView& v_pool,
                            const TensorView& block_table, const TensorView& seq_lens, const TensorView& out,
                            double scale, int threads) {
  check_cache_tensor(kDecode, "k_pool", k_pool);
  check_like(kDecode, "v_pool", v_pool, k_pool, "k_pool");
  const int64_t batch = check_table(kDecode, block_table, seq_lens);
  check_query(kDecode, q, out, batch, k_pool.shape[2], k_pool.shape[3], k_pool, "k_pool");
  check_scale(kDecode, scale);
  check_threads(kDecode, threads);
  check_lengths_and_blocks(kDecode, block_table, seq_lens, k_pool.shape[1], k_pool.shape[0]);
  if (batch == 0) return;
  cpu::DecodeAttnArgs a = decode_args(q, k_pool, v_pool, out, seq_lens, k_pool.shape[2], scale, threads);
  a.table = block_table.ptr<int32_t>();
  a.max_blocks = block_table.shape[1];
  a.block_size = k_pool.shape[1];
  a.chunk = a.block_size;
  run_decode(a, true);
}

void contiguous_decode_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                                 const TensorView& seq_lens, const TensorView& out, double scale, int threads) {
  check_cache_tensor(kContig, "k", k);
  check_like(kContig, "v", v, k, "k");
  const int64_t batch = k.shape[0], max_len = k.shape[2];
  check_int_vector(kContig, "seq_lens", seq_lens, batch);
  check_query(kContig, q, out, batch, k.shape[1], k.shape[3], k, "k");
  check_scale(kContig, scale);
  check_threads(kContig, threads);
  const int32_t* lens = seq_lens.ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    LF_CHECK(lens[b] >= 0 && lens[b] <= max_len, kContig, ": seq_lens[", b, "] = ", lens[b], " is outside [0, ",
             max_len, "]");
  cpu::DecodeAttnArgs a = decode_args(q, k, v, out, seq_lens, k.shape[1], scale, threads);
  a.table = nullptr;
  a.max_len = max_len;
  a.chunk = kContigChunk;
  run_decode(a, false);
}

}  // namespace lf
