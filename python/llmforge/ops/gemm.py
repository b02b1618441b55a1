"""float32 GEMM on CPU (kernel: csrc/cpu/gemm.cpp) and the linear layer built on it.

    from llmforge.ops import gemm, linear
    c = gemm(a, b)                      # a (M, K) @ b (K, N); either may be a transposed view
    gemm(a, b, out=c, accumulate=True)  # c += a @ b, in place
    y = linear(x, weight, bias)         # x (..., in) @ weight (out, in)^T + bias, differentiable

The training matmuls (x @ w^T, dy @ w, dy^T @ x) read their operands in place, pack them
into L1/L2-sized panels and run a 6-row register-blocked micro-kernel (6 x 16 floats on
AVX2, 6 x 32 on AVX-512) on all threads. linear() takes this path for CPU float32 tensors (no
autocast) with at least GEMM_MIN_ROWS rows; elsewhere it is F.linear. On a small model's
training-step shapes (`python -m bench gemm`, bench/results/cpu.md) it runs at 2.0-2.2x MKL's
speed on a 2-core Zen 5 (AVX-512: 0.41-0.47 TFLOP/s, 81-94% of the 0.507 measured FMA peak; MKL
keeps to AVX2 on AMD), 1.13-1.30x there with the AVX2 path forced (LLMFORGE_ISA=avx2), and
0.94-1.31x on a 2-core Zen 3 (AVX2). gemm() itself only takes CPU float32 and raises on
anything else.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, threads

GEMM_MIN_ROWS = 64  # fewer rows (decode-like): the kernel's packing does not pay; F.linear


def gemm(a: Tensor, b: Tensor, out: Tensor | None = None, accumulate: bool = False) -> Tensor:
    """a @ b into a new tensor or into `out` (overwritten, or added to with accumulate=True).
    Not differentiable (see linear)."""
    require(isinstance(a, Tensor) and isinstance(b, Tensor), "gemm: a and b must be tensors")
    require(a.dim() == 2 and b.dim() == 2, f"gemm: a and b must be 2-D, got shapes {tuple(a.shape)} and "
                                           f"{tuple(b.shape)}")
    if out is None:
        require(not accumulate, "gemm: accumulate=True needs out")
        if torch.compiler.is_compiling():
            return gemm_op(a, b)
        out = a.new_empty(a.shape[0], b.shape[1])
    elif torch.compiler.is_compiling():
        # torch.compile traces the functional op; writing into out is then a graph op of its own
        return out.add_(gemm_op(a, b)) if accumulate else out.copy_(gemm_op(a, b))
    C.gemm(arg(a), arg(b), arg(out), bool(accumulate), threads())
    return out


def _check_op(a: Tensor, b: Tensor) -> None:
    require(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0],
            f"gemm: shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")


@torch.library.custom_op("llmforge::gemm", mutates_args=())
@on_input_device
def gemm_op(a: Tensor, b: Tensor) -> Tensor:
    """a @ b into a new tensor: the form torch.compile records of gemm() (a direct native call
    would break its graph). Eager code calls gemm(), which skips the dispatcher."""
    _check_op(a, b)
    out = a.new_empty(a.shape[0], b.shape[1])
    C.gemm(arg(a), arg(b), out, False, threads())
    return out


@register_fake(gemm_op)
def _(a, b):
    _check_op(a, b)
    return a.new_empty(a.shape[0], b.shape[1])


def _applies(rows: int, *tensors: Tensor) -> bool:
    """The llmforge GEMM takes over: CPU float32 operands, at least GEMM_MIN_ROWS rows, a vector
    ISA (the scalar build would be slower than torch)."""
    return (rows >= GEMM_MIN_ROWS and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and _vector_isa())


@torch.compiler.assume_constant_result
def _vector_isa() -> bool:
    """The CPU kernels have a vector path (the ISA can be switched at run time, so not cached;
    torch.compile takes it as a constant of the compiled graph)."""
    return C.cpu_isa() != "scalar"


def mm(a: Tensor, b: Tensor, out: Tensor | None = None, accumulate: bool = False) -> Tensor:
    """a @ b (2-D) on the llmforge GEMM where it applies (CPU float32, at least GEMM_MIN_ROWS
    rows, an out with unit column stride), else torch.mm / addmm_. Not differentiable."""
    if (_applies(a.shape[0], a, b, *(() if out is None else (out,))) and (out is None or out.stride(-1) == 1)
            and 1 in a.stride() and 1 in b.stride()):
        return gemm(a, b, out, accumulate)
    if accumulate:
        return out.addmm_(a, b)
    return torch.mm(a, b, out=out) if out is not None else torch.mm(a, b)


def uses_gemm(x: Tensor, weight: Tensor) -> bool:
    """Does linear(x, weight) run on the llmforge GEMM (rather than F.linear)?"""
    return (weight.dim() == 2 and x.dim() >= 1 and not torch.is_autocast_enabled("cpu")
            and _applies(x.numel() // max(1, x.shape[-1]), x, weight))


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = gemm(x2, weight.t())
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        if dy2.stride(-1) != 1 and dy2.stride(0) != 1:
            dy2 = dy2.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = gemm(dy2, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = gemm(dy2.t(), x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T + bias, differentiable in all three; F.linear where the GEMM does not apply."""
    if not uses_gemm(x, weight) or (bias is not None and bias.dtype != torch.float32):
        return F.linear(x, weight, bias)
    require(x.shape[-1] == weight.shape[1], f"linear: x has {x.shape[-1]} features but weight has shape "
                                            f"{tuple(weight.shape)}")
    return _Linear.apply(x, weight, bias)
