"""Helpers shared by the ops: how tensors and launch settings reach llmforge._C."""
from __future__ import annotations

import torch

from .. import _C

C = _C


def arg(t: torch.Tensor | None):
    """A tensor as the native boundary takes it (DLPack needs no autograd history)."""
    return None if t is None else t.detach()


def threads() -> int:
    """CPU kernels use as many OpenMP threads as torch does."""
    return torch.get_num_threads()


def stream(t: torch.Tensor) -> int:
    """The caller's current CUDA stream for t's device (0 for CPU tensors)."""
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)
