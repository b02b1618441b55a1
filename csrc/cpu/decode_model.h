// decode_model.h — a whole Llama forward for incremental decoding on the CPU in one native call:
// M new tokens of one sequence (M = 1 when decoding, the prompt when prefilling) go through every
// layer, their keys/values are appended to a float32 cache, and the logits of the last token (or
// of all M) come back. No per-op dispatch: one OpenMP region runs the whole step, the threads
// meeting at a barrier between ops.
//
// Per layer: h = RMSNorm(x) -> q,k,v (one pass over the three weights, a head per work item, which
// applies RoPE (half-split, as Hugging Face) and stores k,v in the cache) -> causal attention over
// the cache (GQA) -> x += o(.) -> h = RMSNorm(x) -> gate,up and silu(gate) * up in chunks of 32 ->
// x += down(.). Final RMSNorm, output matrix. Five barriers per layer.
//
// Gemma's parts, each off unless set: GeGLU (gelu_tanh(gate) * up instead of SwiGLU), embeddings
// times a scale, per-layer RMSNorms of the attention and FFN outputs before their residual adds
// (one barrier each), a softmax scale, tanh soft-caps of attention scores and logits
// (cap * tanh(s / cap)), a second RoPE table for some layers (Gemma 3's sliding layers), and
// per-layer sliding windows (Gemma 2 / 3).
//
// OLMo 2 / 3: no RMSNorm in front of attention or the FFN (a null attn_norm / mlp_norm: the
// sublayer reads the residual stream as it is, copied and, for int4 weights, prepared like a
// normed row), post-norms as Gemma 2's, and query / key norms over all heads of a token's q (and
// of its k) before RoPE (qk_full: one more barrier, after the q/k/v pass).
//
// Linear weights are either
//   int4: our int4 layout (int4_matmul.h: packed (N, K/2) uint8, scales/zeros (N, K/G), G a
//         multiple of 32); the scales may be float16 and one zero point may serve the whole
//         matrix, which is how a Q4_0 GGUF tensor reads (G = 32, zero 8, float16 d): 18 bytes per 32
//         weights, as in the file. With act_q8 the activations are first rounded per 32-block to
//         int8 as llama.cpp does (Q8_0: d = amax/127 stored as float16, q = round-half-even(x/d)),
//         and each block's products are summed exactly in integers:
//         y[n] = sum_b s[n,b] d_x[b] (sum_k q_w q_x - z[n,b] sum_k q_x); without it the float32
//         activations multiply the codes: y[n] = sum_b s[n,b] (sum_k q_w x_k - z[n,b] sum_k x_k).
//   f32:  a dense float32 (N, K) matrix, y = W x in float32.
// plus an optional float32 bias (N,).
#pragma once
#include <algorithm>
#include <cstdint>

#include "isa.h"

namespace lf::cpu {

struct DecodeLinear {
  bool int4 = false;
  const uint8_t* packed = nullptr;  // int4
  const void* scales = nullptr;     // int4 (N, K/G): float32, or float16 bits when scales_f16
  bool scales_f16 = false;
  const float* zeros = nullptr;     // int4 (N, K/G), or null when every zero point is `zero`
  float zero = 0.f;
  int64_t G = 0;                    // int4 group size: 32, 64 or 128
  int gshift = 0;                   // log2(G / 32)
  const float* w = nullptr;         // f32 (N, K)
  const float* bias = nullptr;      // (N,) or null
  int64_t N = 0, K = 0;
};

// An MoE feed-forward (DecodeLayer.moe): the router's softmax over n_experts, the top_k kept
// (renormalised to sum 1 when norm_topk), each token's SwiGLU through its chosen experts weighted
// by them, plus an optional shared expert (shared_ffn > 0) scaled by sigmoid(shared_gate . h).
struct DecodeMoE {
  int64_t n_experts = 0, top_k = 0, shared_ffn = 0;
  bool norm_topk = true;
  bool int4_in = false;                 // some gate/up is int4: the normalised rows need their int4 form
  const float* router = nullptr;        // (n_experts, D)
  const DecodeLinear* experts = nullptr;  // 3 per expert: gate, up, down
  const float* shared_gate = nullptr;   // (D,)
  DecodeLinear sh_gate, sh_up, sh_down;
};

struct DecodeLayer {
  const float* attn_norm;  // (D,), or null: attention reads x itself (OLMo 2/3)
  const float* mlp_norm;   // (D,), or null: the FFN reads x itself
  DecodeLinear q, k, v, o, gate, up, down;  // gate/up/down unused when moe.n_experts
  float* kcache;  // (n_kv_heads, max_len, head_dim)
  float* vcache;
  const float* q_norm = nullptr;  // (head_dim,): RMSNorm of each query head before RoPE (Qwen3), or null
  const float* k_norm = nullptr;  // the same for key heads
  bool qk_full = false;           // q_norm (n_heads * head_dim,) / k_norm (n_kv_heads * head_dim,) norm all
                                  // of a token's q / k at once (OLMo 2/3)
  DecodeMoE moe;                  // n_experts 0: the dense gate/up/down MLP
  const float* post_attn_norm = nullptr;  // (D,): RMSNorm of the attention output before x += (Gemma 2/3), or null
  const float* post_ffn_norm = nullptr;   // the same for the FFN output
  const float* rope_cos = nullptr;        // this layer's RoPE tables: DecodeWeights' or the local ones
  const float* rope_sin = nullptr;
  bool rope = true;                       // false: q and k unrotated (SmolLM3's NoPE layers)
  int64_t window = 0;                     // > 0: position t attends to t - window + 1 .. t only (sliding layers)
};

struct DecodeWeights {
  int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_len;  // ffn_dim: the widest FFN
  int64_t rope_len;         // rows of the RoPE tables: positions must stay below it
  float eps;
  bool act_q8;              // int4 weights multiply Q8_0-rounded activations (else float32 ones)
  const float* embed;       // (vocab, dim)
  const float* rope_cos;    // (rope_len, head_dim / 2)
  const float* rope_sin;
  const float* final_norm;  // (dim,)
  DecodeLinear output;      // (vocab, dim)
  const DecodeLayer* layers;
  int64_t n_experts = 0, top_k = 0;  // MoE layers' experts and experts per token (0: no MoE)
  float score_scale = 0.f;   // attention scores q.k * score_scale (the softmax scale, or scale / cap when capped)
  float score_cap = 0.f;     // > 0: scores become score_cap * tanh(.) before the softmax
  float final_cap = 0.f;     // > 0: logits become final_cap * tanh(logits * final_inv)
  float final_inv = 0.f;
  float embed_scale = 0.f;   // > 0: embeddings times it after the lookup
  bool gelu = false;         // feed-forwards are GeGLU (tanh-approximated GELU), not SwiGLU
  bool post_norms = false;   // some layer has a post_attn_norm / post_ffn_norm (scratch y)
};

// Where the keys/values of the step's sequences live. table == nullptr: the layers' own contiguous
// caches (one sequence). Otherwise a paged pool, (n_layers, num_blocks, block_size, n_kv_heads,
// head_dim) float32 for keys and for values, and a block table (n_seqs, table_stride) int32:
// position t of sequence s is slot t % block_size of block table[s][t / block_size].
struct DecodePaged {
  float* k_pool = nullptr;
  float* v_pool = nullptr;
  const int32_t* table = nullptr;
  int64_t table_stride = 0, num_blocks = 0, block_size = 0;
};

struct DecodeStep {
  const int64_t* tokens;     // (M,)
  const int64_t* positions;  // (M,): token m sits at positions[m] of its sequence
  const int32_t* seqs;       // (M,): its sequence (paged), or null (all 0)
  int64_t M;
  DecodePaged paged;
  float* logits;             // (nout, vocab): the logits of rows out_rows[0..nout)
  const int64_t* out_rows;
  int64_t nout;
  float* scratch;            // DecodeScratch(w, M, threads).floats floats
  int threads;
};

// Offsets (in floats) of the step's buffers inside one scratch block, each on a 16-float boundary.
// Shared: x, the residual stream (M, D); h, the attention output / SwiGLU activations (M, kmax) with
// their int4-kernel form (q8 codes, dx block scales, xs block terms; see prep_row); qkv (M,
// (H + 2 KV) hd); gu, gate and up (M, 2F); y, a sublayer's output before its post-norm (M, D),
// only with post_norms. Per thread: the RMSNorm output of the M rows (every
// thread normalises them itself, which saves a barrier) in the same four forms; attention scores.
// MoE (top_k > 0): shared route (per token its top_k expert ids and weights and its shared-expert
// gate; per expert the start of its (token, weight) list), moe_out (M, D); per thread a gathered
// copy of one expert's tokens' normalised rows.
struct DecodeScratch {
  int64_t kmax, ldb, x, h, q8, dx, xs, qkv, gu, y, route, moe_out, per_thread, norm, norm_q8, norm_dx, norm_xs, scores,
      score_ld, g_norm, g_q8, g_dx, g_xs, floats;
  static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }
  DecodeScratch(const DecodeWeights& w, int64_t M, int threads) {
    // row stride of the activation buffers: the widest input plus 16 floats, so that rows are not
    // 4 KiB apart (rows at such a stride share L1 sets and evict each other in multi-row kernels)
    kmax = std::max({w.dim, w.ffn_dim, w.n_heads * w.head_dim}) + 16;
    ldb = kmax / 32 + 1;
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t o = at; at += round16(n); return o; };
    x = take(M * w.dim);
    h = take(M * kmax);
    q8 = take(M * kmax / 4 + 1);
    dx = take(M * ldb);
    xs = take(M * ldb);
    qkv = take(M * (w.n_heads + 2 * w.n_kv_heads) * w.head_dim);
    gu = take(M * 2 * w.ffn_dim);
    y = take(w.post_norms ? M * w.dim : 0);
    const int64_t moe_m = w.top_k ? M : 0;
    route = take(moe_m * (4 * w.top_k + 1) + w.n_experts + 1);
    moe_out = take(moe_m * w.dim);
    // per thread, at norm + t * per_thread:
    norm = 0;
    norm_q8 = round16(M * kmax);
    norm_dx = norm_q8 + round16(M * kmax / 4 + 1);
    norm_xs = norm_dx + round16(M * ldb);
    scores = norm_xs + round16(M * ldb);
    score_ld = round16(w.rope_len + 16);
    g_norm = scores + score_ld * (w.n_heads / w.n_kv_heads);  // a row per query head of a group
    g_q8 = g_norm + round16(moe_m * kmax);
    g_dx = g_q8 + round16(moe_m * kmax / 4 + 1);
    g_xs = g_dx + round16(moe_m * ldb);
    per_thread = g_xs + round16(moe_m * ldb);
    const int64_t base = at;
    norm += base;
    norm_q8 += base;
    norm_dx += base;
    norm_xs += base;
    scores += base;
    g_norm += base;
    g_q8 += base;
    g_dx += base;
    g_xs += base;
    floats = base + int64_t(threads) * per_thread;
  }
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, decode_forward, const lf::cpu::DecodeWeights&, const lf::cpu::DecodeStep&)
