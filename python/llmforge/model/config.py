"""The model's configuration, and its mapping to Hugging Face's config.json."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

from ..config_check import check_config


HF_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen3_moe", "qwen2_moe", "phi3",
                  "gemma", "gemma2", "gemma3_text", "olmo2", "olmo3", "smollm3")
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")
ACTIVATIONS = ("silu", "gelu_tanh")     # SwiGLU; GeGLU with tanh-approximated GELU (Gemma)
LAYER_TYPES = ("full_attention", "sliding_attention")


def _hf_act(cfg: dict, mtype: str) -> str:
    """The FFN activation: hidden_activation (Gemma 2 / 3) or hidden_act. Gemma's legacy "gelu" means
    the tanh approximation (its reference implementation), as transformers reads it."""
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or ("gelu_pytorch_tanh" if mtype in GEMMA_TYPES
                                                                     else "silu")
    if act in ("gelu_pytorch_tanh", "gelu_tanh") or (act == "gelu" and mtype in GEMMA_TYPES):
        return "gelu_tanh"
    if act != "silu":
        raise ValueError(f"unsupported hidden_act {act!r}")
    return act


# Gemma3TextConfig's defaults, which Gemma 3's multimodal config.json files lean on: their text_config
# often lists only the fields that differ (transformers fills the rest from these).
GEMMA3_TEXT_DEFAULTS = dict(vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131_072,
                            rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=4096, tie_word_embeddings=True,
                            bos_token_id=2, eos_token_id=1, pad_token_id=0)


def gemma3_text_config(cfg: dict) -> dict:
    """The language model's config.json fields of a Gemma 3 multimodal config (model_type "gemma3":
    text_config, with Gemma3TextConfig's defaults for what it leaves out), as a gemma3_text config."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise ValueError("a gemma3 (multimodal) config.json needs a text_config dict")
    out = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}, "model_type": "gemma3_text"}
    for k in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        if k not in text and cfg.get(k) is not None:
            out[k] = cfg[k]
    return out


def _hf_gemma(cfg: dict, mtype: str) -> dict:
    """Gemma's fields: GeGLU, embeddings x sqrt(dim), norms stored as w for the scale 1 + w; Gemma 2
    and 3 add norms on the attention and FFN outputs, the query_pre_attn_scalar attention scale and
    sliding-window layers; Gemma 2 tanh soft-caps attention scores and logits; Gemma 3 has query /
    key norms and its own RoPE base for the sliding layers."""
    if mtype not in GEMMA_TYPES:
        return {}
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention (Gemma as an encoder) is not supported")
    g = dict(embed_scale=True, norm_plus_one=True, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    if mtype == "gemma":
        return g
    n = cfg["num_hidden_layers"]
    every = 2 if mtype == "gemma2" else cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6))
    types_ = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention"
                                        for i in range(n)]
    g.update(sandwich_norm=True, attn_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5,
             attn_softcap=cfg.get("attn_logit_softcapping", 50.0 if mtype == "gemma2" else None),
             final_softcap=cfg.get("final_logit_softcapping", 30.0 if mtype == "gemma2" else None),
             sliding_window=cfg.get("sliding_window", 4096), layer_types=list(types_))
    if mtype == "gemma3_text":
        g.update(qk_norm=True)
    return g


def _typed_rope(cfg: dict, theta: float, local_theta: float) -> tuple[float, dict | None, float]:
    """RoPE per layer type (Gemma 3, OLMo 3): (theta, scaling) of the full-attention layers and the
    sliding layers' theta, from transformers 5's per-layer-type rope_parameters or the older
    rope_theta / rope_scaling / rope_local_base_freq; theta / local_theta are the defaults."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and isinstance(rp.get("full_attention"), dict):
        full, local = rp["full_attention"], rp.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ValueError(f"rope scaling on the sliding layers is not supported: {local!r}")
        kind = full.get("rope_type", full.get("type", "default"))
        scaling = None if kind == "default" else {k: v for k, v in full.items() if k != "rope_theta"}
        return (float(full.get("rope_theta", theta)), scaling,
                float(local.get("rope_theta", cfg.get("rope_local_base_freq", local_theta))))
    if rp is not None:
        theta, scaling = _hf_rope(cfg)
    else:
        theta, scaling = float(cfg.get("rope_theta", theta)), cfg.get("rope_scaling")
    return theta, scaling, float(cfg.get("rope_local_base_freq", local_theta))


def _hf_smollm3(cfg: dict, mtype: str) -> dict:
    """SmolLM3's NoPE layers: no_rope_layers (1 = RoPE) or, without it, every no_rope_layer_interval-th
    layer without RoPE. Its sliding-window option is refused (no released model uses it)."""
    if mtype != "smollm3":
        return {}
    if cfg.get("use_sliding_window"):
        raise ValueError("SmolLM3 with use_sliding_window is not supported")
    n, every = cfg["num_hidden_layers"], cfg.get("no_rope_layer_interval", 4)
    rope = cfg.get("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n)]
    return dict(rope_layers=[int(r) for r in rope])


def _hf_olmo(cfg: dict, mtype: str) -> dict:
    """OLMo 2 / 3's fields: RMSNorm on the attention and FFN outputs only (no norm in front of them),
    query / key norms over the whole projection; OLMo 3 adds sliding-window layers (3 of every 4)."""
    if mtype not in ("olmo2", "olmo3"):
        return {}
    g = dict(pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_full=True)
    if mtype == "olmo3":
        n = cfg["num_hidden_layers"]
        g.update(sliding_window=cfg.get("sliding_window", 4096),
                 layer_types=list(cfg.get("layer_types") or ["sliding_attention" if (i + 1) % 4 else "full_attention"
                                                            for i in range(n)]))
    return g


def _hf_rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) of a config.json: the `rope_parameters` dict transformers 5
    writes (theta and scaling in one), or the older top-level rope_theta / rope_scaling."""
    rp = cfg.get("rope_parameters")
    # Phi-4-mini, StableLM: RoPE on part of each head (top level, in rope_parameters or in rope_scaling)
    for where in (cfg, rp, cfg.get("rope_scaling")):
        if isinstance(where, dict) and where.get("partial_rotary_factor", 1.0) not in (1, 1.0, None):
            raise ValueError(f"partial_rotary_factor {where['partial_rotary_factor']} (RoPE on part of each head) "
                             "is not supported")
    if rp is None:
        return float(cfg.get("rope_theta", 10000.0)), cfg.get("rope_scaling")
    if not isinstance(rp, dict) or any(isinstance(v, dict) for v in rp.values()):
        raise ValueError(f"rope_parameters must be one dict of numbers (per-layer-type RoPE is not supported), "
                         f"got {rp!r}")
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = rp.get("rope_type", rp.get("type", "default"))
    return theta, None if kind == "default" else {k: v for k, v in rp.items() if k != "rope_theta"}


def _hf_scaling(scaling: dict | None, cfg: dict) -> dict | None:
    """Hugging Face's implicit parts of a rope scaling dict made explicit: yarn without a factor
    takes max_position_embeddings / original_max_position_embeddings (DeepSeek-V3's way)."""
    if not isinstance(scaling, dict):
        return scaling
    scaling = {k: v for k, v in scaling.items() if k != "partial_rotary_factor"}   # 1 (_hf_rope checked it)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "yarn" and scaling.get("factor") is None and scaling.get("original_max_position_embeddings"):
        scaling["factor"] = cfg.get("max_position_embeddings", 2048) / scaling["original_max_position_embeddings"]
    return scaling


WINDOWED_EVERYWHERE = ("mistral", "mixtral", "phi3")   # one window on every layer, modelled as layer_types


def _hf_window(cfg: dict, mtype: str) -> int | None:
    """The window Mistral / Mixtral / Phi-3 apply on every layer (None: none, or not shorter than
    max_position_embeddings); they have no use_sliding_window switch: transformers uses any window given."""
    window, n = cfg.get("sliding_window"), cfg.get("max_position_embeddings", 2048)
    if mtype in WINDOWED_EVERYWHERE and cfg.get("use_sliding_window", True) and isinstance(window, int) \
            and not isinstance(window, bool) and 0 < window < n:
        return window
    return None


def _hf_max_len(cfg: dict, mtype: str) -> int:
    """max_position_embeddings; for Qwen-style configs capped at a sliding window that is in use
    (within the window, sliding-window attention is plain causal attention, so every length the
    model accepts gives Hugging Face's logits, and a longer one raises). Gemma 2 / 3, OLMo 3,
    Mistral, Mixtral and Phi-3 windows are modelled (ModelConfig.layer_types), not capped."""
    n = cfg.get("max_position_embeddings", 2048)
    if mtype in (*GEMMA_TYPES, "olmo3", *WINDOWED_EVERYWHERE):
        return n
    window = cfg.get("sliding_window")
    used = cfg.get("use_sliding_window", False)
    if isinstance(cfg.get("layer_types"), list):
        used = used or "sliding_attention" in cfg["layer_types"]
    if used and isinstance(window, int) and not isinstance(window, bool) and 0 < window < n:
        return window
    return n


def _hf_moe(cfg: dict, mtype: str) -> dict:
    """The MoE fields of a Mixtral / Qwen3-MoE / Qwen2-MoE config.json (none for the dense types)."""
    if mtype not in ("mixtral", "qwen3_moe", "qwen2_moe"):
        return {}
    n = cfg.get("num_local_experts", cfg.get("num_experts")) if mtype == "mixtral" else \
        cfg.get("num_experts", cfg.get("num_local_experts"))
    moe = dict(n_experts=n, moe_top_k=cfg.get("num_experts_per_tok", 2),
               moe_aux_coef=float(cfg.get("router_aux_loss_coef", 0.001)))
    if mtype in ("qwen3_moe", "qwen2_moe"):
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise ValueError(f"{mtype} with dense layers among the sparse ones (mlp_only_layers, "
                             "decoder_sparse_step != 1) is not supported")
        moe.update(ffn_dim=cfg["moe_intermediate_size"], moe_norm_topk=bool(cfg.get("norm_topk_prob", False)))
    if mtype == "qwen2_moe":
        moe.update(moe_shared_ffn_dim=cfg["shared_expert_intermediate_size"])
    return moe


@dataclass
class ModelConfig:
    """Decoder-only transformer, Llama layout.

    Sizes: vocab_size, dim (hidden), n_layers, n_heads, n_kv_heads (GQA; None = n_heads),
    head_dim (None = dim // n_heads), ffn_dim (SwiGLU inner size).
    Positions: max_seq_len, rope_theta, rope_scaling (HF-style dict or None).
    Details: norm_eps, tie_embeddings, attention_bias (Qwen2 uses q/k/v biases), qk_norm (Qwen3:
    an RMSNorm over head_dim on every query and key head, before RoPE).
    MoE: n_experts > 0 replaces every FFN with n_experts SwiGLU experts (ffn_dim each) and top-k
    routing on the router's softmax, the k weights renormalised to sum 1 unless moe_norm_topk is
    False; moe_aux_coef * load-balancing loss (Switch Transformer's, over all k choices and all
    layers, as Mixtral's) joins the training loss. moe_shared_ffn_dim > 0 adds Qwen2-MoE's shared
    expert (a SwiGLU MLP every token goes through, scaled by a sigmoid gate of its input).
    Hugging Face layouts: Mixtral, Qwen3-MoE, Qwen2-MoE (q/k/v biases and a shared expert).
    Gemma (model_type gemma, gemma2, gemma3_text): hidden_act "gelu_tanh" (GeGLU), embed_scale
    (embeddings x sqrt(dim), rounded to the activations' dtype first), norm_plus_one (checkpoints store
    every RMSNorm weight as w for the scale 1 + w; in memory the model holds the scale 1 + w itself, so
    everything that multiplies by a norm's weight -- AWQ / SmoothQuant folding, the native step, GGUF --
    needs no special case; hf.py adds and subtracts the 1), sandwich_norm (Gemma 2 / 3: RMSNorm on the
    attention output and on the FFN output too: post_attention_layernorm, pre_feedforward_layernorm,
    post_feedforward_layernorm as Hugging Face names them), attn_scale (query_pre_attn_scalar ** -0.5;
    None = head_dim ** -0.5), attn_softcap / final_softcap (cap * tanh(x / cap) on attention scores /
    logits), sliding_window with layer_types ("sliding_attention" / "full_attention" per layer) and
    local_rope_theta (Gemma 3: RoPE base of the sliding layers, no scaling). A sliding layer's query
    sees the sliding_window keys up to itself (Hugging Face's convention). Mistral / Mixtral / Phi-3
    windows load as every layer sliding (saved as Mistral / Mixtral); Qwen-style use_sliding_window
    configs load with max_seq_len capped at the window instead.
    SmolLM3 (model_type smollm3): rope_layers, one 1 / 0 per layer, 0 for the layers without RoPE
    (NoPE; every 4th in SmolLM3); None = RoPE everywhere.
    OLMo 2 / 3 (model_type olmo2, olmo3): pre_norm=False (no RMSNorm in front of attention and FFN)
    with sandwich_norm (their outputs normed: post_attention_layernorm, post_feedforward_layernorm),
    qk_norm with qk_norm_full (one RMSNorm over the whole query / key projection, not per head);
    OLMo 3 has sliding-window layers, local_rope_theta when they use another RoPE than the full ones.
    Token ids: bos_id, eos_id, pad_id (optional, recorded in config.json).
    """
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_dim: int = 688
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    n_experts: int = 0
    moe_top_k: int = 2
    moe_aux_coef: float = 0.01
    moe_norm_topk: bool = True
    moe_shared_ffn_dim: int = 0
    hidden_act: str = "silu"
    embed_scale: bool = False
    norm_plus_one: bool = False
    sandwich_norm: bool = False
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: list | None = None
    local_rope_theta: float | None = None
    pre_norm: bool = True
    qk_norm_full: bool = False
    rope_layers: list | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "max_seq_len"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0):
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        check_config(self, positive=("rope_theta", "norm_eps", "attn_scale", "attn_softcap", "final_softcap",
                                     "sliding_window", "local_rope_theta"), signed=("bos_id", "eos_id", "pad_id"))
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers or any(t not in LAYER_TYPES for t in self.layer_types):
                raise ValueError(f"layer_types must name {self.n_layers} layers, each one of {LAYER_TYPES}, "
                                 f"got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("sliding_attention layers need sliding_window")
        if self.rope_layers is not None and (len(self.rope_layers) != self.n_layers or
                                             any(r not in (0, 1) or isinstance(r, float) for r in self.rope_layers)):
            raise ValueError(f"rope_layers must give each of the {self.n_layers} layers 1 (RoPE) or 0 (none), "
                             f"got {self.rope_layers!r}")
        if self.qk_norm_full and not self.qk_norm:
            raise ValueError("qk_norm_full (one norm over the whole query / key projection) needs qk_norm")
        if not self.pre_norm and not self.sandwich_norm:
            raise ValueError("pre_norm=False needs sandwich_norm (a model with no norm at all is not supported)")
        if self.local_rope_theta is not None and "sliding_attention" not in (self.layer_types or ()):
            raise ValueError("local_rope_theta needs sliding_attention layers (it is their RoPE base)")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}; give head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} must divide n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")
        if self.n_experts and not 1 <= self.moe_top_k <= self.n_experts:
            raise ValueError("moe_top_k must be in [1, n_experts]")
        s = self.moe_shared_ffn_dim
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"moe_shared_ffn_dim must be an int >= 0, got {s!r}")
        if s and not self.n_experts:
            raise ValueError("moe_shared_ffn_dim (a shared expert) needs n_experts > 0")
        if self.rope_scaling:
            from ..ops.rope import rope_frequencies  # noqa: PLC0415 (ops loads the native library)

            if not isinstance(self.rope_scaling, dict):
                raise ValueError(f"rope_scaling must be a dict or None, got {self.rope_scaling!r}")
            # its type (ops.rope.SCALINGS) and parameters, checked now
            rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)

    def n_params(self, embeddings: bool = True) -> int:
        d, h, kv, hd, f = self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn_dim
        attn = d * h * hd * 2 + d * kv * hd * 2 + (h * hd + 2 * kv * hd if self.attention_bias else 0)
        ffn = 3 * d * f * max(1, self.n_experts) + (d * self.n_experts if self.n_experts else 0)
        ffn += 3 * d * self.moe_shared_ffn_dim + d if self.moe_shared_ffn_dim else 0
        norms = (2 if self.pre_norm else 0) + (2 if self.sandwich_norm else 0)
        qk = (h + kv) * hd if self.qk_norm_full else 2 * hd if self.qk_norm else 0
        per_layer = attn + ffn + norms * d + qk
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + d + (emb if embeddings else 0)

    # ---- Hugging Face config.json ---------------------------------------------------------
    def uses_rope(self, layer: int) -> bool:
        """Does layer rotate its queries and keys (SmolLM3's NoPE layers do not)?"""
        return self.rope_layers is None or bool(self.rope_layers[layer])

    def is_sliding(self, layer: int) -> bool:
        """Is layer a sliding-window layer (Gemma 2 / 3's local layers)?"""
        return self.layer_types is not None and self.layer_types[layer] == "sliding_attention"

    def _gemma_type(self) -> str | None:
        """gemma / gemma2 / gemma3_text when the config has Gemma's parts, None for the Llama family;
        ValueError for a mix no Hugging Face layout holds."""
        gemma = (self.hidden_act != "silu", self.embed_scale, self.norm_plus_one, self.sandwich_norm,
                 self.attn_scale is not None, self.attn_softcap is not None, self.final_softcap is not None,
                 self.local_rope_theta is not None)
        if not any(gemma):
            return None
        base = self.hidden_act == "gelu_tanh" and self.embed_scale and self.norm_plus_one
        if not base or self.n_experts or self.attention_bias:
            raise ValueError("a GeGLU / scaled-embedding / (1 + w)-norm model saves as Gemma, which has all three "
                             "(hidden_act='gelu_tanh', embed_scale, norm_plus_one) and no MoE or q/k/v biases")
        if not self.sandwich_norm:
            if any(gemma[4:]) or self.qk_norm or self.layer_types is not None:
                raise ValueError("Gemma (1) has no attention scale, soft-capping, sliding layers or query/key "
                                 "norms: those need sandwich_norm (Gemma 2 / 3)")
            return "gemma"
        if self.qk_norm:
            return "gemma3_text"
        if self.local_rope_theta is not None:
            raise ValueError("local_rope_theta (Gemma 3) needs qk_norm")
        return "gemma2"

    def _olmo_type(self) -> str | None:
        """olmo2 / olmo3 for a post-norm model with full-width query / key norms, None otherwise;
        ValueError for a mix no Hugging Face layout holds."""
        if self.pre_norm and not self.qk_norm_full:
            return None
        others = (self.hidden_act != "silu", self.embed_scale, self.norm_plus_one, self.attn_scale is not None,
                  self.attn_softcap is not None, self.final_softcap is not None, self.n_experts, self.attention_bias)
        if self.pre_norm or not (self.sandwich_norm and self.qk_norm_full) or any(others):
            raise ValueError("a model without pre-norms or with full-width query/key norms saves as OLMo 2 / 3, "
                             "which has both (pre_norm=False, sandwich_norm, qk_norm_full), SwiGLU and none of "
                             "Gemma's parts, MoE or q/k/v biases")
        if "sliding_attention" in (self.layer_types or ()):
            return "olmo3"
        if self.local_rope_theta is not None:
            raise ValueError("local_rope_theta needs sliding layers")
        return "olmo2"

    def hf_model_type(self) -> str:
        """The Hugging Face model_type this model saves as; ValueError where none holds it."""
        olmo = self._olmo_type()
        if olmo:
            return olmo
        gemma = self._gemma_type()
        if gemma:
            return gemma
        if self.rope_layers is not None and 0 in self.rope_layers:
            if self.n_experts or self.attention_bias or self.qk_norm or self.layer_types is not None:
                raise ValueError("layers without RoPE save as SmolLM3, which has no MoE, q/k/v biases, query/key "
                                 "norms or sliding windows")
            return "smollm3"
        if self.layer_types is not None and "sliding_attention" in self.layer_types:
            if "full_attention" in self.layer_types or self.attention_bias or self.qk_norm or \
                    self.moe_shared_ffn_dim or (self.n_experts and not self.moe_norm_topk):
                raise ValueError("sliding-window layers in a Llama-style model save as Mistral / Mixtral: every "
                                 "layer sliding, no q/k/v biases, query/key norms or shared expert")
            return "mixtral" if self.n_experts else "mistral"
        if self.n_experts:
            if self.attention_bias or self.moe_shared_ffn_dim:
                if not (self.attention_bias and self.moe_shared_ffn_dim) or self.qk_norm:
                    raise ValueError("MoE with q/k/v biases or a shared expert saves as Qwen2-MoE, which has "
                                     "both (and no query/key norms)")
                return "qwen2_moe"
            if not self.qk_norm and not self.moe_norm_topk:
                raise ValueError("Mixtral always renormalises the top-k weights: moe_norm_topk=False has "
                                 "no Mixtral layout (with qk_norm it saves as Qwen3-MoE)")
            return "qwen3_moe" if self.qk_norm else "mixtral"
        if self.qk_norm and self.attention_bias:
            raise ValueError("query/key norms together with q/k/v biases have no Hugging Face layout here")
        return "qwen3" if self.qk_norm else "qwen2" if self.attention_bias else "llama"

    def to_hf(self) -> dict:
        mtype = self.hf_model_type()
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "mistral": "MistralForCausalLM", "smollm3": "SmolLM3ForCausalLM",
                "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM",
                "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                "qwen2_moe": "Qwen2MoeForCausalLM"}[mtype]
        cfg = {
            "architectures": [arch], "model_type": mtype, "hidden_act": "silu",
            "vocab_size": self.vocab_size, "hidden_size": self.dim, "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len, "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_embeddings, "attention_bias": self.attention_bias,
            "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id,
            "torch_dtype": "float32", "use_cache": True,
        }
        if mtype in GEMMA_TYPES:
            self._gemma_hf(cfg, mtype)
        if mtype in ("olmo2", "olmo3"):
            self._olmo_hf(cfg, mtype)
        if mtype in ("mistral", "mixtral"):
            cfg["sliding_window"] = self.sliding_window if self.layer_types is not None else None
        if mtype == "smollm3":
            cfg.update(no_rope_layers=[int(r) for r in self.rope_layers], use_sliding_window=False,
                       sliding_window=None)
        if mtype == "mixtral":
            cfg.update(num_local_experts=self.n_experts, num_experts_per_tok=self.moe_top_k,
                       router_aux_loss_coef=self.moe_aux_coef, router_jitter_noise=0.0, output_router_logits=False)
        elif mtype in ("qwen3_moe", "qwen2_moe"):
            cfg.update(num_experts=self.n_experts, num_experts_per_tok=self.moe_top_k,
                       moe_intermediate_size=self.ffn_dim, norm_topk_prob=self.moe_norm_topk,
                       router_aux_loss_coef=self.moe_aux_coef, decoder_sparse_step=1, mlp_only_layers=[],
                       use_sliding_window=False, output_router_logits=False)
            if mtype == "qwen2_moe":
                cfg.update(shared_expert_intermediate_size=self.moe_shared_ffn_dim, qkv_bias=True)
        return cfg

    def _gemma_hf(self, cfg: dict, mtype: str) -> None:
        """config.json's Gemma fields, in place."""
        cfg.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
        del cfg["mlp_bias"]
        if mtype == "gemma":
            return
        qpas = (self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5) ** -2
        cfg.update(query_pre_attn_scalar=round(qpas) if abs(qpas - round(qpas)) < 1e-6 * qpas else qpas,
                   attn_logit_softcapping=self.attn_softcap, final_logit_softcapping=self.final_softcap,
                   sliding_window=self.sliding_window,
                   layer_types=list(self.layer_types or ["full_attention"] * self.n_layers))
        if mtype == "gemma3_text":
            full = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
            local = self.local_rope_theta if self.local_rope_theta is not None else self.rope_theta
            cfg.update(rope_parameters={"full_attention": full,
                                        "sliding_attention": {"rope_type": "default", "rope_theta": local}},
                       rope_local_base_freq=local)

    def _olmo_hf(self, cfg: dict, mtype: str) -> None:
        """config.json's OLMo fields, in place (no head_dim: OLMo's is dim // n_heads)."""
        if self.head_dim * self.n_heads != self.dim:
            raise ValueError(f"OLMo has head_dim = dim // n_heads ({self.dim // self.n_heads}), got {self.head_dim}")
        for k in ("head_dim", "mlp_bias"):
            del cfg[k]
        if mtype == "olmo3":
            local = self.local_rope_theta if self.local_rope_theta is not None else self.rope_theta
            cfg.update(sliding_window=self.sliding_window, layer_types=list(self.layer_types),
                       rope_parameters={"full_attention": {"rope_type": "default", **(self.rope_scaling or {}),
                                                           "rope_theta": self.rope_theta},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": local}})

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        mtype = cfg.get("model_type")
        if mtype not in HF_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {mtype!r} ({', '.join(HF_MODEL_TYPES)})")
        act = _hf_act(cfg, mtype)
        if cfg.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        if mtype in GEMMA_TYPES and cfg.get("attention_bias"):
            raise ValueError("Gemma with attention_bias=True is not supported")
        eos = cfg.get("eos_token_id")
        local_theta = None
        if mtype == "gemma3_text":
            theta, scaling, local_theta = _typed_rope(cfg, 1_000_000.0, 10_000.0)
        elif mtype == "olmo3":
            theta, scaling, local_theta = _typed_rope(cfg, 500_000.0, 500_000.0)
            if local_theta == theta and not scaling:
                local_theta = None     # one RoPE for every layer
        else:
            theta, scaling = _hf_rope(cfg)
        kw = dict(
            vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"], n_kv_heads=cfg.get("num_key_value_heads"),
            head_dim=cfg.get("head_dim"), ffn_dim=cfg["intermediate_size"],
            max_seq_len=_hf_max_len(cfg, mtype), rope_theta=theta,
            rope_scaling=_hf_scaling(scaling, cfg), norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("qkv_bias", True) if mtype == "qwen2_moe" else
                                cfg.get("attention_bias", mtype == "qwen2")), qk_norm=mtype in ("qwen3", "qwen3_moe"),
            bos_id=cfg.get("bos_token_id"), eos_id=eos[0] if isinstance(eos, list) else eos,
            pad_id=cfg.get("pad_token_id"), hidden_act=act,
        )
        extra = {**_hf_gemma(cfg, mtype), **_hf_olmo(cfg, mtype), **_hf_smollm3(cfg, mtype)}
        window = _hf_window(cfg, mtype)
        if window is not None:
            extra.update(sliding_window=window, layer_types=["sliding_attention"] * cfg["num_hidden_layers"])
        if local_theta is not None and "sliding_attention" in extra["layer_types"]:
            extra["local_rope_theta"] = local_theta
        return cls(**{**kw, **_hf_moe(cfg, mtype), **extra})

    def to_dict(self) -> dict:
        return asdict(self)
