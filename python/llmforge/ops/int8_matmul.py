"""int8 matmuls: weight-only (per-output-channel absmax) and W8A8 (per-token int8 activations).

    q = quantize_int8(w)                          # {"q": int8 (N, K), "scale": float32 (N,)}
    y = int8_linear(x, q)                         # x @ (q * scale)^T, weights widened in registers
    y = w8a8_linear(x, q)                         # x quantised per token on the fly, int32 accumulation
    xq, xs = quantize_activations_int8(x)         # per-token absmax / 127

int8 codes: q = round(w / scale), scale = absmax(row) / 127 (1 for an all-zero row).
W8A8: y[m, n] = xs[m] * scale[n] * sum_k xq[m, k] q[n, k], exact in int32 for K < 2^17.

CUDA (kernels/int8_matmul.cu): weight-only runs a split-K tensor-core GEMV for up to 16 rows
(weights streamed once with cp.async, widened to bfloat16 in registers) and a tiled mma GEMM
above that; x enters as bfloat16 and K must be a multiple of 16. W8A8 runs mma.m16n8k32 on
int8 tensor cores with int32 accumulation and the same per-token / per-channel scaling;
the activations are quantised by quantize_activations_int8 (torch ops) first.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._native import C, on_input_device, register_fake, require, stream, threads
from .gemm import mm

GEMV_MAX_ROWS = 16


def quantize_int8(w: Tensor) -> dict:
    require(isinstance(w, Tensor) and w.dim() == 2, "quantize_int8: w must be a 2-D (out, in) tensor")
    require(w.is_floating_point(), f"quantize_int8: w must be floating point, got {w.dtype}")
    require(bool(torch.isfinite(w).all()), "quantize_int8: weight contains NaN or infinity")
    wd = w.detach().double()
    scale = wd.abs().amax(1) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(wd / scale[:, None]), -127, 127).to(torch.int8)
    return {"q": q.contiguous(), "scale": scale.float().contiguous()}


def dequantize_int8(q: dict) -> Tensor:
    return q["q"].float() * q["scale"][:, None]


def quantize_activations_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token (row) absmax quantisation of x (..., K): (int8 codes, float32 scales)."""
    require(bool(torch.isfinite(x).all()), "quantize_activations_int8: x contains NaN or infinity")
    x2 = x.reshape(-1, x.shape[-1]).float()
    s = x2.abs().amax(1) / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    xq = torch.clamp(torch.round(x2 / s[:, None]), -127, 127).to(torch.int8)
    return xq.contiguous(), s.contiguous()


def _check(x, q, scale):
    require(isinstance(x, Tensor) and x.dim() >= 1, "int8: x must be a tensor with at least 1 dimension")
    require(x.dtype in (torch.float32, torch.bfloat16), f"int8: x must be float32 or bfloat16, got {x.dtype}")
    if q.dtype != torch.int8:
        raise TypeError(f"int8: q must be int8, got {q.dtype}")
    if scale.dtype != torch.float32:
        raise TypeError(f"int8: scale must be float32, got {scale.dtype}")
    require(q.dim() == 2 and x.shape[-1] == q.shape[1], f"int8: x has {x.shape[-1]} features, q has shape {tuple(q.shape)}")
    require(tuple(scale.shape) == (q.shape[0],), f"int8: scale must have shape ({q.shape[0]},)")
    require(x.device == q.device == scale.device, "int8: x, q and scale must be on one device")
    require(x.device.type in ("cpu", "cuda", "meta"), f"int8: CPU or CUDA tensors only, got {x.device}")


@torch.library.custom_op("llmforge::int8_linear", mutates_args=())
@on_input_device
def int8_linear_op(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    _check(x, q, scale)
    if x.device.type == "cuda":
        x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        x2 = x2 if x2.data_ptr() % 16 == 0 else x2.clone()  # the kernels' 16-byte loads
        M, N = x2.shape[0], q.shape[0]
        y = torch.empty(M, N, dtype=torch.float32, device=x.device)
        ws = torch.empty(max(C.int8_cuda_workspace_floats(M, N), 1), dtype=torch.float32, device=x.device)
        C.int8_matmul_cuda(x2, q.contiguous(), scale.contiguous(), y, ws, stream(x))
        return y.to(x.dtype).reshape(*x.shape[:-1], N)
    x2 = x.detach().reshape(-1, x.shape[-1]).float().contiguous()
    y = torch.empty(x2.shape[0], q.shape[0], dtype=torch.float32)
    if x2.shape[0] <= GEMV_MAX_ROWS:
        C.int8_matmul(x2, q.contiguous(), scale.contiguous(), y, threads())
    else:  # compute-bound: widen 256-row panels and use llmforge's GEMM
        for r0 in range(0, q.shape[0], 256):
            w = q[r0:r0 + 256].float() * scale[r0:r0 + 256, None]
            mm(x2, w.t(), out=y[:, r0:r0 + 256])
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


@register_fake(int8_linear_op)
def _(x, q, scale):
    _check(x, q, scale)
    return x.new_empty(*x.shape[:-1], q.shape[0])


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _backward(ctx, grad_y):
    q, scale = ctx.saved_tensors
    w = q.float() * scale[:, None]
    return (grad_y.float() @ w).to(grad_y.dtype), None, None


int8_linear_op.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("llmforge::w8a8_linear", mutates_args=())
@on_input_device
def w8a8_linear_op(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    _check(x, q, scale)
    xq, xs = quantize_activations_int8(x.detach())
    y = torch.empty(xq.shape[0], q.shape[0], dtype=torch.float32, device=x.device)
    if x.device.type == "cuda":
        C.w8a8_matmul_cuda(xq, xs, q.contiguous(), scale.contiguous(), y, stream(x))
    else:
        C.w8a8_matmul(xq, xs, q.contiguous(), scale.contiguous(), y, threads())
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


@register_fake(w8a8_linear_op)
def _(x, q, scale):
    _check(x, q, scale)
    return x.new_empty(*x.shape[:-1], q.shape[0])


def int8_linear(x: Tensor, q: dict, bias: Tensor | None = None) -> Tensor:
    y = int8_linear_op(x, q["q"], q["scale"])
    return y if bias is None else y + bias


def w8a8_linear(x: Tensor, q: dict, bias: Tensor | None = None) -> Tensor:
    y = w8a8_linear_op(x, q["q"], q["scale"])
    return y if bias is None else y + bias


def int8_linear_reference(x: Tensor, q: dict) -> Tensor:
    return x.double() @ dequantize_int8(q).double().t()


def w8a8_linear_reference(x: Tensor, q: dict) -> Tensor:
    xq, xs = quantize_activations_int8(x)
    acc = xq.double() @ q["q"].double().t()
    return (acc * xs.double()[:, None] * q["scale"].double()[None]).reshape(*x.shape[:-1], q["q"].shape[0])
