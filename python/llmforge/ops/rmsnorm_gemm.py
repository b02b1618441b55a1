"""RMSNorm fused into a matmul: y = rmsnorm(x, norm_weight, eps) @ weight.T.

    from llmforge.ops import rmsnorm_linear
    y = rmsnorm_linear(x, norm_weight, weight, eps=1e-6)   # x: (..., K), norm_weight: (K,), weight: (N, K)

The forward (csrc/cpu/rmsnorm_gemm.cpp; float32, bfloat16, float64) computes each row's
rstd in a first pass and applies x * rstd * norm_weight while packing the GEMM's A panels,
so the normalised activations are never written out as an (M, K) tensor. Two paths:
M < 48 rows (decode) stream weight rows straight from memory as dot products; larger M
runs a BLIS-style packed GEMM (6 x 16 AVX2 FMA micro-kernel). bfloat16 is computed in
float32 and rounded once.
On CPUs with native bf16 dot products, bfloat16 inputs of more than BF16_FUSED_MAX_ROWS
rows take the rmsnorm kernel and torch's bf16 GEMM instead (1.00-1.04x torch's unfused pair
there, where the fused float32-computed kernel ran at 0.50-0.53x; bench/results/cpu.md).

Backward (what is fused and what is not): the same packed GEMM computes
grad_weight = grad_y.T @ (x * rstd * norm_weight) with the normalisation applied while
packing its panels (the normalised x is not materialised in the backward either), and
grad_a = grad_y @ weight (materialised, (M, K)); grad_x and grad_norm_weight then come from
the llmforge rmsnorm backward kernel applied to grad_a (one extra pass over (M, K)).
Gradients flow to x, norm_weight and weight; there is no double backward.

CUDA (kernels/rmsnorm_gemm.cu; float32, float16, bfloat16): rstd once per row, then a tiled
mma.m16n8k16 GEMM whose A loader applies x * rstd * norm_weight while filling shared memory;
the backward GEMMs read their operands transposed and normalise x inside the loader too.
Tensor-core operands are bf16 (fp16 for float16), accumulation float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._native import C, arg, native_bf16_dot as _native_bf16_dot, on_input_device, register_fake, require, same_device, stream, threads
from .rmsnorm import rmsnorm, rmsnorm_bwd as _rmsnorm_bwd


def _check(x: Tensor, norm_weight: Tensor, weight: Tensor) -> tuple[int, int]:
    require(all(isinstance(t, Tensor) for t in (x, norm_weight, weight)),
            "rmsnorm_linear: x, norm_weight and weight must be tensors")
    require(x.dim() >= 1 and x.shape[-1] > 0,
            f"rmsnorm_linear: x must have a positive last (hidden) dimension, got shape {tuple(x.shape)}")
    K = x.shape[-1]
    same_device(x, norm_weight=norm_weight, weight=weight)
    require(norm_weight.shape == (K,), f"rmsnorm_linear: norm_weight must have shape ({K},), got {tuple(norm_weight.shape)}")
    require(weight.dim() == 2 and weight.shape[1] == K and weight.shape[0] > 0,
            f"rmsnorm_linear: weight must have shape (out_features, {K}), got {tuple(weight.shape)}")
    require(x.is_contiguous() and norm_weight.is_contiguous() and weight.is_contiguous(),
            "rmsnorm_linear: x, norm_weight and weight must be contiguous; call .contiguous() first")
    return K, weight.shape[0]


def _check_bwd(grad_y: Tensor, x: Tensor, norm_weight: Tensor, weight: Tensor, rstd: Tensor) -> tuple[int, int]:
    """The backward's arguments must be what the forward saw and made (devices: on_input_device)."""
    K, N = _check(x, norm_weight, weight)
    want = (*x.shape[:-1], N)
    require(isinstance(grad_y, Tensor) and tuple(grad_y.shape) == want,
            f"rmsnorm_linear: grad_y has shape {tuple(getattr(grad_y, 'shape', ()))}, expected {want}")
    require(isinstance(rstd, Tensor) and rstd.shape == x.shape[:-1],
            f"rmsnorm_linear: rstd has shape {tuple(getattr(rstd, 'shape', ()))}, expected {tuple(x.shape[:-1])}")
    return K, N


def _rstd_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("llmforge::rmsnorm_linear_fwd", mutates_args=())
@on_input_device
def rmsnorm_linear_fwd(x: Tensor, norm_weight: Tensor, weight: Tensor, eps: float, path: int) -> tuple[Tensor, Tensor]:
    """Returns (y, rstd): y (..., N), rstd x.shape[:-1]. path: 0 auto, 1 dot-product, 2 packed GEMM."""
    K, N = _check(x, norm_weight, weight)
    x2 = x.view(-1, K)
    y = x.new_empty(x2.shape[0], N)
    rstd = torch.empty(x2.shape[0], dtype=_rstd_dtype(x), device=x.device)
    C.rmsnorm_gemm_fwd(arg(x2), arg(norm_weight), arg(weight), y, rstd, float(eps), threads(), int(path), stream(x))
    return y.view(*x.shape[:-1], N), rstd.view(x.shape[:-1])


@register_fake(rmsnorm_linear_fwd)
def _(x, norm_weight, weight, eps, path):
    _, N = _check(x, norm_weight, weight)
    return x.new_empty(*x.shape[:-1], N), x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.custom_op("llmforge::rmsnorm_linear_bwd_a", mutates_args=())
@on_input_device
def rmsnorm_linear_bwd_a(grad_y: Tensor, x: Tensor, norm_weight: Tensor, weight: Tensor, rstd: Tensor) -> Tensor:
    """grad_a = grad_y @ weight: the gradient at the norm's output, (..., K)."""
    K, N = _check_bwd(grad_y, x, norm_weight, weight, rstd)
    x2 = x.view(-1, K)
    da = torch.empty_like(x2)
    if x2.shape[0] == 0:
        return da.view(x.shape)
    C.rmsnorm_gemm_bwd(arg(grad_y.contiguous().view(-1, N)), arg(x2), arg(norm_weight), arg(weight),
                       arg(rstd.reshape(-1)), da, None, threads(), stream(x))
    return da.view(x.shape)


@register_fake(rmsnorm_linear_bwd_a)
def _(grad_y, x, norm_weight, weight, rstd):
    _check_bwd(grad_y, x, norm_weight, weight, rstd)
    return torch.empty_like(x)


@torch.library.custom_op("llmforge::rmsnorm_linear_bwd_weight", mutates_args=())
@on_input_device
def rmsnorm_linear_bwd_weight(grad_y: Tensor, x: Tensor, norm_weight: Tensor, weight: Tensor,
                              rstd: Tensor) -> Tensor:
    """grad_weight = grad_y.T @ (x * rstd * norm_weight), (N, K); the normalised x only in packed panels."""
    K, N = _check_bwd(grad_y, x, norm_weight, weight, rstd)
    if x.numel() == 0:
        return torch.zeros_like(weight)
    dw = torch.empty_like(weight)
    C.rmsnorm_gemm_bwd(arg(grad_y.contiguous().view(-1, N)), arg(x.view(-1, K)), arg(norm_weight), arg(weight),
                       arg(rstd.reshape(-1)), None, dw, threads(), stream(x))
    return dw


@register_fake(rmsnorm_linear_bwd_weight)
def _(grad_y, x, norm_weight, weight, rstd):
    _check_bwd(grad_y, x, norm_weight, weight, rstd)
    return torch.empty_like(weight)


def _setup(ctx, inputs, output):
    x, norm_weight, weight, _, _ = inputs
    ctx.save_for_backward(x, norm_weight, weight, output[1])


def _backward(ctx, grad_y, _grad_rstd):
    x, g, w, rstd = ctx.saved_tensors
    need_x, need_g, need_w = ctx.needs_input_grad[:3]
    dx = dg = dw = None
    if need_w:
        dw = rmsnorm_linear_bwd_weight(grad_y, x, g, w, rstd)
    if need_x or need_g:
        K = x.shape[-1]
        da = rmsnorm_linear_bwd_a(grad_y, x, g, w, rstd)
        dx, dg = _rmsnorm_bwd(da.view(-1, K), x.view(-1, K), g, rstd.reshape(-1), None)
        dx = dx.view(x.shape)
    return dx, dg, dw, None, None


rmsnorm_linear_fwd.register_autograd(_backward, setup_context=_setup)


# bfloat16 rows above which a CPU with native bf16 dot products (AVX512-BF16, AMX) runs the
# unfused form: its bf16 GEMM (torch's oneDNN) doubles the fused kernel's float32 arithmetic,
# while the fused weight-streaming path still wins on decode-sized M (bench rmsnorm_gemm)
BF16_FUSED_MAX_ROWS = 4


def _unfused_bf16(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16
            and x.numel() > BF16_FUSED_MAX_ROWS * x.shape[-1] and _native_bf16_dot())


def rmsnorm_linear(x: Tensor, norm_weight: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """rmsnorm(x, norm_weight, eps) @ weight.T without materialising the normalised x (differentiable).
    CPU bfloat16 with more than BF16_FUSED_MAX_ROWS rows, on a CPU with native bf16 dot products:
    the rmsnorm kernel, then torch's bf16 matmul (twice as fast there; see BF16_FUSED_MAX_ROWS)."""
    if isinstance(x, Tensor) and _unfused_bf16(x):
        _check(x, norm_weight, weight)
        if not norm_weight.dtype == weight.dtype == x.dtype:
            raise TypeError(f"rmsnorm_linear: dtypes must match: x {x.dtype}, norm_weight {norm_weight.dtype}, "
                            f"weight {weight.dtype}")
        require(math.isfinite(eps) and eps >= 0, f"rmsnorm_linear: eps must be finite and >= 0, got {eps}")
        return F.linear(rmsnorm(x, norm_weight, eps), weight)
    return rmsnorm_linear_fwd(x, norm_weight, weight, eps, 0)[0]


def rmsnorm_linear_reference(x: Tensor, norm_weight: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Pure-torch RMSNorm then matmul in float64, cast back to x's dtype."""
    xf = x.to(torch.float64)
    xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.to(torch.float64)
    return (xn @ weight.to(torch.float64).t()).to(x.dtype)
