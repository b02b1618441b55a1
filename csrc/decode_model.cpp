// decode_model.cpp — argument checks and state for the native decode step (decode_model.h).
#include "decode_model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kOp = "DecodeModel";

void check_f32(const std::string& name, const TensorView* t, std::initializer_list<int64_t> shape) {
  LF_CHECK(t != nullptr, kOp, ": ", name, " is missing");
  check_cpu(kOp, name.c_str(), *t);
  check_dtype(kOp, name.c_str(), *t, {DType::f32});
  check_shape(kOp, name.c_str(), *t, shape);
  check_contiguous(kOp, name.c_str(), *t);
}

void check_finite(const std::string& name, const TensorView& t) {
  const float* p = t.ptr<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    LF_CHECK(std::isfinite(p[i]), kOp, ": ", name, " has a non-finite value at flat index ", i);
}

// A float option of the config as float32: 0 (unused), or finite and > 0 (as a float32 too).
float positive_or_off(const char* name, double v) {
  const float f = static_cast<float>(v);
  LF_CHECK(v == 0 || (std::isfinite(f) && f > 0 && std::isnormal(f)), kOp, ": ", name,
           " must be 0 (unused) or a finite float32 > 0, got ", v);
  return f;
}

cpu::DecodeLinear make_linear(const std::string& name, const DecodeLinearViews& v, int64_t N, int64_t K) {
  cpu::DecodeLinear L;
  L.N = N;
  L.K = K;
  if (v.bias) {
    check_f32(name + ".bias", v.bias, {N});
    L.bias = v.bias->ptr<float>();
  }
  if (v.w) {
    LF_CHECK(!v.packed, kOp, ": ", name, " has both a float weight and int4 codes");
    check_f32(name + ".weight", v.w, {N, K});
    L.w = v.w->ptr<float>();
    return L;
  }
  LF_CHECK(v.packed && v.scales && v.zeros, kOp, ": ", name, " needs a float32 weight or int4 packed/scales/zeros");
  const int64_t G = v.group_size;
  LF_CHECK((G == 32 || G == 64 || G == 128) && K % G == 0, kOp, ": ", name, ": int4 group size ", G,
           " must be 32, 64 or 128 and divide in_features ", K);
  const std::string pn = name + ".packed";
  check_cpu(kOp, pn.c_str(), *v.packed);
  check_dtype(kOp, pn.c_str(), *v.packed, {DType::u8});
  check_shape(kOp, pn.c_str(), *v.packed, {N, K / 2});
  check_contiguous(kOp, pn.c_str(), *v.packed);
  const std::string sn = name + ".scales";
  check_cpu(kOp, sn.c_str(), *v.scales);
  check_dtype(kOp, sn.c_str(), *v.scales, {DType::f32, DType::f16});
  check_shape(kOp, sn.c_str(), *v.scales, {N, K / G});
  check_contiguous(kOp, sn.c_str(), *v.scales);
  if (v.scales->dtype == DType::f32) {
    check_finite(sn, *v.scales);
  } else {
    const uint16_t* h = v.scales->ptr<uint16_t>();
    for (int64_t i = 0, n = v.scales->numel(); i < n; ++i)
      LF_CHECK((h[i] & 0x7c00) != 0x7c00, kOp, ": ", sn, " has a non-finite value at flat index ", i);
  }
  const bool uniform = v.zeros && v.zeros->ndim == 1;
  if (uniform)
    check_f32(name + ".zeros", v.zeros, {1});
  else
    check_f32(name + ".zeros", v.zeros, {N, K / G});
  check_finite(name + ".zeros", *v.zeros);
  L.int4 = true;
  L.G = G;
  L.gshift = G == 32 ? 0 : G == 64 ? 1 : 2;
  L.packed = v.packed->ptr<uint8_t>();
  L.scales = v.scales->data;
  L.scales_f16 = v.scales->dtype == DType::f16;
  L.zeros = uniform ? nullptr : v.zeros->ptr<float>();
  L.zero = v.zeros->ptr<float>()[0];
  return L;
}

}  // namespace

DecodeModel::DecodeModel(const DecodeConfig& c, const TensorView& embed, const TensorView& rope_cos,
                         const TensorView& rope_sin, const TensorView& final_norm, const DecodeLinearViews& output,
                         const std::vector<DecodeLayerViews>& layers, int threads, const TensorView* rope_cos_local,
                         const TensorView* rope_sin_local)
    : threads_(threads) {
  check_threads(kOp, threads);
  LF_CHECK(c.dim > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.head_dim > 0 && c.ffn_dim > 0 &&
               c.vocab > 0 && c.max_len > 0,
           kOp, ": every size must be positive");
  LF_CHECK(c.n_heads % c.n_kv_heads == 0, kOp, ": n_heads ", c.n_heads, " is not a multiple of n_kv_heads ",
           c.n_kv_heads);
  LF_CHECK(c.head_dim % 2 == 0, kOp, ": head_dim must be even, got ", c.head_dim);
  LF_CHECK(std::isfinite(c.eps) && c.eps >= 0, kOp, ": eps must be finite and >= 0");
  LF_CHECK(int64_t(layers.size()) == c.n_layers, kOp, ": got ", layers.size(), " layers, expected ", c.n_layers);
  const bool moe = c.n_experts > 0;
  if (moe) {
    LF_CHECK(c.top_k >= 1 && c.top_k <= c.n_experts && c.n_experts <= 4096, kOp, ": top_k ", c.top_k,
             " must be in [1, n_experts = ", c.n_experts, "] (n_experts at most 4096)");
    LF_CHECK(c.expert_ffn > 0 && c.shared_ffn >= 0 && c.ffn_dim == std::max(c.expert_ffn, c.shared_ffn), kOp,
             ": expert_ffn must be positive, shared_ffn >= 0 and ffn_dim the wider of them");
  }
  const int64_t D = c.dim, F = c.ffn_dim, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  LF_CHECK(c.max_len * (c.n_kv_heads * c.head_dim) * c.n_layers <= (int64_t(1) << 36), kOp,
           ": the key/value cache would exceed 256 GiB; lower max_len");
  w_ = cpu::DecodeWeights{D, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, F, c.vocab, c.max_len, 0,
                          static_cast<float>(c.eps), c.act_q8, nullptr, nullptr, nullptr, nullptr, {}, nullptr,
                          moe ? c.n_experts : 0, moe ? c.top_k : 0};
  check_f32("embed", &embed, {c.vocab, D});
  LF_CHECK(rope_cos.ndim == 2 && rope_cos.shape[0] >= c.max_len, kOp, ": rope_cos must have at least max_len (",
           c.max_len, ") rows, got shape ", rope_cos.shape_str());
  check_f32("rope_cos", &rope_cos, {rope_cos.shape[0], c.head_dim / 2});
  check_f32("rope_sin", &rope_sin, {rope_cos.shape[0], c.head_dim / 2});
  w_.rope_len = rope_cos.shape[0];
  LF_CHECK((rope_cos_local == nullptr) == (rope_sin_local == nullptr), kOp,
           ": rope_cos_local and rope_sin_local come together");
  if (rope_cos_local) {
    check_f32("rope_cos_local", rope_cos_local, {w_.rope_len, c.head_dim / 2});
    check_f32("rope_sin_local", rope_sin_local, {w_.rope_len, c.head_dim / 2});
    check_finite("rope_cos_local", *rope_cos_local);
    check_finite("rope_sin_local", *rope_sin_local);
  }
  // Gemma's options
  w_.gelu = c.gelu;
  w_.embed_scale = positive_or_off("embed_scale", c.embed_scale);
  const double scale = positive_or_off("attn_scale", c.attn_scale) > 0 ? c.attn_scale : 0.0;
  const float cap = positive_or_off("attn_softcap", c.attn_softcap);
  if (cap > 0) {  // scores cap * tanh(q.k * (scale / cap))
    const double s = scale > 0 ? scale : 1.0 / std::sqrt(double(c.head_dim));
    w_.score_scale = positive_or_off("attn_scale / attn_softcap", s / c.attn_softcap);
    w_.score_cap = cap;
  } else {
    w_.score_scale = scale > 0 ? static_cast<float>(scale) : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  }
  w_.final_cap = positive_or_off("final_softcap", c.final_softcap);
  if (w_.final_cap > 0) w_.final_inv = positive_or_off("1 / final_softcap", 1.0 / c.final_softcap);
  check_f32("final_norm", &final_norm, {D});
  w_.embed = embed.ptr<float>();
  w_.rope_cos = rope_cos.ptr<float>();
  w_.rope_sin = rope_sin.ptr<float>();
  w_.final_norm = final_norm.ptr<float>();
  w_.output = make_linear("output", output, c.vocab, D);
  cache_.assign(size_t(2 * c.n_layers * c.n_kv_heads * c.max_len * c.head_dim), 0.f);
  const int64_t per = c.n_kv_heads * c.max_len * c.head_dim;
  experts_.reserve(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const DecodeLayerViews& v = layers[size_t(i)];
    const std::string p = "layers." + std::to_string(i) + ".";
    // the norms in front of attention / the FFN: absent in OLMo 2/3
    if (v.attn_norm) check_f32(p + "attn_norm", v.attn_norm, {D});
    if (v.mlp_norm) check_f32(p + "mlp_norm", v.mlp_norm, {D});
    LF_CHECK((v.q_norm == nullptr) == (v.k_norm == nullptr), kOp, ": ", p, "q_norm and k_norm come together");
    // q/k norms per head (Qwen3) or over the whole projection (OLMo 2/3), told apart by q_norm's
    // width (the same thing with one head)
    const bool qk_full = v.q_norm && c.n_heads > 1 && v.q_norm->ndim == 1 && v.q_norm->shape[0] == qd;
    if (v.q_norm) {
      LF_CHECK(v.q_norm->ndim == 1 && (v.q_norm->shape[0] == c.head_dim || v.q_norm->shape[0] == qd), kOp, ": ", p,
               "q_norm must have shape (head_dim = ", c.head_dim, ",) or (n_heads * head_dim = ", qd, ",), got ",
               v.q_norm->shape_str());
      check_f32(p + "q_norm", v.q_norm, {qk_full ? qd : c.head_dim});
      check_f32(p + "k_norm", v.k_norm, {qk_full ? kvd : c.head_dim});
    }
    for (const auto& [name, t] : {std::pair{"post_attn_norm", v.post_attn_norm}, {"post_ffn_norm", v.post_ffn_norm}})
      if (t) {
        check_f32(p + name, t, {D});
        check_finite(p + name, *t);
      }
    LF_CHECK(v.rope || !v.local_rope, kOp, ": ", p, "local_rope on a layer without RoPE");
    LF_CHECK(!v.local_rope || rope_cos_local, kOp, ": ", p, "local_rope needs rope_cos_local / rope_sin_local");
    LF_CHECK(v.window >= 0, kOp, ": ", p, "window must be >= 0 (0: none), got ", v.window);
    cpu::DecodeLayer L{v.attn_norm ? v.attn_norm->ptr<float>() : nullptr,
                       v.mlp_norm ? v.mlp_norm->ptr<float>() : nullptr,
                       make_linear(p + "q", v.q, qd, D), make_linear(p + "k", v.k, kvd, D),
                       make_linear(p + "v", v.v, kvd, D), make_linear(p + "o", v.o, D, qd),
                       {}, {}, {}, cache_.data() + 2 * i * per,
                       cache_.data() + (2 * i + 1) * per, v.q_norm ? v.q_norm->ptr<float>() : nullptr,
                       v.k_norm ? v.k_norm->ptr<float>() : nullptr};
    L.qk_full = qk_full;
    L.post_attn_norm = v.post_attn_norm ? v.post_attn_norm->ptr<float>() : nullptr;
    L.post_ffn_norm = v.post_ffn_norm ? v.post_ffn_norm->ptr<float>() : nullptr;
    w_.post_norms = w_.post_norms || L.post_attn_norm || L.post_ffn_norm;
    L.rope_cos = v.local_rope ? rope_cos_local->ptr<float>() : w_.rope_cos;
    L.rope_sin = v.local_rope ? rope_sin_local->ptr<float>() : w_.rope_sin;
    L.rope = v.rope;
    L.window = v.window < w_.rope_len ? v.window : 0;  // a window as long as every position: no limit
    if (!moe) {
      L.gate = make_linear(p + "gate", v.gate, F, D);
      L.up = make_linear(p + "up", v.up, F, D);
      L.down = make_linear(p + "down", v.down, D, F);
    } else {
      const DecodeMoEViews& mv = v.moe;
      const int64_t E = c.n_experts, X = c.expert_ffn, S = c.shared_ffn;
      check_f32(p + "router", mv.router, {E, D});
      check_finite(p + "router", *mv.router);
      LF_CHECK(int64_t(mv.experts.size()) == 3 * E, kOp, ": ", p, "experts: got ", mv.experts.size() / 3,
               " experts, expected ", E);
      std::vector<cpu::DecodeLinear> ex;
      for (int64_t e = 0; e < E; ++e) {
        const std::string q = p + "experts." + std::to_string(e) + ".";
        ex.push_back(make_linear(q + "gate", mv.experts[size_t(3 * e)], X, D));
        ex.push_back(make_linear(q + "up", mv.experts[size_t(3 * e + 1)], X, D));
        ex.push_back(make_linear(q + "down", mv.experts[size_t(3 * e + 2)], D, X));
        L.moe.int4_in = L.moe.int4_in || ex[size_t(3 * e)].int4 || ex[size_t(3 * e + 1)].int4;
      }
      experts_.push_back(std::move(ex));
      L.moe.n_experts = E;
      L.moe.top_k = c.top_k;
      L.moe.norm_topk = c.norm_topk;
      L.moe.router = mv.router->ptr<float>();
      L.moe.experts = experts_.back().data();
      if (S) {
        check_f32(p + "shared_gate", mv.shared_gate, {D});
        check_finite(p + "shared_gate", *mv.shared_gate);
        L.moe.shared_ffn = S;
        L.moe.shared_gate = mv.shared_gate->ptr<float>();
        L.moe.sh_gate = make_linear(p + "shared.gate", mv.sh_gate, S, D);
        L.moe.sh_up = make_linear(p + "shared.up", mv.sh_up, S, D);
        L.moe.sh_down = make_linear(p + "shared.down", mv.sh_down, D, S);
        L.moe.int4_in = L.moe.int4_in || L.moe.sh_gate.int4 || L.moe.sh_up.int4;
      } else {
        LF_CHECK(mv.shared_gate == nullptr, kOp, ": ", p, "shared expert weights given but shared_ffn is 0");
      }
    }
    layers_.push_back(L);
  }
  w_.layers = layers_.data();
}

void DecodeModel::run(const std::vector<int64_t>& tokens, const int64_t* positions, const int32_t* seqs,
                      const cpu::DecodePaged& paged, const TensorView& logits, const std::vector<int64_t>& out_rows) {
  const int64_t M = int64_t(tokens.size());
  for (int64_t i = 0; i < M; ++i)
    LF_CHECK(tokens[size_t(i)] >= 0 && tokens[size_t(i)] < w_.vocab, kOp, ": token id ", tokens[size_t(i)],
             " at index ", i, " is outside [0, ", w_.vocab, ")");
  const int64_t nout = int64_t(out_rows.size());
  LF_CHECK(nout > 0, kOp, ": no output rows");
  std::vector<char> seen(static_cast<size_t>(M), 0);
  for (int64_t i = 0; i < nout; ++i) {
    const int64_t r = out_rows[size_t(i)];
    LF_CHECK(r >= 0 && r < M && !seen[size_t(r)], kOp, ": out_rows[", i, "] = ", r, " is not a distinct row in [0, ",
             M, ")");
    seen[size_t(r)] = 1;
  }
  check_f32("logits", &logits, {nout, w_.vocab});
  const cpu::DecodeScratch sp(w_, M, threads_);
  if (scratch_.size() < size_t(sp.floats)) scratch_.assign(size_t(sp.floats), 0.f);
  cpu::DecodeStep st{tokens.data(), positions, seqs, M, paged, logits.ptr<float>(), out_rows.data(), nout,
                     scratch_.data(), threads_};
  LF_CPU_DISPATCH(decode_forward, w_, st);
}

void DecodeModel::set_threads(int threads) {
  check_threads(kOp, threads);
  std::lock_guard<std::mutex> lock(mu_);
  threads_ = threads;
}

void DecodeModel::forward(const std::vector<int64_t>& tokens, const TensorView& logits, bool all_logits) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t M = int64_t(tokens.size());
  LF_CHECK(M > 0, kOp, ": forward needs at least one token");
  LF_CHECK(length_ + M <= w_.max_len, kOp, ": ", length_, " cached + ", M, " new tokens exceed max_len ",
           w_.max_len);
  std::vector<int64_t> pos(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) pos[size_t(i)] = length_ + i;
  std::vector<int64_t> rows;
  for (int64_t i = all_logits ? 0 : M - 1; i < M; ++i) rows.push_back(i);
  run(tokens, pos.data(), nullptr, cpu::DecodePaged{}, logits, rows);
  length_ += M;
}

void DecodeModel::forward_paged(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                                const std::vector<int64_t>& seqs, const TensorView& table, const TensorView& k_pools,
                                const TensorView& v_pools, const TensorView& logits,
                                const std::vector<int64_t>& out_rows) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t M = int64_t(tokens.size());
  LF_CHECK(M > 0, kOp, ": forward_paged needs at least one token");
  LF_CHECK(int64_t(positions.size()) == M && int64_t(seqs.size()) == M, kOp,
           ": tokens, positions and seqs must have the same length (", M, ", ", positions.size(), ", ", seqs.size(),
           ")");
  check_cpu(kOp, "block_table", table);
  check_dtype(kOp, "block_table", table, {DType::i32});
  check_ndim(kOp, "block_table", table, 2);
  check_contiguous(kOp, "block_table", table);
  check_cpu(kOp, "k_pools", k_pools);
  check_dtype(kOp, "k_pools", k_pools, {DType::f32});
  check_ndim(kOp, "k_pools", k_pools, 5);
  check_contiguous(kOp, "k_pools", k_pools);
  const int64_t NB = k_pools.shape[1], BS = k_pools.shape[2];
  check_shape(kOp, "k_pools", k_pools, {w_.n_layers, NB, BS, w_.n_kv_heads, w_.head_dim});
  check_f32("v_pools", &v_pools, {w_.n_layers, NB, BS, w_.n_kv_heads, w_.head_dim});
  const int64_t S = table.shape[0], TB = table.shape[1];
  const int32_t* tab = table.ptr<int32_t>();
  std::vector<int32_t> seq32(static_cast<size_t>(M));
  std::vector<int64_t> last(static_cast<size_t>(S), -1);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t s = seqs[size_t(i)], t = positions[size_t(i)];
    LF_CHECK(s >= 0 && s < S, kOp, ": seqs[", i, "] = ", s, " is outside the block table's ", S, " rows");
    LF_CHECK(t >= 0 && t < w_.rope_len && t < TB * BS, kOp, ": positions[", i, "] = ", t, " is outside [0, ",
             std::min(w_.rope_len, TB * BS), ")");
    LF_CHECK(t > last[size_t(s)], kOp, ": positions of sequence ", s, " must increase along the rows (row ", i, ")");
    last[size_t(s)] = t;
    seq32[size_t(i)] = int32_t(s);
    for (int64_t b = 0; b <= t / BS; ++b)  // every block the row reads or writes
      LF_CHECK(tab[s * TB + b] >= 0 && tab[s * TB + b] < NB, kOp, ": block_table[", s, ", ", b, "] = ",
               tab[s * TB + b], " is not a block of the pool (", NB, " blocks)");
  }
  cpu::DecodePaged p{k_pools.ptr<float>(), v_pools.ptr<float>(), tab, TB, NB, BS};
  run(tokens, positions.data(), seq32.data(), p, logits, out_rows);
}

void DecodeModel::load_cache(const TensorView& k, const TensorView& v) {
  std::lock_guard<std::mutex> lock(mu_);
  LF_CHECK(k.ndim == 4 && k.shape[2] >= 1 && k.shape[2] <= w_.max_len, kOp,
           ": load_cache: k must be (n_layers, n_kv_heads, n, head_dim) with 1 <= n <= max_len (", w_.max_len,
           "), got ", k.shape_str());
  const int64_t n = k.shape[2], L = w_.n_layers, KV = w_.n_kv_heads, hd = w_.head_dim;
  check_f32("load_cache k", &k, {L, KV, n, hd});
  check_f32("load_cache v", &v, {L, KV, n, hd});
  const int64_t per = KV * w_.max_len * hd;
  const float* ks = k.ptr<float>();
  const float* vs = v.ptr<float>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < KV; ++h) {
      const int64_t src = (l * KV + h) * n * hd, dst = h * w_.max_len * hd;
      std::copy(ks + src, ks + src + n * hd, cache_.data() + 2 * l * per + dst);
      std::copy(vs + src, vs + src + n * hd, cache_.data() + (2 * l + 1) * per + dst);
    }
  length_ = n;
}

void DecodeModel::truncate(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  LF_CHECK(n >= 0 && n <= length_, kOp, ": truncate(", n, ") outside [0, ", length_, "]");
  length_ = n;
}

}  // namespace lf
