"""Gemma, Gemma 2 and Gemma 3 (text) in GGUF, as llama.cpp's archs gemma / gemma2 / gemma3: which
models those archs run as we do (gemma_arch raises ValueError naming the difference otherwise), their
extra keys, and reading the keys back. gguf_export.py calls these; the tensor names are in its _names.

What llama.cpp (the llama-cpp-python 0.3.36 bundle, 2026-10) does with these archs, from its source
(src/models/gemma*.cpp, llama-model.cpp) and, where marked *, checked against the bundled library's
logits (tests/export/test_llamacpp_gemma.py):
- RoPE is NEOX (halves rotated, Hugging Face's layout): attn_q / attn_k rows are written as they are.*
- Built in, not read: embeddings x sqrt(n_embd); GeGLU with the tanh GELU (on CPU through an F16
  table: x is rounded to F16 and the GELU to F16 again, ~1e-3 of logit error against exact GELU);
  RMSNorm weights used as they are -- convert_hf_to_gguf writes Gemma's 1 + w, the scale our model
  holds, so no conversion either way.
- gemma: Llama's four tensors per layer; queries scaled by 1/sqrt(head_dim).
- gemma2 / gemma3: sandwich norms -- post_attention_norm on the attention output, ffn_norm in front of
  the FFN, post_ffw_norm on its output; gemma3 adds attn_q_norm / attn_k_norm (before RoPE).
- The query scale is not read from the file ({arch}.attention.scale is ignored*): 1/sqrt(head_dim),
  except at the layer count of the 27B models (46 for gemma2, 62 for gemma3), where it is
  1/sqrt(n_embd / n_head) (integer division). Another attn_scale (query_pre_attn_scalar) is refused.
- gemma and gemma2 take the output projection from token_embd (an untied lm_head is refused); gemma3
  reads output.weight when the file has one.*
- gemma2 always soft-caps, attention scores and logits ({arch}.attn_logit_softcapping, 50 without the
  key; .final_logit_softcapping, 30); gemma3 caps logits only with final_logit_softcapping in the file*
  and never caps attention scores.
- Sliding-window layers: {arch}.attention.sliding_window (a query at position q sees the keys at
  q - window < p <= q, Hugging Face's convention*) and .sliding_window_pattern, written per layer
  (true = sliding)*; without it llama.cpp assumes period 2 (gemma2) or 6 (gemma3), the
  last layer of each period global. gemma2 always builds a sliding-window cache and aborts
  (GGML_ASSERT is_swa_any) without a sliding layer, so a Gemma 2 with none is refused; gemma3
  without sliding_window has none.
- RoPE: global layers use rope.freq_base and the linear scaling keys; gemma3's sliding layers
  rope.freq_base_swa* (10000 without the key*), unscaled; gemma2's sliding layers the global base
  and scaling*. Scaling other than linear is not exported for Gemma.
import_gguf reads a file the way llama.cpp runs it, defaults included (gemma2: window 4096,
period 2, caps 50 / 30; gemma3: period 6, sliding base 10000).
"""
from __future__ import annotations

from ..ops.rope import scaling_type
from .gguf_rope import f32_metadata
from .gguf_swa import FULL, SLIDING, period_layer_types

GEMMA_ARCHS = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}   # HF model_type -> arch
_LAYERS_27B = {"gemma2": 46, "gemma3": 62}    # llama.cpp tells the 27B models by their layer count
_PERIOD = {"gemma2": 2, "gemma3": 6}          # its layer pattern when a file gives none


def attn_scale_dim(arch: str, n_layers: int, dim: int, n_heads: int, head_dim: int) -> int:
    """d such that llama.cpp's gemma2 / gemma3 scale queries by 1/sqrt(d)."""
    return dim // n_heads if _LAYERS_27B[arch] == n_layers else head_dim


def gemma_arch(cfg) -> str:
    """gemma / gemma2 / gemma3 for a Gemma model; ValueError naming what llama.cpp would run differently."""
    arch = GEMMA_ARCHS[cfg.hf_model_type()]
    kind = scaling_type(cfg.rope_scaling)
    if kind not in ("default", "linear"):
        raise ValueError(f"rope scaling {kind!r} is not exported for Gemma (linear or none)")
    if arch != "gemma3" and not cfg.tie_embeddings:
        raise ValueError(f"llama.cpp's {arch} takes the output projection from token_embd: a model with an "
                         "untied lm_head is not exported")
    if arch == "gemma":
        return arch
    d = attn_scale_dim(arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.head_dim)
    scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5   # what our model uses
    if abs(scale * d ** 0.5 - 1) > 1e-6:
        raise ValueError(f"attn_scale {scale:.8g} (query_pre_attn_scalar {scale ** -2:.6g}): "
                         f"llama.cpp's {arch} scales this model's queries by 1/sqrt({d}) (1/sqrt(head_dim), or "
                         f"1/sqrt(dim // n_heads) at {_LAYERS_27B[arch]} layers) and reads no scale from the file")
    sliding = [cfg.is_sliding(i) for i in range(cfg.n_layers)]
    if arch == "gemma2":
        if cfg.attn_softcap is None or cfg.final_softcap is None:
            raise ValueError("llama.cpp's gemma2 always soft-caps attention scores and logits: a model without "
                             f"attn_softcap and final_softcap (got {cfg.attn_softcap}, {cfg.final_softcap}) is "
                             "not exported")
        if not any(sliding):
            raise ValueError("llama.cpp's gemma2 needs at least one sliding-window layer (layer_types): a "
                             "model without one is not exported")
        return arch
    if cfg.attn_softcap is not None:
        raise ValueError(f"llama.cpp's gemma3 does not soft-cap attention scores: attn_softcap "
                         f"{cfg.attn_softcap} is not exported")
    if any(sliding) and cfg.local_rope_theta is None and kind != "default":
        raise ValueError("llama.cpp's gemma3 runs its sliding layers without rope scaling: a model whose "
                         "sliding layers share the global layers' scaled RoPE (local_rope_theta None) is "
                         "not exported")
    return arch


def write_gemma_keys(w, cfg, arch: str) -> None:
    """The arch's own keys (w: a gguf.GGUFWriter): soft-caps, the sliding window with the layers
    that use it, and gemma3's RoPE base of those layers."""
    if arch == "gemma":
        return
    if cfg.attn_softcap is not None:
        w.add_float32(f"{arch}.attn_logit_softcapping", float(cfg.attn_softcap))
    if cfg.final_softcap is not None:
        w.add_float32(f"{arch}.final_logit_softcapping", float(cfg.final_softcap))
    sliding = [cfg.is_sliding(i) for i in range(cfg.n_layers)]
    if not any(sliding):   # gemma3 only (gemma_arch refuses a gemma2 without sliding layers)
        return
    w.add_uint32(f"{arch}.attention.sliding_window", int(cfg.sliding_window))
    w.add_array(f"{arch}.attention.sliding_window_pattern", sliding)
    if arch == "gemma3":
        theta = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
        w.add_float32(f"{arch}.rope.freq_base_swa", float(theta))


def read_gemma_config(arch: str, base: dict, field, number) -> dict:
    """The ModelConfig fields of a gemma / gemma2 / gemma3 file beyond base (its Llama fields, read
    already): what llama.cpp would run, defaults included. field / number read a key (with a default)."""
    g = dict(hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True)
    if arch != "gemma3":
        g["tie_embeddings"] = True   # an output.weight in the file is then a tensor the model lacks
    if arch == "gemma":
        return g
    n = base["n_layers"]
    d = attn_scale_dim(arch, n, base["dim"], base["n_heads"], base["head_dim"])
    g.update(sandwich_norm=True, attn_scale=d ** -0.5)
    if arch == "gemma2":
        g.update(attn_softcap=f32_metadata(number(f"{arch}.attn_logit_softcapping", 50.0)),
                 final_softcap=f32_metadata(number(f"{arch}.final_logit_softcapping", 30.0)))
        local = number(f"{arch}.rope.freq_base_swa", base["rope_theta"])
        if f32_metadata(local) != base["rope_theta"]:
            raise ValueError(f"{arch}.rope.freq_base_swa {local} differs from rope.freq_base {base['rope_theta']}: "
                             "a Gemma 2 with its own RoPE base on the sliding layers is not supported")
    else:
        cap = number(f"{arch}.final_logit_softcapping", 0.0)
        g.update(qk_norm=True, final_softcap=f32_metadata(cap) if cap else None)
    window = int(number(f"{arch}.attention.sliding_window", 4096 if arch == "gemma2" else 0))
    if window <= 0:
        if arch == "gemma2":
            raise ValueError(f"{arch}.attention.sliding_window must be positive, got {window}")
        return g
    pattern = field(f"{arch}.attention.sliding_window_pattern", _PERIOD[arch])
    if isinstance(pattern, list):
        if len(pattern) < n or not all(isinstance(s, (bool, int)) for s in pattern):
            raise ValueError(f"{arch}.attention.sliding_window_pattern must give each of the {n} layers, "
                             f"got {str(pattern)[:60]}")
        types_ = [SLIDING if s else FULL for s in pattern[:n]]
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        types_ = period_layer_types(pattern, n)
    else:
        raise ValueError(f"{arch}.attention.sliding_window_pattern is {pattern!r}, expected a period or a list")
    if SLIDING in types_:
        g.update(sliding_window=window, layer_types=types_)
        if arch == "gemma3":
            g["local_rope_theta"] = f32_metadata(number(f"{arch}.rope.freq_base_swa", 10000.0))
    elif arch == "gemma2":
        raise ValueError(f"{arch}.attention.sliding_window_pattern has no sliding layer (llama.cpp aborts)")
    return g
