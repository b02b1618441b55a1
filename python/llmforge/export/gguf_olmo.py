"""OLMo 2 and OLMo 3 in GGUF, as llama.cpp's arch olmo2 (it has no arch of its own for OLMo 3: olmo2
turns sliding-window layers on when the file has a window): which models that arch runs as we do
(olmo_arch raises ValueError naming the difference otherwise), its extra keys, and reading them back.
gguf_export.py calls these; the tensor names are in its _names.

What llama.cpp's olmo2 does (llama-cpp-python 0.3.36 bundle, 2026-10), from its source
(src/models/olmo2.cpp, llama-model.cpp, llama-hparams.cpp, llama-model-loader.cpp) and, where marked
*, checked against the bundled library's logits (tests/export/test_llamacpp_olmo.py):
- RoPE is NEOX (halves rotated, Hugging Face's layout): attn_q / attn_k rows are written as they are.*
- No norm in front of attention or the FFN (no attn_norm / ffn_norm tensors); post_attention_norm on
  the attention output and post_ffw_norm on the FFN output, each added to the residual stream;
  attn_q_norm / attn_k_norm are RMSNorms over the whole q / k projection (n_embd and
  n_head_kv * n_embd / n_head wide), before RoPE.* Queries are scaled by 1/sqrt(head_dim).
- Shapes follow n_embd / n_head: attn_q and attn_output are n_embd x n_embd, so a head_dim other than
  dim // n_heads does not load* (refused).
- output.weight is required (created without the not-required flag; a file without it does not
  load*): tied embeddings are refused.
- Sliding-window layers: {arch}.attention.sliding_window > 0 turns them on (a query at q sees the keys
  at q - window < p <= q, Hugging Face's convention*). Which layers slide: .attention.sliding_window_pattern,
  a period p (layer i slides when i % p < p - 1; p = 0: every layer*) or one bool per layer (true =
  sliding; what convert_hf_to_gguf writes); period 4 without the key*. The bundled library reads both
  forms*, but the olmo2.cpp of the stored llama.cpp source reads the key with the scalar
  get_key_or_arr, which passes over an array (period 4 then), so export writes the period when the
  layers have one and the per-layer array only otherwise.
- RoPE of the sliding layers: the base of the full layers (rope.freq_base; the graph does not read
  rope.freq_base_swa*), unscaled (freq_scale 1, no YaRN extrapolation or attention factor); the full
  layers take the rope scaling keys (linear, YaRN; llama3's rope_freqs tensor is not read by olmo2).
  So a sliding-layer base other than the global one is refused, and so is a scaled model whose
  sliding layers share the scaled RoPE (local_rope_theta None). rope.freq_base_swa is written (equal
  to freq_base) when local_rope_theta is set, so that import gives the same config back.
import_gguf reads a file the way llama.cpp runs it: period 4 without the pattern key, sliding layers
unscaled at the global base (a file whose freq_base_swa says otherwise raises).
"""
from __future__ import annotations

from ..ops.rope import scaling_type
from .gguf_rope import f32_metadata
from .gguf_swa import FULL, SLIDING, period_layer_types, sliding_period

OLMO_ARCHS = {"olmo2": "olmo2", "olmo3": "olmo2"}   # HF model_type -> arch
OLMO_ARCH = "olmo2"
_PERIOD = 4                                        # llama.cpp's olmo2 pattern when a file gives none


def olmo_arch(cfg) -> str:
    """olmo2 for an OLMo 2 / 3 model; ValueError naming what llama.cpp would run differently."""
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        raise ValueError(f"llama.cpp's olmo2 sizes heads as dim // n_heads ({cfg.dim // cfg.n_heads}): head_dim "
                         f"{cfg.head_dim} is not exported")
    if cfg.tie_embeddings:
        raise ValueError("llama.cpp's olmo2 needs an output.weight: tied embeddings are not exported")
    if not any(cfg.is_sliding(i) for i in range(cfg.n_layers)):
        return OLMO_ARCH
    if cfg.local_rope_theta is not None and cfg.local_rope_theta != cfg.rope_theta:
        raise ValueError(f"llama.cpp's olmo2 runs the sliding layers at the global RoPE base: local_rope_theta "
                         f"{cfg.local_rope_theta} != rope_theta {cfg.rope_theta} is not exported")
    if cfg.local_rope_theta is None and scaling_type(cfg.rope_scaling) != "default":
        raise ValueError("llama.cpp's olmo2 runs its sliding layers without rope scaling: a model whose "
                         "sliding layers share the full layers' scaled RoPE (local_rope_theta None) is not "
                         "exported")
    return OLMO_ARCH


def write_olmo_keys(w, cfg) -> None:
    """The sliding window and the layers that use it, as a period where they have one, else per layer
    (w: a gguf.GGUFWriter); the sliding layers' RoPE base when the model names one (it is the global
    one: olmo_arch checked)."""
    sliding = [cfg.is_sliding(i) for i in range(cfg.n_layers)]
    if not any(sliding):
        return
    w.add_uint32(f"{OLMO_ARCH}.attention.sliding_window", int(cfg.sliding_window))
    period = sliding_period(cfg.layer_types)
    if period is None:
        w.add_array(f"{OLMO_ARCH}.attention.sliding_window_pattern", sliding)
    else:
        w.add_uint32(f"{OLMO_ARCH}.attention.sliding_window_pattern", period)
    if cfg.local_rope_theta is not None:
        w.add_float32(f"{OLMO_ARCH}.rope.freq_base_swa", float(cfg.local_rope_theta))


def read_olmo_config(arch: str, base: dict, field, number) -> dict:
    """The ModelConfig fields of an olmo2 file beyond base (its Llama fields, read already): what
    llama.cpp would run, defaults included. field / number read a key (with a default)."""
    if base["tie_embeddings"]:
        raise ValueError(f"an {arch} file needs output.weight (llama.cpp's {arch} does not load one without it)")
    if base["head_dim"] * base["n_heads"] != base["dim"]:
        raise ValueError(f"{arch}.attention.key_length {base['head_dim']} is not embedding_length / head_count "
                         f"({base['dim']} / {base['n_heads']}), which llama.cpp's {arch} assumes")
    g = dict(pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_full=True)
    window = int(number(f"{arch}.attention.sliding_window", 0))
    if window <= 0:
        return g
    n = base["n_layers"]
    pattern = field(f"{arch}.attention.sliding_window_pattern", _PERIOD)
    if isinstance(pattern, list):
        if len(pattern) != n or not all(isinstance(s, (bool, int)) for s in pattern):
            raise ValueError(f"{arch}.attention.sliding_window_pattern must give each of the {n} layers, "
                             f"got {str(pattern)[:60]}")
        types_ = [SLIDING if s else FULL for s in pattern]
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
        types_ = period_layer_types(pattern, n)
    else:
        raise ValueError(f"{arch}.attention.sliding_window_pattern is {pattern!r}, expected a period or a list")
    if SLIDING not in types_:
        return g
    g.update(sliding_window=window, layer_types=types_)
    local = field(f"{arch}.rope.freq_base_swa")
    if local is not None:
        local = number(f"{arch}.rope.freq_base_swa")
        if f32_metadata(local) != base["rope_theta"]:
            raise ValueError(f"{arch}.rope.freq_base_swa {local} differs from rope.freq_base {base['rope_theta']}: "
                             f"llama.cpp's {arch} runs the sliding layers at rope.freq_base")
        g["local_rope_theta"] = base["rope_theta"]
    elif base["rope_scaling"] is not None:   # the sliding layers run unscaled
        g["local_rope_theta"] = base["rope_theta"]
    return g
