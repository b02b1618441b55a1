// decode_model.h — the native decode step at the boundary: a model's weights are checked once
// (shapes, dtypes, CPU, contiguity, finite scales) and kept as views; the key/value cache lives
// here; forward(tokens) runs one C++ call per step (kernel: csrc/cpu/decode_model.cpp).
// Python: llmforge/generate/native.py. The tensors behind the views must outlive the object
// (bindings.cpp keeps their DLPack capsules alive with it).
#pragma once
#include <cstdint>
#include <mutex>
#include <vector>

#include "cpu/decode_model.h"
#include "tensor.h"

namespace lf {

struct DecodeConfig {
  int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_len;
  double eps;
  bool act_q8;  // int4 weights multiply Q8_0-rounded activations (llama.cpp's Q4_0 arithmetic)
  // MoE: every layer's feed-forward is n_experts SwiGLU experts of expert_ffn (top_k per token),
  // plus a shared expert of shared_ffn when > 0; ffn_dim is then the wider of the two.
  int64_t n_experts = 0, top_k = 0, expert_ffn = 0, shared_ffn = 0;
  bool norm_topk = true;
  // Gemma: GeGLU feed-forwards; embeddings times embed_scale; attention scores q.k * attn_scale
  // (else head_dim^-0.5), soft-capped as attn_softcap * tanh(. / attn_softcap); logits likewise by
  // final_softcap. The numbers are 0 when unused, else finite and > 0.
  bool gelu = false;
  double embed_scale = 0, attn_scale = 0, attn_softcap = 0, final_softcap = 0;
};

// One linear: a float32 `w` (N, K), or int4 `packed` (N, K/2) u8 + `scales` (N, K/G) f32 or f16 +
// `zeros` (N, K/G) f32, or (1,) for one zero point everywhere; `bias` (N,) f32 optional. Absent
// tensors are null.
struct DecodeLinearViews {
  const TensorView* w = nullptr;
  const TensorView* packed = nullptr;
  const TensorView* scales = nullptr;
  const TensorView* zeros = nullptr;
  const TensorView* bias = nullptr;
  int64_t group_size = 0;
};

// One layer's MoE weights: router (n_experts, dim) f32; per expert gate, up, down; the shared
// expert's gate vector (dim,) f32 and its gate/up/down when shared_ffn > 0.
struct DecodeMoEViews {
  const TensorView* router = nullptr;
  std::vector<DecodeLinearViews> experts;  // 3 per expert: gate, up, down
  const TensorView* shared_gate = nullptr;
  DecodeLinearViews sh_gate, sh_up, sh_down;
};

struct DecodeLayerViews {
  const TensorView* attn_norm;  // (dim,) f32, or null (OLMo 2/3: attention reads the residual stream)
  const TensorView* mlp_norm;   // the same for the feed-forward
  DecodeLinearViews q, k, v, o, gate, up, down;
  // Qwen3's RMSNorm of each query head: (head_dim,) f32; OLMo 2/3's over the whole query projection:
  // (n_heads * head_dim,); or null
  const TensorView* q_norm = nullptr;
  const TensorView* k_norm = nullptr;  // the same for keys, (head_dim,) or (n_kv_heads * head_dim,) (both or neither)
  DecodeMoEViews moe;                  // used when the config has n_experts (gate/up/down are not)
  const TensorView* post_attn_norm = nullptr;  // (dim,) f32: RMSNorm of the attention output (Gemma 2/3), or null
  const TensorView* post_ffn_norm = nullptr;   // the same for the feed-forward output
  bool local_rope = false;                     // RoPE from the local tables (Gemma 3's sliding layers)
  bool rope = true;                            // false: no RoPE on this layer's q and k (SmolLM3's NoPE layers)
  int64_t window = 0;                          // > 0: a sliding layer's window (keys t - window + 1 .. t)
};

class DecodeModel {
 public:
  // rope_cos_local / rope_sin_local: the tables of layers with local_rope (the shape of rope_cos), or null.
  DecodeModel(const DecodeConfig& cfg, const TensorView& embed, const TensorView& rope_cos, const TensorView& rope_sin,
              const TensorView& final_norm, const DecodeLinearViews& output, const std::vector<DecodeLayerViews>& layers,
              int threads, const TensorView* rope_cos_local = nullptr, const TensorView* rope_sin_local = nullptr);
  // Appends tokens (ids in [0, vocab)) at positions length()..; logits (1, vocab) f32 receives the
  // last token's logits, or (len(tokens), vocab) all of them when all_logits.
  void forward(const std::vector<int64_t>& tokens, const TensorView& logits, bool all_logits);
  // A batched step over a paged cache (generate/paged_cache.py's pools): row m is token tokens[m] of
  // sequence seqs[m] at position positions[m]; its key/value go to that slot of the pools and it
  // attends to positions 0..positions[m] of its sequence. Rows of one sequence come in increasing
  // position order and every earlier position must already be cached. k_pools/v_pools:
  // (n_layers, num_blocks, block_size, n_kv_heads, head_dim) f32; block_table (n_seqs, max_blocks)
  // int32; logits (len(out_rows), vocab) f32 receives the logits of those rows (distinct, in
  // [0, len(tokens))). The model's own cache is untouched.
  void forward_paged(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                     const std::vector<int64_t>& seqs, const TensorView& block_table, const TensorView& k_pools,
                     const TensorView& v_pools, const TensorView& logits, const std::vector<int64_t>& out_rows);
  int64_t length() const { return length_; }
  void truncate(int64_t n);  // forget positions >= n (0 resets)
  // Replace the cache by n positions computed elsewhere (a prefill by the Python model): k, v
  // (n_layers, n_kv_heads, n, head_dim) f32 contiguous, n <= max_len; length() becomes n.
  void load_cache(const TensorView& k, const TensorView& v);
  int64_t max_len() const { return w_.max_len; }
  int threads() const { return threads_; }
  void set_threads(int threads);  // OpenMP threads of the next calls (>= 1)

 private:
  void run(const std::vector<int64_t>& tokens, const int64_t* positions, const int32_t* seqs,
           const cpu::DecodePaged& paged, const TensorView& logits, const std::vector<int64_t>& out_rows);

  cpu::DecodeWeights w_{};
  std::vector<cpu::DecodeLayer> layers_;
  std::vector<std::vector<cpu::DecodeLinear>> experts_;  // per MoE layer, what its DecodeMoE points at
  std::vector<float> cache_, scratch_;
  int64_t length_ = 0;
  int threads_;
  std::mutex mu_;
};

}  // namespace lf
