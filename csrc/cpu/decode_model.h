// decode_model.h — a whole Llama forward for incremental decoding on the CPU in one native call:
// M new tokens of one sequence (M = 1 when decoding, the prompt when prefilling) go through every
// layer, their keys/values are appended to a float32 cache, and the logits of the last token (or
// of all M) come back. No per-op dispatch: one OpenMP region runs the whole step, the threads
// meeting at a barrier between ops.
//
// Per layer: h = RMSNorm(x) -> q,k,v (one pass over the three weights) -> RoPE (half-split, as
// Hugging Face) on q,k -> k,v into the cache -> causal attention over the cache (GQA) -> x += o(.)
// -> h = RMSNorm(x) -> gate,up -> silu(gate) * up -> x += down(.). Final RMSNorm, output matrix.
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
  int64_t G = 0;                    // int4 group size
  const float* w = nullptr;         // f32 (N, K)
  const float* bias = nullptr;      // (N,) or null
  int64_t N = 0, K = 0;
};

struct DecodeLayer {
  const float* attn_norm;  // (D,)
  const float* mlp_norm;   // (D,)
  DecodeLinear q, k, v, o, gate, up, down;
  float* kcache;  // (n_kv_heads, max_len, head_dim)
  float* vcache;
};

struct DecodeWeights {
  int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_len;
  float eps;
  bool act_q8;              // int4 weights multiply Q8_0-rounded activations (else float32 ones)
  const float* embed;       // (vocab, dim)
  const float* rope_cos;    // (max_len, head_dim / 2)
  const float* rope_sin;
  const float* final_norm;  // (dim,)
  DecodeLinear output;      // (vocab, dim)
  const DecodeLayer* layers;
};

struct DecodeStep {
  const int64_t* tokens;  // (M,)
  int64_t M;
  int64_t pos;            // cache length before the step: token i sits at position pos + i
  float* logits;          // (out_rows, vocab): the last token's row, or all M when all_logits
  bool all_logits;
  float* scratch;         // DecodeScratch(w, M, threads).floats floats
  int threads;
};

// Offsets (in floats) of the step's buffers inside one scratch block; each buffer starts on a
// 16-float boundary. x: residual stream (M, D); h: normalised / SwiGLU activations (M, max(D, F));
// q8 / dx / xs: h rounded to int8 per 32-block, its block scales and scale * block sum;
// qkv: (M, (H + 2 KV) hd); att: (M, H hd); gu: gate and up (M, 2F); scores: one (max_len,) row per thread.
struct DecodeScratch {
  int64_t x, h, q8, dx, xs, qkv, att, gu, scores, floats;
  DecodeScratch(const DecodeWeights& w, int64_t M, int threads) {
    const int64_t kmax = std::max({w.dim, w.ffn_dim, w.n_heads * w.head_dim});
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t o = at; at += (n + 15) / 16 * 16; return o; };
    x = take(M * w.dim);
    h = take(M * kmax);
    q8 = take(M * kmax / 4 + 1);
    dx = take(M * (kmax / 32 + 1));
    xs = take(M * (kmax / 32 + 1));
    qkv = take(M * (w.n_heads + 2 * w.n_kv_heads) * w.head_dim);
    att = take(M * w.n_heads * w.head_dim);
    gu = take(M * 2 * w.ffn_dim);
    scores = take(int64_t(threads) * (w.max_len + 16));
    floats = at;
  }
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, decode_forward, const lf::cpu::DecodeWeights&, const lf::cpu::DecodeStep&)
