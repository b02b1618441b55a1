"""Cross-entropy over rows of logits, one fused pass per row forward and backward.

    from llmforge.ops import cross_entropy, linear_cross_entropy
    loss = cross_entropy(logits, targets)                   # logits (N, V), targets (N,) int64 -> (N,)
    total = cross_entropy(logits, targets).sum()            # F.cross_entropy(..., reduction="sum")
    total = linear_cross_entropy(h, weight, targets)        # the same for logits = h @ weight.T, fused

loss[r] = logsumexp(logits[r]) - logits[r, targets[r]], and 0 where targets[r] == ignore_index
(default -100, as torch). The gradient at logits is grad_loss[r] * (softmax(logits[r]) -
one_hot(targets[r])), written straight from the saved logits and log-sum-exp: no float copy
of the logits, no log-probabilities tensor, no zero-filled scatter. linear_cross_entropy (the
training loss of an output layer) goes further: it works in row chunks (16 MiB of logits, at
least 256 rows), and for each its forward overwrites the logits with softmax - one_hot while each
row is in L1 and multiplies them into the input and weight gradients at once; the backward only
scales those by the incoming gradient. No (N, V) tensor is ever kept: for 4096 tokens of a
32k vocabulary that is 512 MiB of float32 logits saved for the backward that it does not hold.

Kernel: csrc/cpu/cross_entropy.cpp (CPU: float32, bfloat16, float64 logits; float32 maths and
loss for bfloat16, float64 for float64). logits must be contiguous; targets int64 in [0, V)
or equal to ignore_index. Elsewhere (CUDA, float16) it is torch's F.cross_entropy in float32
(float64 for float64 logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, same_device, threads
from .gemm import mm

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
@on_input_device
def cross_entropy_fwd(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Returns (loss (N,), lse (N,)), float32 (float64 for float64 logits)."""
    _check(logits, targets)
    loss = torch.empty(logits.shape[0], dtype=_stat_dtype(logits), device=logits.device)
    lse = torch.empty_like(loss)
    C.cross_entropy_fwd(arg(logits), targets, loss, lse, None, int(ignore_index), threads())
    return loss, lse


@register_fake(cross_entropy_fwd)
def _(logits, targets, ignore_index):
    _check(logits, targets)
    st = logits.new_empty(logits.shape[0], dtype=_stat_dtype(logits))
    return st, torch.empty_like(st)


@torch.library.custom_op("llmforge::cross_entropy_bwd", mutates_args=())
@on_input_device
def cross_entropy_bwd(grad_loss: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, ignore_index: int) -> Tensor:
    """The gradient at logits (like logits) for grad_loss (N,) arriving at the per-row loss."""
    _check(logits, targets)
    if not grad_loss.is_floating_point():
        raise TypeError(f"cross_entropy_backward: grad_loss has dtype {grad_loss.dtype}; gradients are floating point")
    grad = torch.empty_like(logits)
    C.cross_entropy_bwd(arg(logits), targets, arg(lse), grad_loss.to(lse.dtype).contiguous(), grad,
                        int(ignore_index), threads())
    return grad


@register_fake(cross_entropy_bwd)
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


# logits elements per chunk of _LinearCrossEntropy (16 MiB of float32), but never fewer than
# MIN_CHUNK_ROWS rows: below that the weight-gradient accumulation would cost more traffic than
# the chunk's GEMMs do arithmetic
CHUNK_ELEMS = 4 << 20
MIN_CHUNK_ROWS = 256


@torch.library.custom_op("llmforge::linear_cross_entropy_fwd", mutates_args=())
@on_input_device
def linear_cross_entropy_fwd(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, need_h: bool,
                             need_w: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(summed loss, dh, dweight) of linear_cross_entropy for an incoming gradient of 1, in row
    chunks: for each chunk the logits are computed, overwritten with softmax - one_hot while each
    row is in L1, and multiplied straight into dh (chunk rows) and dweight (accumulated), so only
    a chunk of logits ever exists (rows x vocab, not all rows) and it is read back while it is
    still in cache. A gradient not asked for comes back empty (0 elements)."""
    _check_linear(h, weight, targets)
    N, V = h.shape[0], weight.shape[0]
    rows = max(1, min(N, max(MIN_CHUNK_ROWS, CHUNK_ELEMS // max(V, 1))))
    loss = torch.empty(N, dtype=_stat_dtype(h), device=h.device)
    lse = torch.empty_like(loss)
    dh = torch.empty_like(h) if need_h else h.new_empty(0)
    dw = torch.empty_like(weight) if need_w else weight.new_empty(0)
    buf = torch.empty(rows, V, dtype=h.dtype, device=h.device)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        hc, lg = h[r0:r1], buf[: r1 - r0]
        mm(hc, weight.t(), out=lg)
        C.cross_entropy_fwd(lg, targets[r0:r1], loss[r0:r1], lse[r0:r1], lg if need_h or need_w else None,
                            int(ignore_index), threads())
        if need_h:
            mm(lg, weight, out=dh[r0:r1])
        if need_w:
            mm(lg.t(), hc, out=dw, accumulate=r0 > 0)
    return loss.sum(), dh, dw


@register_fake(linear_cross_entropy_fwd)
def _(h, weight, targets, ignore_index, need_h, need_w):
    _check_linear(h, weight, targets)
    return (h.new_empty((), dtype=_stat_dtype(h)), torch.empty_like(h) if need_h else h.new_empty(0),
            torch.empty_like(weight) if need_w else weight.new_empty(0))


def _check_linear(h: Tensor, weight: Tensor, targets: Tensor) -> None:
    require(h.dim() == 2 and weight.dim() == 2 and h.shape[1] == weight.shape[1],
            f"linear_cross_entropy: h (N, D) and weight (V, D) expected, got {tuple(h.shape)} and {tuple(weight.shape)}")
    require(h.dtype in KERNEL_DTYPES and weight.dtype == h.dtype,
            f"linear_cross_entropy: h and weight must share a dtype of {KERNEL_DTYPES}, got {h.dtype} and {weight.dtype}")
    require(h.is_contiguous() and weight.is_contiguous(), "linear_cross_entropy: h and weight must be contiguous")
    if targets.dtype != torch.int64:
        raise TypeError(f"linear_cross_entropy: targets must be int64, got {targets.dtype}")
    require(targets.shape == h.shape[:1] and targets.is_contiguous(),
            f"linear_cross_entropy: targets must be contiguous ({h.shape[0]},), got {tuple(targets.shape)}")


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_r CE(h[r] @ weight^T, targets[r]): the forward (linear_cross_entropy_fwd) also makes
    the gradients for an incoming 1; the backward scales them by the incoming scalar."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index):
        total, dh, dw = linear_cross_entropy_fwd(h, weight, targets, ignore_index, ctx.needs_input_grad[0],
                                                 ctx.needs_input_grad[1])
        ctx.save_for_backward(dh, dw)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        dh, dw = ctx.saved_tensors
        return (dh * grad_total.to(dh.dtype) if ctx.needs_input_grad[0] else None,
                dw * grad_total.to(dw.dtype) if ctx.needs_input_grad[1] else None, None, None)


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
    return _LinearCrossEntropy.apply(h.contiguous(), weight.contiguous(), targets.contiguous(), int(ignore_index))


def cross_entropy_reference(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Pure-torch per-row cross-entropy in float64."""
    return F.cross_entropy(logits.to(torch.float64), targets, ignore_index=ignore_index, reduction="none")
