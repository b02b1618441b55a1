"""SwiGLU: y = silu(gate) * up, fused forward and backward.

    from llmforge.ops import swiglu, swiglu_packed
    y = swiglu(gate, up)        # gate, up: (..., ffn) -> y: (..., ffn)
    y = swiglu_packed(x)        # x: (..., 2 * ffn) = [gate | up] -> y: (..., ffn)

In the packed form the FIRST half of the last dimension is the gate and the second half
is up (x.chunk(2, -1) == (gate, up)), i.e. one matmul against cat([W_gate, W_up]).

Kernels: csrc/cpu/swiglu.cpp (CPU: float32, bfloat16, float64; float32 maths for bf16,
a vectorised exp/sigmoid from csrc/cpu/swiglu_simd.h) and kernels/swiglu.cu (CUDA: float32,
float16, bfloat16; one fused pass, float32 maths). Inputs must be contiguous.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, same_device, stream, threads


def _check(gate: Tensor, up: Tensor) -> None:
    require(isinstance(gate, Tensor) and isinstance(up, Tensor), "swiglu: gate and up must be tensors")
    require(gate.dim() >= 1 and gate.shape[-1] > 0,
            f"swiglu: gate must have a positive last dimension, got shape {tuple(gate.shape)}")
    same_device(gate, up=up)
    require(gate.shape == up.shape, f"swiglu: up has shape {tuple(up.shape)} but gate has {tuple(gate.shape)}")
    require(gate.is_contiguous() and up.is_contiguous(), "swiglu: gate and up must be contiguous")


def _check_packed(x: Tensor) -> int:
    require(isinstance(x, Tensor), "swiglu_packed: x must be a tensor")
    require(x.dim() >= 1 and x.shape[-1] > 0 and x.shape[-1] % 2 == 0,
            f"swiglu_packed: the last dimension of x holds [gate, up] and must be even and positive, "
            f"got shape {tuple(x.shape)}")
    same_device(x)
    require(x.is_contiguous(), "swiglu_packed: x must be contiguous; call .contiguous() first")
    return x.shape[-1] // 2


# ---- separate gate and up ------------------------------------------------------------------
@torch.library.custom_op("llmforge::swiglu_fwd", mutates_args=())
@on_input_device
def swiglu_fwd(gate: Tensor, up: Tensor) -> Tensor:
    _check(gate, up)
    y = torch.empty_like(gate)
    C.swiglu_fwd(arg(gate), arg(up), y, threads(), stream(gate))
    return y


@register_fake(swiglu_fwd)
def _(gate, up):
    _check(gate, up)
    return torch.empty_like(gate)


@torch.library.custom_op("llmforge::swiglu_bwd", mutates_args=())
@on_input_device
def swiglu_bwd(grad_y: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (grad_gate, grad_up)."""
    _check(gate, up)
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    C.swiglu_bwd(arg(grad_y.contiguous()), arg(gate), arg(up), dg, du, threads(), stream(gate))
    return dg, du


@register_fake(swiglu_bwd)
def _(grad_y, gate, up):
    _check(gate, up)
    return torch.empty_like(gate), torch.empty_like(up)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y):
    gate, up = ctx.saved_tensors
    return swiglu_bwd(grad_y, gate, up)


swiglu_fwd.register_autograd(_backward, setup_context=_setup)


# ---- packed [gate | up] ----------------------------------------------------------------------
@torch.library.custom_op("llmforge::swiglu_packed_fwd", mutates_args=())
@on_input_device
def swiglu_packed_fwd(x: Tensor) -> Tensor:
    ffn = _check_packed(x)
    y = x.new_empty(*x.shape[:-1], ffn)
    C.swiglu_packed_fwd(arg(x), y, threads(), stream(x))
    return y


@register_fake(swiglu_packed_fwd)
def _(x):
    ffn = _check_packed(x)
    return x.new_empty(*x.shape[:-1], ffn)


@torch.library.custom_op("llmforge::swiglu_packed_bwd", mutates_args=())
@on_input_device
def swiglu_packed_bwd(grad_y: Tensor, x: Tensor) -> Tensor:
    _check_packed(x)
    dx = torch.empty_like(x)
    C.swiglu_packed_bwd(arg(grad_y.contiguous()), arg(x), dx, threads(), stream(x))
    return dx


@register_fake(swiglu_packed_bwd)
def _(grad_y, x):
    _check_packed(x)
    return torch.empty_like(x)


def _packed_backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    return swiglu_packed_bwd(grad_y, x)


swiglu_packed_fwd.register_autograd(_packed_backward, setup_context=_setup)


# ---- public API --------------------------------------------------------------------------------
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up (differentiable in both)."""
    return swiglu_fwd(gate, up)


def swiglu_packed(x: Tensor) -> Tensor:
    """silu(x[..., :ffn]) * x[..., ffn:] for x of shape (..., 2 * ffn) (differentiable)."""
    return swiglu_packed_fwd(x)


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    """Pure-torch SwiGLU in float64, cast back to gate's dtype."""
    return (F.silu(gate.to(torch.float64)) * up.to(torch.float64)).to(gate.dtype)


def swiglu_packed_reference(x: Tensor) -> Tensor:
    gate, up = x.chunk(2, dim=-1)
    return swiglu_reference(gate, up)
