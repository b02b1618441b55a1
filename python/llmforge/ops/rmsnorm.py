"""RMSNorm: y = x / sqrt(mean(x^2, -1) + eps) * weight, and the fused residual form.

    from llmforge.ops import rmsnorm, rmsnorm_residual
    y = rmsnorm(x, weight, eps=1e-6)                # x: (..., hidden)
    y, h = rmsnorm_residual(x, residual, weight)    # h = x + residual, y = rmsnorm(h)

Kernels: csrc/cpu/rmsnorm.cpp (CPU: float32, bfloat16, float64) and
kernels/rmsnorm.cu (CUDA: float32, float16, bfloat16). Statistics are kept in
float32 (float64 for float64 input); the backward is fused and deterministic.
x must be contiguous and weight must have x's dtype and device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, same_device, stream, threads


def _check(x: Tensor, weight: Tensor, residual: Tensor | None = None) -> int:
    """Checks shared by the kernels and the fake (meta) implementations; returns hidden."""
    require(isinstance(x, Tensor) and isinstance(weight, Tensor), "rmsnorm: x and weight must be tensors")
    require(x.dim() >= 1, f"rmsnorm: x must have at least 1 dimension, got shape {tuple(x.shape)}")
    require(x.shape[-1] > 0, f"rmsnorm: the hidden size (last dimension of x) must be positive, got {tuple(x.shape)}")
    require(x.is_contiguous(), "rmsnorm: x must be contiguous; call .contiguous() first")
    same_device(x, weight=weight, residual=residual)
    if residual is not None:
        require(residual.is_contiguous(), "rmsnorm: residual must be contiguous; call .contiguous() first")
        require(residual.shape == x.shape,
                f"rmsnorm: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}")
    return x.shape[-1]


def _check_bwd(grad_y: Tensor, h: Tensor, weight: Tensor, rstd: Tensor, grad_h: Tensor | None) -> None:
    """The backward's arguments must be what the forward saw and made (devices: on_input_device)."""
    _check(h, weight)
    for name, t in (("grad_y", grad_y), ("grad_h", grad_h)):
        require(t is None or (isinstance(t, Tensor) and t.shape == h.shape),
                f"rmsnorm_bwd: {name} has shape {tuple(getattr(t, 'shape', ()))} but h has {tuple(h.shape)}")
    require(isinstance(rstd, Tensor) and rstd.shape == h.shape[:-1],
            f"rmsnorm_bwd: rstd has shape {tuple(getattr(rstd, 'shape', ()))}, expected {tuple(h.shape[:-1])}")
    require(weight.shape == h.shape[-1:], f"rmsnorm_bwd: weight has shape {tuple(weight.shape)}, expected ({h.shape[-1]},)")


def _rstd_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _workspace(h2: Tensor) -> Tensor | None:
    if h2.device.type != "cuda":
        return None
    rows = C.rmsnorm_bwd_workspace_rows(h2.shape[0], h2.device.index or 0)
    return torch.empty(rows, h2.shape[1], dtype=torch.float32, device=h2.device)


# ---- forward ops -------------------------------------------------------------------
@torch.library.custom_op("llmforge::rmsnorm_fwd", mutates_args=())
@on_input_device
def rmsnorm_fwd(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Returns (y, rstd); rstd has shape x.shape[:-1]."""
    hidden = _check(x, weight)
    x2 = x.view(-1, hidden)
    y = torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], dtype=_rstd_dtype(x), device=x.device)
    C.rmsnorm_fwd(arg(x2), None, arg(weight), y, None, rstd, float(eps), threads(), stream(x))
    return y.view(x.shape), rstd.view(x.shape[:-1])


@register_fake(rmsnorm_fwd)
def _(x, weight, eps):
    _check(x, weight)
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.custom_op("llmforge::rmsnorm_residual_fwd", mutates_args=())
@on_input_device
def rmsnorm_residual_fwd(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, h, rstd) with h = x + residual and y = rmsnorm(h)."""
    hidden = _check(x, weight, residual)
    x2, r2 = x.view(-1, hidden), residual.view(-1, hidden)
    y, h = torch.empty_like(x2), torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], dtype=_rstd_dtype(x), device=x.device)
    C.rmsnorm_fwd(arg(x2), arg(r2), arg(weight), y, h, rstd, float(eps), threads(), stream(x))
    return y.view(x.shape), h.view(x.shape), rstd.view(x.shape[:-1])


@register_fake(rmsnorm_residual_fwd)
def _(x, residual, weight, eps):
    _check(x, weight, residual)
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


# ---- backward op ---------------------------------------------------------------------
@torch.library.custom_op("llmforge::rmsnorm_bwd", mutates_args=())
@on_input_device
def rmsnorm_bwd(grad_y: Tensor, h: Tensor, weight: Tensor, rstd: Tensor,
                grad_h: Tensor | None) -> tuple[Tensor, Tensor]:
    """Returns (grad_x, grad_weight); grad_h (optional) is added to grad_x."""
    _check_bwd(grad_y, h, weight, rstd, grad_h)
    hidden = h.shape[-1]
    h2 = h.view(-1, hidden)
    dy2 = grad_y.contiguous().view(-1, hidden)
    dh2 = None if grad_h is None else grad_h.contiguous().view(-1, hidden)
    dx = torch.empty_like(h2)
    dw = torch.empty_like(weight)
    C.rmsnorm_bwd(dy2, arg(h2), arg(weight), arg(rstd.reshape(-1)), dh2, dx, dw, _workspace(h2), threads(), stream(h))
    return dx.view(h.shape), dw


@register_fake(rmsnorm_bwd)
def _(grad_y, h, weight, rstd, grad_h):
    _check_bwd(grad_y, h, weight, rstd, grad_h)
    return torch.empty_like(h), torch.empty_like(weight)


def _setup(ctx, inputs, output):
    x, weight = inputs[0], inputs[-2]
    ctx.save_for_backward(x if len(output) == 2 else output[1], weight, output[-1])


def _fwd_backward(ctx, grad_y, _grad_rstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dw = rmsnorm_bwd(grad_y, h, weight, rstd, None)
    return dx, dw, None


def _residual_backward(ctx, grad_y, grad_h, _grad_rstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dw = rmsnorm_bwd(grad_y, h, weight, rstd, grad_h)
    return dx, dx, dw, None


rmsnorm_fwd.register_autograd(_fwd_backward, setup_context=_setup)
rmsnorm_residual_fwd.register_autograd(_residual_backward, setup_context=_setup)


# ---- public API ----------------------------------------------------------------------
def rmsnorm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMS-normalise the last dimension of x and scale by weight (differentiable)."""
    return rmsnorm_fwd(x, weight, eps)[0]


def rmsnorm_residual(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Fused h = x + residual; y = rmsnorm(h, weight). Returns (y, h)."""
    y, h, _ = rmsnorm_residual_fwd(x, residual, weight, eps)
    return y, h


def rmsnorm_reference(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Pure-torch RMSNorm, computed in float64 (or x's dtype if wider), cast back to x's dtype."""
    xf = x.to(torch.float64)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(torch.float64)
    return y.to(x.dtype)


def rmsnorm_residual_reference(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6):
    h = (x.to(torch.float64) + residual.to(torch.float64)).to(x.dtype)
    return rmsnorm_reference(h, weight, eps), h
