"""Fused attention input: q, k, v projections as one GEMM, RoPE on q and k, heads moved next to batch.

    from llmforge.ops import qkv_rope
    w = torch.cat([q_proj.weight, k_proj.weight, v_proj.weight])        # ((H + 2 Hkv) * hd, dim)
    q, k, v = qkv_rope(x, w, None, cos, sin, None, n_heads=H, n_kv_heads=Hkv)
    # x: (B, T, dim) -> q: (B, H, T, hd), k, v: (B, Hkv, T, hd), contiguous; q and k rotated

Same maths as q = apply_rope(x @ Wq^T + bq) etc. followed by .transpose(1, 2).contiguous(),
in fewer passes: one GEMM against the concatenated weight (and, backward, one GEMM for the
input gradient instead of three plus two additions, one for the weight gradient); the RoPE
kernel (csrc/cpu/rope.cpp, strided) reads the heads straight out of the fused projection
and writes them heads-first, and in the backward writes the inverse rotation of dq, dk straight
into the fused projection's gradient. cos, sin: (positions, hd / 2) tables in x's table dtype
(float32; float64 for float64 x); positions: optional int64 (B, T) or (T,) table rows.

CPU only, float32 / bfloat16 / float64 (the model uses its unfused path elsewhere).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._native import on_input_device, register_fake, require
from .gemm import mm
from .rope import rope_strided_


def _heads_last_dense(g: Tensor) -> Tensor:
    return g if g.stride(-1) == 1 else g.contiguous()


def _check(x: Tensor, w: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, positions: Tensor | None,
           n_heads: int, n_kv_heads: int) -> None:
    require(isinstance(x, Tensor) and x.dim() == 3 and x.is_contiguous(),
            f"qkv_rope: x must be a contiguous (batch, seq, dim) tensor, got {getattr(x, 'shape', None)}")
    require(x.device.type in ("cpu", "meta") and x.dtype in (torch.float32, torch.bfloat16, torch.float64),
            f"qkv_rope: runs on CPU float32/bfloat16/float64 tensors, got {x.dtype} on {x.device}")
    require(n_heads > 0 and n_kv_heads > 0, "qkv_rope: n_heads and n_kv_heads must be positive")
    n = n_heads + 2 * n_kv_heads
    require(w.dim() == 2 and w.shape[1] == x.shape[-1] and w.shape[0] % n == 0 and (w.shape[0] // n) % 2 == 0,
            f"qkv_rope: w must be ((n_heads + 2 * n_kv_heads) * head_dim, dim) with an even head_dim, "
            f"got {tuple(w.shape)} for x {tuple(x.shape)}, {n_heads} heads, {n_kv_heads} kv heads")
    require(w.dtype == x.dtype and w.device == x.device and (bias is None or bias.shape == (w.shape[0],)),
            "qkv_rope: w (and bias, of shape (w.shape[0],)) must have x's dtype and device")
    require(bias is None or bias.dtype == x.dtype, "qkv_rope: bias must have x's dtype")
    hd = w.shape[0] // n
    td = torch.float64 if x.dtype == torch.float64 else torch.float32
    require(cos.dtype == td and sin.dtype == td and cos.shape == sin.shape and cos.dim() == 2 and cos.shape[1] == hd // 2
            and cos.is_contiguous() and sin.is_contiguous(),
            f"qkv_rope: cos and sin must be contiguous {td} tables of shape (positions, {hd // 2})")
    if positions is None:
        require(x.shape[1] <= cos.shape[0], f"qkv_rope: seq length {x.shape[1]} exceeds the table's {cos.shape[0]} rows")
    else:
        require(positions.dtype == torch.int64 and positions.is_contiguous()
                and positions.shape in ((x.shape[0], x.shape[1]), (x.shape[1],)),
                f"qkv_rope: positions must be contiguous int64 of shape (batch, seq) or (seq,), got "
                f"{positions.dtype} {tuple(positions.shape)}")


def _dims(x: Tensor, w: Tensor, n_heads: int, n_kv_heads: int):
    B, T, D = x.shape
    return B, T, D, n_heads, n_kv_heads, w.shape[0] // (n_heads + 2 * n_kv_heads)


@torch.library.custom_op("llmforge::qkv_rope_fwd", mutates_args=())
@on_input_device
def qkv_rope_fwd(x: Tensor, w: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, positions: Tensor | None,
                 n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    _check(x, w, bias, cos, sin, positions, n_heads, n_kv_heads)
    B, T, D, H, Hkv, hd = _dims(x, w, n_heads, n_kv_heads)
    x2 = x.view(B * T, D)
    y = torch.addmm(bias, x2, w.t()) if bias is not None else mm(x2, w.t())   # (B*T, (H+2Hkv)*hd)
    y4 = y.view(B, T, H + 2 * Hkv, hd)
    q = x.new_empty(B, H, T, hd)
    k = x.new_empty(B, Hkv, T, hd)
    rope_strided_(y4[:, :, :H], cos, sin, positions, q.transpose(1, 2))
    rope_strided_(y4[:, :, H:H + Hkv], cos, sin, positions, k.transpose(1, 2))
    v = y4[:, :, H + Hkv:].transpose(1, 2).contiguous()
    return q, k, v


@register_fake(qkv_rope_fwd)
def _(x, w, bias, cos, sin, positions, n_heads, n_kv_heads):
    _check(x, w, bias, cos, sin, positions, n_heads, n_kv_heads)
    B, T, D, H, Hkv, hd = _dims(x, w, n_heads, n_kv_heads)
    return x.new_empty(B, H, T, hd), x.new_empty(B, Hkv, T, hd), x.new_empty(B, Hkv, T, hd)


def _check_grads(dq, dk, dv, x, w, n_heads, n_kv_heads):
    B, T, D, H, Hkv, hd = _dims(x, w, n_heads, n_kv_heads)
    for name, g, h in (("dq", dq, H), ("dk", dk, Hkv), ("dv", dv, Hkv)):
        require(g.shape == (B, h, T, hd), f"qkv_rope backward: {name} must have shape {(B, h, T, hd)}, got "
                                          f"{tuple(g.shape)}")
        require(g.dtype == x.dtype, f"qkv_rope backward: {name} must be {x.dtype}, got {g.dtype}")


@torch.library.custom_op("llmforge::qkv_rope_bwd", mutates_args=())
@on_input_device
def qkv_rope_bwd(dq: Tensor, dk: Tensor, dv: Tensor, x: Tensor, w: Tensor, cos: Tensor, sin: Tensor,
                 positions: Tensor | None, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db): db (the gradient of a bias) is the summed projection gradient."""
    _check(x, w, None, cos, sin, positions, n_heads, n_kv_heads)
    _check_grads(dq, dk, dv, x, w, n_heads, n_kv_heads)
    B, T, D, H, Hkv, hd = _dims(x, w, n_heads, n_kv_heads)
    dy = x.new_empty(B * T, (H + 2 * Hkv) * hd)
    dy4 = dy.view(B, T, H + 2 * Hkv, hd)
    for g, lo, hi in ((dq, 0, H), (dk, H, H + Hkv)):
        rope_strided_(_heads_last_dense(g.transpose(1, 2)), cos, sin, positions, dy4[:, :, lo:hi], inverse=True)
    dy4[:, :, H + Hkv:].copy_(dv.transpose(1, 2))
    x2 = x.view(B * T, D)
    return mm(dy, w).view(B, T, D), mm(dy.t(), x2), dy.sum(0)


@register_fake(qkv_rope_bwd)
def _(dq, dk, dv, x, w, cos, sin, positions, n_heads, n_kv_heads):
    _check(x, w, None, cos, sin, positions, n_heads, n_kv_heads)
    _check_grads(dq, dk, dv, x, w, n_heads, n_kv_heads)
    return torch.empty_like(x), torch.empty_like(w), w.new_empty(w.shape[0])


def _setup(ctx, inputs, output):
    x, w, bias, cos, sin, positions, n_heads, n_kv_heads = inputs
    ctx.save_for_backward(x, w, cos, sin, positions)
    ctx.heads = (n_heads, n_kv_heads)


def _backward(ctx, dq, dk, dv):
    x, w, cos, sin, positions = ctx.saved_tensors
    B, T, D, H, Hkv, hd = _dims(x, w, *ctx.heads)
    # an output nobody used has no gradient
    dq = x.new_zeros(B, H, T, hd) if dq is None else dq
    dk = x.new_zeros(B, Hkv, T, hd) if dk is None else dk
    dv = x.new_zeros(B, Hkv, T, hd) if dv is None else dv
    dx, dw, db = qkv_rope_bwd(dq, dk, dv, x, w, cos, sin, positions, *ctx.heads)
    need = ctx.needs_input_grad
    return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None, None, None, None


qkv_rope_fwd.register_autograd(_backward, setup_context=_setup)


def qkv_rope(x: Tensor, w: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, positions: Tensor | None,
             n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v) heads-first from x (B, T, dim) and the concatenated projection weight; see the
    module docstring. Differentiable in x, w and bias."""
    require(isinstance(x, Tensor) and isinstance(w, Tensor) and isinstance(cos, Tensor) and isinstance(sin, Tensor),
            "qkv_rope: x, w, cos and sin must be tensors")
    if positions is not None:
        positions = positions.to(torch.int64).contiguous()
    return qkv_rope_fwd(x, w, bias, cos.contiguous(), sin.contiguous(), positions, n_heads, n_kv_heads)


def qkv_rope_reference(x, wq, wk, wv, bq, bk, bv, cos, sin, positions, n_heads, n_kv_heads):
    """Unfused float64 composition: three projections, apply_rope_reference, transposes."""
    from .rope import apply_rope_reference
    B, T, _ = x.shape
    xf = x.double()

    def proj(w, b, h):
        y = xf @ w.double().t() + (0 if b is None else b.double())
        return y.view(B, T, h, -1)

    q = apply_rope_reference(proj(wq, bq, n_heads), cos, sin, positions)
    k = apply_rope_reference(proj(wk, bk, n_kv_heads), cos, sin, positions)
    v = proj(wv, bv, n_kv_heads)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
