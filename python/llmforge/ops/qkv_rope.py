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

from ._native import require
from .gemm import mm
from .rope import rope_strided_


def _heads_last_dense(g: Tensor) -> Tensor:
    return g if g.stride(-1) == 1 else g.contiguous()


class _QKVRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, cos, sin, positions, n_heads, n_kv_heads):
        B, T, D = x.shape
        H, Hkv = n_heads, n_kv_heads
        hd = w.shape[0] // (H + 2 * Hkv)
        x2 = x.reshape(B * T, D)
        y = torch.addmm(bias, x2, w.t()) if bias is not None else mm(x2, w.t())   # (B*T, (H+2Hkv)*hd)
        y4 = y.view(B, T, H + 2 * Hkv, hd)
        q = x.new_empty(B, H, T, hd)
        k = x.new_empty(B, Hkv, T, hd)
        rope_strided_(y4[:, :, :H], cos, sin, positions, q.transpose(1, 2))
        rope_strided_(y4[:, :, H:H + Hkv], cos, sin, positions, k.transpose(1, 2))
        v = y4[:, :, H + Hkv:].transpose(1, 2).contiguous()
        ctx.save_for_backward(x2, w, cos, sin, positions)
        ctx.dims = (B, T, D, H, Hkv, hd)
        ctx.has_bias = bias is not None
        return q, k, v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        x2, w, cos, sin, positions = ctx.saved_tensors
        B, T, D, H, Hkv, hd = ctx.dims
        dy = x2.new_empty(B * T, (H + 2 * Hkv) * hd)
        dy4 = dy.view(B, T, H + 2 * Hkv, hd)
        for g, lo, hi in ((dq, 0, H), (dk, H, H + Hkv)):
            if g is None:
                dy4[:, :, lo:hi].zero_()
            else:
                rope_strided_(_heads_last_dense(g.transpose(1, 2)), cos, sin, positions, dy4[:, :, lo:hi],
                              inverse=True)
        if dv is None:
            dy4[:, :, H + Hkv:].zero_()
        else:
            dy4[:, :, H + Hkv:].copy_(dv.transpose(1, 2))
        dx = mm(dy, w).view(B, T, D) if ctx.needs_input_grad[0] else None
        dw = mm(dy.t(), x2) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None, None


def qkv_rope(x: Tensor, w: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, positions: Tensor | None,
             n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v) heads-first from x (B, T, dim) and the concatenated projection weight; see the
    module docstring. Differentiable in x, w and bias."""
    require(isinstance(x, Tensor) and x.dim() == 3 and x.is_contiguous(),
            f"qkv_rope: x must be a contiguous (batch, seq, dim) tensor, got {getattr(x, 'shape', None)}")
    require(x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float64),
            f"qkv_rope: runs on CPU float32/bfloat16/float64 tensors, got {x.dtype} on {x.device}")
    require(n_heads > 0 and n_kv_heads > 0, "qkv_rope: n_heads and n_kv_heads must be positive")
    n = n_heads + 2 * n_kv_heads
    require(w.dim() == 2 and w.shape[1] == x.shape[-1] and w.shape[0] % n == 0 and (w.shape[0] // n) % 2 == 0,
            f"qkv_rope: w must be ((n_heads + 2 * n_kv_heads) * head_dim, dim) with an even head_dim, "
            f"got {tuple(w.shape)} for x {tuple(x.shape)}, {n_heads} heads, {n_kv_heads} kv heads")
    require(w.dtype == x.dtype and w.device == x.device and (bias is None or bias.shape == (w.shape[0],)),
            "qkv_rope: w (and bias, of shape (w.shape[0],)) must have x's dtype and device")
    hd = w.shape[0] // n
    td = torch.float64 if x.dtype == torch.float64 else torch.float32
    require(cos.dtype == td and sin.dtype == td and cos.shape == sin.shape and cos.dim() == 2 and cos.shape[1] == hd // 2,
            f"qkv_rope: cos and sin must be {td} tables of shape (positions, {hd // 2})")
    if positions is not None:
        positions = positions.to(torch.int64).contiguous()
    else:
        require(x.shape[1] <= cos.shape[0], f"qkv_rope: seq length {x.shape[1]} exceeds the table's {cos.shape[0]} rows")
    return _QKVRope.apply(x, w, bias, cos.contiguous(), sin.contiguous(), positions, n_heads, n_kv_heads)


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
