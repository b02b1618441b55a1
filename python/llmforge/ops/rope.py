"""Rotary position embedding (RoPE): cos/sin tables (linear, Llama 3 or YaRN scaling), and a fused apply.

    from llmforge.ops import rope_cos_sin, apply_rope
    cos, sin = rope_cos_sin(4096, head_dim=128, base=10000.0)          # (4096, 64) float32 each
    cos, sin = rope_cos_sin(4096, 128, scaling={"type": "linear", "factor": 4.0})
    cos, sin = rope_cos_sin(4096, 128, scaling={"type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 1024})
    q = apply_rope(q, cos, sin)                         # q: (batch, seq, heads, head_dim)
    q = apply_rope(q, cos, sin, positions=pos)          # pos: (seq,) or (batch, seq) int rows of the table
    q = apply_rope(q, cos, sin, style="norm")           # adjacent pairs (llama.cpp LLAMA_ROPE_TYPE_NORM)

Layout: x is (batch, seq, heads, head_dim), contiguous — the layout of a projection's
output before heads are moved next to batch. The tables hold one entry per frequency,
shape (positions, head_dim / 2); without ``positions`` token s uses row s.

Styles: "neox" rotates (x[i], x[i + d/2]) — Hugging Face Llama's rotate_half;
"norm" rotates (x[2i], x[2i+1]) — the original RoPE / GPT-J / llama.cpp NORM. Both
rotate the pair by angle pos * inv_freq[i]: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).

Kernels: csrc/cpu/rope.cpp (CPU: float32, bfloat16 with float32 tables, float64 with
float64 tables) and kernels/rope.cu (CUDA: float32, float16, bfloat16 with float32 tables). The backward is the inverse rotation (the same kernel, angle negated);
gradients flow to x only — cos and sin are treated as constants.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, same_device, stream, threads

STYLES = ("neox", "norm")


# ---- tables -----------------------------------------------------------------------------
SCALINGS = ("default", "linear", "llama3", "yarn")


def scaling_type(scaling: dict | None) -> str:
    """The kind of a Hugging Face rope scaling dict ("rope_type", or the older "type"; None or no
    key: "default")."""
    return scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"


def yarn_mscale(factor: float, m: float = 1.0) -> float:
    """YaRN's attention scale for a context extended `factor` times: 0.1 m ln(factor) + 1 (1 when
    factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def _number(s: dict, key: str, default=None) -> float:
    v = s.get(key, default)
    require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
            f"rope scaling: {key} must be a positive number, got {v!r}")
    return float(v)


def _llama3_inv_freq(freq: Tensor, s: dict) -> Tensor:
    """Llama 3.1's scaling: wavelengths longer than orig / low_freq_factor are divided by factor,
    shorter than orig / high_freq_factor kept, and those between blended smoothly."""
    factor, lo, hi = _number(s, "factor"), _number(s, "low_freq_factor"), _number(s, "high_freq_factor")
    orig = _number(s, "original_max_position_embeddings")
    require(hi > lo, f"rope scaling: llama3 needs high_freq_factor > low_freq_factor, got {hi} and {lo}")
    wavelen = 2 * math.pi / freq
    smooth = (orig / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * freq / factor + smooth * freq
    out = torch.where(wavelen > orig / lo, freq / factor, freq)
    return torch.where((wavelen <= orig / lo) & (wavelen >= orig / hi), mid, out)


def _yarn_inv_freq(head_dim: int, base: float, s: dict) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv:2309.00071) frequencies and attention scale, in float64.

    Frequencies that rotate more than beta_fast times over the original context keep their
    value (extrapolation); fewer than beta_slow times are divided by factor (interpolation);
    a linear ramp over the dimension index blends the two in between.
    """
    factor = _number(s, "factor")
    require("original_max_position_embeddings" in s,
            "rope scaling: yarn needs 'original_max_position_embeddings'")
    orig = _number(s, "original_max_position_embeddings")
    # None or 0 mean the paper's defaults, as in Hugging Face's configs
    beta_fast = _number({"beta_fast": s.get("beta_fast") or 32.0}, "beta_fast")
    beta_slow = _number({"beta_slow": s.get("beta_slow") or 1.0}, "beta_slow")

    def dim_of(rotations: float) -> float:
        # the dimension index whose wavelength fits `rotations` times into the original context
        return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = dim_of(beta_fast), dim_of(beta_slow)
    if s.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if hi == lo:
        hi += 0.001
    idx = torch.arange(head_dim // 2, dtype=torch.float64)
    ramp = ((idx - lo) / (hi - lo)).clamp(0, 1)       # 0: keep (extrapolate), 1: interpolate
    freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    inv_freq = freq * (1 - ramp) + (freq / factor) * ramp

    att = s.get("attention_factor")
    if att is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        att = yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if (m and m_all) else yarn_mscale(factor)
    return inv_freq, _number({"attention_factor": att}, "attention_factor")


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: dict | None = None) -> tuple[Tensor, float]:
    """(inverse frequencies (head_dim // 2,) float64, attention factor) of RoPE with a Hugging
    Face style scaling dict ("rope_type" or "type"): None / default; linear {factor}; llama3
    {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}; yarn
    {factor, original_max_position_embeddings, beta_fast 32, beta_slow 1, optional
    attention_factor, mscale, mscale_all_dim, truncate}. cos and sin are multiplied by the
    attention factor (1 except for yarn: 0.1 ln factor + 1 by default). ValueError for other
    types and for missing or non-positive parameters."""
    require(isinstance(head_dim, int) and head_dim > 0 and head_dim % 2 == 0,
            f"rope: head_dim must be a positive even int, got {head_dim!r}")
    require(math.isfinite(base) and base > 1, f"rope: base must be finite and > 1, got {base}")
    freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if not scaling:
        return freq, 1.0
    require(isinstance(scaling, dict), f"rope scaling must be a dict, got {type(scaling).__name__}")
    kind = scaling_type(scaling)
    if kind == "default":
        return freq, 1.0
    if kind == "linear":
        return freq / _number(scaling, "factor"), 1.0
    if kind == "llama3":
        return _llama3_inv_freq(freq, scaling), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(head_dim, float(base), scaling)
    raise ValueError(f"rope scaling type {kind!r} is not supported ({', '.join(SCALINGS)})")


def rope_cos_sin(positions: int | Tensor, head_dim: int, base: float = 10000.0, scaling: dict | None = None,
                 dtype: torch.dtype = torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (len(positions), head_dim // 2), computed in float64 then cast.

    positions: an int n (rows 0..n-1) or a 1-D tensor of positions.
    scaling: see rope_frequencies ({"type": "linear", "factor": f} divides positions by f;
    llama3; yarn, which multiplies cos and sin by its attention factor).
    """
    if isinstance(positions, int):
        require(positions > 0, f"rope_cos_sin: the number of positions must be positive, got {positions}")
        pos = torch.arange(positions, dtype=torch.float64)
    else:
        require(isinstance(positions, Tensor) and positions.dim() == 1 and positions.numel() > 0,
                "rope_cos_sin: positions must be a positive int or a non-empty 1-D tensor")
        pos = positions.detach().to("cpu", torch.float64)
    inv_freq, att = rope_frequencies(head_dim, base, scaling)
    ang = pos[:, None] * inv_freq[None, :]
    return (ang.cos() * att).to(dtype=dtype, device=device), (ang.sin() * att).to(dtype=dtype, device=device)


# ---- apply ---------------------------------------------------------------------------------
def _check(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None, style: str) -> None:
    require(isinstance(x, Tensor) and isinstance(cos, Tensor) and isinstance(sin, Tensor),
            "rope: x, cos and sin must be tensors")
    require(x.dim() == 4, f"rope: x must be (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")
    require(x.shape[-1] > 0 and x.shape[-1] % 2 == 0, f"rope: head_dim must be even and positive, got {x.shape[-1]}")
    require(x.is_contiguous(), "rope: x must be contiguous; call .contiguous() first")
    require(style in STYLES, f"rope: style must be one of {STYLES}, got {style!r}")
    same_device(x, cos=cos, sin=sin, positions=positions)
    half = x.shape[-1] // 2
    for name, t in (("cos", cos), ("sin", sin)):
        require(t.dim() == 2 and t.shape[1] == half,
                f"rope: {name} must have shape (positions, head_dim / 2 = {half}), got {tuple(t.shape)}")
    require(cos.shape == sin.shape, f"rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ in shape")
    if positions is None:
        require(x.shape[1] <= cos.shape[0],
                f"rope: seq length {x.shape[1]} exceeds the table's {cos.shape[0]} positions")
    else:
        B, S = x.shape[0], x.shape[1]
        require(tuple(positions.shape) in ((S,), (B, S)),
                f"rope: positions must have shape ({S},) or ({B}, {S}), got {tuple(positions.shape)}")


@torch.library.custom_op("llmforge::rope", mutates_args=())
@on_input_device
def rope_op(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None, style: str, inverse: bool) -> Tensor:
    """Rotate x (batch, seq, heads, head_dim) by the table rows; inverse rotates backwards."""
    _check(x, cos, sin, positions, style)
    if positions is not None and x.device.type == "cuda":  # the CPU adapter checks host positions itself
        require(bool(((positions >= 0) & (positions < cos.shape[0])).all()),
                f"rope: positions must lie in the cos/sin table [0, {cos.shape[0]})")
    y = torch.empty_like(x)
    C.rope_apply(arg(x), arg(cos), arg(sin), arg(positions), y, style, bool(inverse), threads(), stream(x))
    return y


@register_fake(rope_op)
def _(x, cos, sin, positions, style, inverse):
    _check(x, cos, sin, positions, style)
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    _, cos, sin, positions, style, inverse = inputs
    ctx.save_for_backward(cos, sin, positions)
    ctx.style, ctx.inverse = style, inverse


def _backward(ctx, grad_y):
    cos, sin, positions = ctx.saved_tensors
    return rope_op(grad_y.contiguous(), cos, sin, positions, ctx.style, not ctx.inverse), None, None, None, None, None


rope_op.register_autograd(_backward, setup_context=_setup)


def _table_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None = None, style: str = "neox") -> Tensor:
    """Rotary embedding of x (batch, seq, heads, head_dim) (differentiable in x).

    cos, sin: (positions, head_dim / 2) from rope_cos_sin (cast to float32, or float64 for
    float64 x); positions: optional integer (seq,) or (batch, seq) table rows.
    """
    require(isinstance(cos, Tensor) and isinstance(sin, Tensor), "rope: cos and sin must be tensors")
    td = _table_dtype(x) if isinstance(x, Tensor) else torch.float32
    cos, sin = cos.to(td).contiguous(), sin.to(td).contiguous()
    if positions is not None:
        require(isinstance(positions, Tensor) and not positions.dtype.is_floating_point
                and not positions.dtype.is_complex and positions.dtype != torch.bool,
                "rope: positions must be an integer tensor")
        positions = positions.to(torch.int64).contiguous()
    return rope_op(x, cos, sin, positions, style, False)


def rope_strided_(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None, out: Tensor,
                  style: str = "neox", inverse: bool = False) -> Tensor:
    """Writes the rotation of x into out and returns out; no autograd (see ops.qkv_rope).

    CPU only. x and out are (batch, seq, heads, head_dim) views with a dense head_dim and any
    other strides, e.g. x a head slice of a fused projection's output and out the transpose of
    a (batch, heads, seq, head_dim) buffer, so the rotation also moves heads next to batch.
    out must not overlap x. Tables as apply_rope's (already in x's table dtype, contiguous).
    """
    require(x.device.type == "cpu", "rope_strided_: runs on CPU tensors")
    require(style in STYLES, f"rope: style must be one of {STYLES}, got {style!r}")
    C.rope_apply(arg(x), arg(cos), arg(sin), arg(positions), arg(out), style, bool(inverse), threads(), 0)
    return out


def apply_rope_reference(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None = None,
                         style: str = "neox") -> Tensor:
    """Pure-torch RoPE in float64, cast back to x's dtype."""
    B, S, H, D = x.shape
    xf, c, s = x.to(torch.float64), cos.to(torch.float64), sin.to(torch.float64)
    if positions is None:
        c, s = c[:S][None, :, None, :], s[:S][None, :, None, :]
    else:
        p = positions.long()
        p = p[None].expand(B, S) if p.dim() == 1 else p
        c, s = c[p][:, :, None, :], s[p][:, :, None, :]
    if style == "neox":
        x1, x2 = xf[..., : D // 2], xf[..., D // 2:]
        y = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    else:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        y = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    return y.to(x.dtype)
