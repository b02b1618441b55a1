"""Fused attention (FlashAttention-style, CPU): softmax(scale * q k^T + mask) v without the score matrix.

    from llmforge.ops import attention, attention_with_lse
    out = attention(q, k, v, causal=True)                  # q: (B, H, Sq, D); k, v: (B, Hkv, Sk, D)
    out, lse = attention_with_lse(q, k, v, causal=True, window=255)

Layout is (batch, heads, seq, head_dim), contiguous, as torch's scaled_dot_product_attention
takes it. Grouped-query attention: Hkv divides H and q head h reads kv head h // (H // Hkv).
Sq may differ from Sk: query i sits at position i + Sk - Sq (bottom-right aligned, as in
flash-attn), so a decode step (Sq = 1) sees every key. Masks:
    causal:     query i sees key j only if j <= i + Sk - Sq
    window=w:   query i sees key j only if j >= i + Sk - Sq - w   (left window; -1 = none)
A query row that sees no key returns zeros and lse = -inf. scale defaults to 1/sqrt(D).

Kernels: csrc/cpu/attention.cpp (float32 and bfloat16 computed in float32, log-sum-exp in
float32; float64 on a plain double path, for gradcheck). Tiled with an online softmax; the
backward (FlashAttention-2 order) is deterministic for a given thread count and also takes
a gradient at lse. NaN in q/k/v propagates to the affected rows.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._native import C, arg, require, same_device, threads


def _check(q: Tensor, k: Tensor, v: Tensor, window: int) -> None:
    """Checks shared by the kernels and the fake implementations."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require(isinstance(t, Tensor), f"attention: {name} must be a tensor")
        require(t.dim() == 4, f"attention: {name} must be (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        require(t.numel() > 0, f"attention: {name} must not be empty, got shape {tuple(t.shape)}")
        require(t.is_contiguous(), f"attention: {name} must be contiguous; call .contiguous() first")
    same_device(q, k=k, v=v)
    require(k.shape == v.shape, f"attention: k has shape {tuple(k.shape)} but v has {tuple(v.shape)}")
    require(k.shape[0] == q.shape[0] and k.shape[3] == q.shape[3],
            f"attention: k has shape {tuple(k.shape)}, expected batch {q.shape[0]} and head dim {q.shape[3]} as q")
    require(q.shape[1] % k.shape[1] == 0,
            f"attention: the number of kv heads ({k.shape[1]}) must divide the number of q heads ({q.shape[1]})")
    require(window >= -1, f"attention: window must be -1 (none) or >= 0, got {window}")
    if q.device.type == "cuda":
        raise ValueError("attention: only CPU kernels exist for now; got CUDA tensors")


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _scale(q: Tensor, scale: float | None) -> float:
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    require(math.isfinite(s) and s > 0, f"attention: scale must be finite and > 0, got {s}")
    return s


# ---- ops ------------------------------------------------------------------------------
@torch.library.custom_op("llmforge::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int) -> tuple[Tensor, Tensor]:
    """Returns (out, lse): out like q, lse (B, H, Sq) in float32 (float64 for float64 q)."""
    _check(q, k, v, window)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], dtype=_lse_dtype(q), device=q.device)
    C.attention_fwd(arg(q), arg(k), arg(v), out, lse, bool(causal), float(scale), int(window), threads())
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, causal, scale, window):
    _check(q, k, v, window)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


@torch.library.custom_op("llmforge::attention_bwd", mutates_args=())
def attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  grad_lse: Tensor | None, causal: bool, scale: float, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (grad_q, grad_k, grad_v); grad_lse (optional) is the gradient arriving at lse."""
    _check(q, k, v, window)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dlse = None if grad_lse is None else grad_lse.to(lse.dtype).contiguous()
    C.attention_bwd(grad_out.to(q.dtype).contiguous(), arg(q), arg(k), arg(v), arg(out), arg(lse), dlse,
                    dq, dk, dv, bool(causal), float(scale), int(window), threads())
    return dq, dk, dv


@attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, grad_lse, causal, scale, window):
    _check(q, k, v, window)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, causal, scale, window = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, scale, window)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_bwd(grad_out, q, k, v, out, lse, grad_lse, *ctx.args)
    return dq, dk, dv, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup)


# ---- public API ------------------------------------------------------------------------
def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                       window: int = -1) -> tuple[Tensor, Tensor]:
    """Fused attention returning (out, lse); both are differentiable. See the module docstring."""
    return attention_fwd(q, k, v, bool(causal), _scale(q, scale), int(window))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
              window: int = -1) -> Tensor:
    """Fused attention: (B, H, Sq, D) x (B, Hkv, Sk, D) -> (B, H, Sq, D). See the module docstring."""
    return attention_with_lse(q, k, v, causal, scale, window)[0]


def attention_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                        window: int = -1) -> tuple[Tensor, Tensor]:
    """Pure-torch attention in float64 that materialises the scores; returns (out, lse) in float64.

    Same masks and conventions as `attention` (rows that see no key: zeros and lse = -inf).
    """
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    s = _scale(q, scale)
    qf, kf, vf = (t.to(torch.float64) for t in (q, k, v))
    kf = kf.repeat_interleave(H // Hkv, dim=1)
    vf = vf.repeat_interleave(H // Hkv, dim=1)
    scores = s * qf @ kf.transpose(-1, -2)                       # (B, H, Sq, Sk)
    i = torch.arange(Sq).view(-1, 1) + (Sk - Sq)
    j = torch.arange(Sk).view(1, -1)
    allowed = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window >= 0:
        allowed &= j >= i - window
    scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                         # -inf on empty rows
    p = torch.exp(scores - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    return p @ vf, lse
