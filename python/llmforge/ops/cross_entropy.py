"""Cross-entropy over rows of logits, one fused pass per row forward and backward.

    from llmforge.ops import cross_entropy, linear_cross_entropy
    loss = cross_entropy(logits, targets)                   # logits (N, V), targets (N,) int64 -> (N,)
    total = cross_entropy(logits, targets).sum()            # F.cross_entropy(..., reduction="sum")
    total = linear_cross_entropy(h, weight, targets)        # the same for logits = h @ weight.T, fused

loss[r] = logsumexp(logits[r]) - logits[r, targets[r]], and 0 where targets[r] == ignore_index
(default -100, as torch). The gradient at logits is grad_loss[r] * (softmax(logits[r]) -
one_hot(targets[r])), written straight from the saved logits and log-sum-exp: no float copy
of the logits, no log-probabilities tensor, no zero-filled scatter. linear_cross_entropy (the
training loss of an output layer) goes further: its forward overwrites the logits with
softmax - one_hot while each row is in L1, and its backward scales the two GEMM results by the
incoming gradient, so there is no backward pass over the (N, V) logits at all.

Kernel: csrc/cpu/cross_entropy.cpp (CPU: float32, bfloat16, float64 logits; float32 maths and
loss for bfloat16, float64 for float64). logits must be contiguous; targets int64 in [0, V)
or equal to ignore_index. Elsewhere (CUDA, float16) it is torch's F.cross_entropy in float32
(float64 for float64 logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._native import C, arg, require, same_device, threads

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _stat_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check(logits: Tensor, targets: Tensor) -> None:
    require(isinstance(logits, Tensor) and isinstance(targets, Tensor), "cross_entropy: logits and targets must be tensors")
    require(logits.dim() == 2 and logits.shape[1] > 0,
            f"cross_entropy: logits must be (rows, vocab) with vocab > 0, got shape {tuple(logits.shape)}")
    if targets.dtype != torch.int64:
        raise TypeError(f"cross_entropy: targets must be int64, got {targets.dtype}")
    require(targets.shape == logits.shape[:1],
            f"cross_entropy: targets has shape {tuple(targets.shape)}, expected ({logits.shape[0]},)")
    same_device(logits, targets=targets)
    require(logits.is_contiguous() and targets.is_contiguous(), "cross_entropy: logits and targets must be contiguous")


@torch.library.custom_op("llmforge::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Returns (loss (N,), lse (N,)), float32 (float64 for float64 logits)."""
    _check(logits, targets)
    loss = torch.empty(logits.shape[0], dtype=_stat_dtype(logits), device=logits.device)
    lse = torch.empty_like(loss)
    C.cross_entropy_fwd(arg(logits), targets, loss, lse, None, int(ignore_index), threads())
    return loss, lse


@cross_entropy_fwd.register_fake
def _(logits, targets, ignore_index):
    _check(logits, targets)
    st = logits.new_empty(logits.shape[0], dtype=_stat_dtype(logits))
    return st, torch.empty_like(st)


@torch.library.custom_op("llmforge::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(grad_loss: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, ignore_index: int) -> Tensor:
    """The gradient at logits (like logits) for grad_loss (N,) arriving at the per-row loss."""
    _check(logits, targets)
    grad = torch.empty_like(logits)
    C.cross_entropy_bwd(arg(logits), targets, arg(lse), grad_loss.to(lse.dtype).contiguous(), grad,
                        int(ignore_index), threads())
    return grad


@cross_entropy_bwd.register_fake
def _(grad_loss, logits, targets, lse, ignore_index):
    _check(logits, targets)
    return torch.empty_like(logits)


def _setup(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_loss, _grad_lse):
    logits, targets, lse = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None
    return cross_entropy_bwd(grad_loss, logits, targets, lse, ctx.ignore_index), None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup)


# ---- public API ----------------------------------------------------------------------
def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Per-row cross-entropy (N,) of logits (N, V) against int64 targets (N,); differentiable in
    logits. Rows whose target is ignore_index give 0 and no gradient."""
    if isinstance(logits, Tensor) and (logits.device.type != "cpu" or logits.dtype not in KERNEL_DTYPES):
        _check(logits, targets)
        wide = logits if logits.dtype == torch.float64 else logits.float()
        return F.cross_entropy(wide, targets, ignore_index=ignore_index, reduction="none")
    return cross_entropy_fwd(logits, targets, int(ignore_index))[0]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_r CE(h[r] @ weight^T, targets[r]): the forward writes softmax - one_hot over the logits
    in place while each row is in L1 (the gradient for an incoming 1); the backward scales the
    two GEMM results by the incoming scalar instead of a (rows, vocab) gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index):
        logits = torch.mm(h, weight.t())                                             # (N, V)
        loss = torch.empty(h.shape[0], dtype=_stat_dtype(logits), device=h.device)
        lse = torch.empty_like(loss)
        grad = logits if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        C.cross_entropy_fwd(logits, targets.contiguous(), loss, lse, grad, int(ignore_index), threads())
        ctx.save_for_backward(h, weight, logits)                                     # logits now hold the gradient
        return loss.sum()

    @staticmethod
    def backward(ctx, grad_total):
        h, weight, g = ctx.saved_tensors
        s = grad_total.to(g.dtype)
        dh = torch.mm(g, weight).mul_(s) if ctx.needs_input_grad[0] else None
        dw = torch.mm(g.t(), h).mul_(s) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Summed cross-entropy of the output layer h (N, D) @ weight (V, D)^T against targets (N,):
    cross_entropy(F.linear(h, weight), targets).sum() with no separate pass over the logits'
    gradient (see _LinearCrossEntropy). Differentiable in h and weight. CPU kernel dtypes run
    fused; elsewhere the unfused composition."""
    require(isinstance(h, Tensor) and isinstance(weight, Tensor), "linear_cross_entropy: h and weight must be tensors")
    require(h.dim() == 2 and weight.dim() == 2 and h.shape[1] == weight.shape[1],
            f"linear_cross_entropy: h (N, D) and weight (V, D) expected, got {tuple(h.shape)} and {tuple(weight.shape)}")
    if h.device.type != "cpu" or h.dtype not in KERNEL_DTYPES or weight.dtype != h.dtype:
        return cross_entropy(F.linear(h, weight), targets, ignore_index).sum()
    if targets.dtype != torch.int64:
        raise TypeError(f"linear_cross_entropy: targets must be int64, got {targets.dtype}")
    require(targets.shape == h.shape[:1] and targets.device == h.device,
            f"linear_cross_entropy: targets must be ({h.shape[0]},) on {h.device}, got {tuple(targets.shape)}")
    return _LinearCrossEntropy.apply(h.contiguous(), weight, targets, int(ignore_index))


def cross_entropy_reference(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Pure-torch per-row cross-entropy in float64."""
    return F.cross_entropy(logits.to(torch.float64), targets, ignore_index=ignore_index, reduction="none")
