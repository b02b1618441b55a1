"""RoPE scaling in GGUF files, as llama.cpp reads it (checked against its source of 2026-10).

    linear: {arch}.rope.scaling.type "linear", .factor
    llama3 (Llama 3.1+): no scaling keys; a tensor rope_freqs.weight (head_dim/2,) F32 by which
        llama.cpp divides each frequency (arch llama only: llama.cpp's qwen2/qwen3 ignore it).
        The scaling dict itself is kept in llmforge.rope_scaling (JSON) so that import gets
        the same parameters back; files from other converters are matched against Llama 3's
        standard parameters, then fitted, and the factors must be reproduced or import raises.
    yarn: .type "yarn", .factor, .original_context_length, .attn_factor (the attention factor
        over YaRN's default 0.1 ln(factor) + 1, written when it differs). llama.cpp of 2026-10
        does not read yarn_beta_fast / yarn_beta_slow (it uses 32 and 1), so other betas, and
        HF's truncate=False, are refused on export rather than written into a file that would
        run differently. Import honours beta keys written by other tools.
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..ops.rope import rope_frequencies, scaling_type, yarn_mscale

OURS = "llmforge.rope_scaling"
FREQS = "rope_freqs.weight"
LLAMA3_STANDARD = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def freq_factors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """llama.cpp's rope_freqs for a scaling that only changes frequencies: plain / scaled."""
    plain, _ = rope_frequencies(head_dim, theta, None)
    scaled, _ = rope_frequencies(head_dim, theta, scaling)
    return (plain / scaled).numpy().astype(np.float32)


def write_rope_scaling(w, cfg, arch: str) -> dict:
    """Write cfg.rope_scaling's keys to the GGUFWriter w; the extra tensors it needs, by name."""
    import gguf

    sc, kind = cfg.rope_scaling, scaling_type(cfg.rope_scaling)
    if kind == "default":
        return {}
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(sc["factor"]))
        return {}
    if kind == "llama3":
        if arch != "llama":
            raise ValueError(f"llama3 rope scaling is exported for arch llama only (llama.cpp's {arch} "
                             "has no rope_freqs tensor)")
        w.add_string(OURS, json.dumps(sc, sort_keys=True))
        return {FREQS: freq_factors(cfg.head_dim, cfg.rope_theta, sc)}
    if kind == "yarn":
        fast, slow = sc.get("beta_fast") or 32.0, sc.get("beta_slow") or 1.0
        if (fast, slow) != (32.0, 1.0) or not sc.get("truncate", True):
            raise ValueError(f"yarn with beta_fast={fast}, beta_slow={slow}, truncate={sc.get('truncate', True)}: "
                             "llama.cpp uses 32, 1 and truncation whatever the file says, so it would "
                             "run this model with other frequencies")
        factor = float(sc["factor"])
        _, att = rope_frequencies(cfg.head_dim, cfg.rope_theta, sc)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(int(sc["original_max_position_embeddings"]))
        if abs(att / yarn_mscale(factor) - 1) > 1e-7:
            w.add_rope_scaling_attn_factors(att / yarn_mscale(factor))
        return {}
    raise ValueError(f"rope scaling {kind!r} is not exported (linear, llama3, yarn)")


def _fit_llama3(ff: np.ndarray, plain: np.ndarray) -> dict | None:
    """Llama 3 parameters that may reproduce the factors ff (the caller checks): factor is the
    largest; lo = 1 (only ratios of orig, lo and hi matter). With two or more blended
    wavelengths the blend's line gives orig/(hi-lo) and lo/(hi-lo); with fewer, any boundaries
    between the kept, blended and divided wavelengths do."""
    factor = float(ff.max())
    if not factor > 1:
        return None
    wavelen = 2 * math.pi / plain
    kept, divided = ff <= 1 + 1e-6, ff >= factor * (1 - 1e-6)
    mid = ~kept & ~divided
    smooth = (1 / ff - 1 / factor) / (1 - 1 / factor)     # 1/ff = (1-s)/factor + s
    w_kept = wavelen[kept].max() if kept.any() else wavelen.min() / 2
    w_div = wavelen[divided].min() if divided.any() else wavelen.max() * 2
    if mid.sum() >= 2:
        a, b = np.polyfit(1 / wavelen[mid], smooth[mid], 1)  # s = a/wavelen - b
        if not (a > 0 and b > 0):
            return None
        orig, hi = float(a) / float(b), 1.0 + 1.0 / float(b)
    elif mid.sum() == 1:
        w1, s1 = float(wavelen[mid][0]), float(smooth[mid][0])
        orig = math.sqrt(w1 * w_div)
        hi = 1.0 + (orig / w1 - 1.0) / s1
    else:
        orig = math.sqrt(w_kept * w_div)
        hi = math.sqrt(orig / w_kept)
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": hi,
            "original_max_position_embeddings": orig}


def _llama3_from_factors(ff: np.ndarray, head_dim: int, theta: float, ours: str | None) -> dict:
    plain = rope_frequencies(head_dim, theta, None)[0].numpy()
    if ff.shape != plain.shape:
        raise ValueError(f"{FREQS} has shape {ff.shape}, expected ({head_dim // 2},)")
    candidates = []
    if ours:
        try:
            candidates.append(json.loads(ours))
        except ValueError:
            raise ValueError(f"metadata {OURS} is not JSON (corrupt file?)") from None
    candidates.append({"rope_type": "llama3", "factor": float(ff.max()), **LLAMA3_STANDARD})
    candidates.append(_fit_llama3(ff, plain))
    for c in candidates:
        if not isinstance(c, dict) or scaling_type(c) != "llama3":
            continue
        try:
            got = freq_factors(head_dim, theta, c)
        except (ValueError, KeyError):
            continue
        if np.allclose(got, ff, rtol=2e-6, atol=0):
            return c
    raise ValueError(f"{FREQS} holds frequency factors that no Llama 3 scaling of head_dim {head_dim} and base "
                     f"{theta} gives; importing without them would run RoPE wrongly")


def read_rope_scaling(field, number, arch: str, freqs: np.ndarray | None, head_dim: int, theta: float) -> dict | None:
    """The model's rope_scaling from a GGUF's keys (field / number read {arch}.*-free names)
    and its rope_freqs tensor (None when absent)."""
    kind = field(f"{arch}.rope.scaling.type", "none")
    if freqs is not None:
        if arch != "llama":
            raise ValueError(f"{FREQS} in an arch {arch} file is not supported (llama.cpp ignores it there)")
        if kind not in ("none", "linear") or number(f"{arch}.rope.scaling.factor", 1.0) not in (0, 1):
            raise ValueError(f"{FREQS} together with rope scaling {kind!r} is not supported")
        return _llama3_from_factors(np.asarray(freqs, np.float32).reshape(-1), head_dim, theta, field(OURS))
    if kind == "none":
        return None
    factor = number(f"{arch}.rope.scaling.factor", 0.0)
    if kind == "linear":
        if factor in (0, 1):    # llama.cpp's default when no scaling was meant
            return None
        if not factor > 0:
            raise ValueError(f"{arch}.rope.scaling.factor must be a positive number, got {factor!r}")
        return {"rope_type": "linear", "factor": f32_metadata(factor)}
    if kind == "yarn":
        if not factor > 0:
            raise ValueError(f"{arch}.rope.scaling.factor must be a positive number, got {factor!r}")
        factor = f32_metadata(factor)
        orig = number(f"{arch}.rope.scaling.original_context_length", number(f"{arch}.context_length"))
        log_mul = number(f"{arch}.rope.scaling.yarn_log_multiplier", 0.0)
        att = yarn_mscale(factor) / yarn_mscale(factor, log_mul) if log_mul else yarn_mscale(factor)
        att *= number(f"{arch}.rope.scaling.attn_factor", 1.0)
        out = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": int(orig),
               "attention_factor": att}
        for key in ("beta_fast", "beta_slow"):
            v = number(f"{arch}.rope.scaling.yarn_{key}", 0.0)
            if v:
                out[key] = f32_metadata(v)
        return out
    raise ValueError(f"rope scaling {kind!r} is not supported (linear, yarn, llama3 via {FREQS})")


def f32_metadata(v) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06): the number the exporter was most likely given."""
    return float(str(np.float32(v)))
