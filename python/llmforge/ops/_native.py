"""Helpers shared by the ops: how tensors and launch settings reach llmforge._C."""
from __future__ import annotations

import functools
import inspect

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


def _one_device_check(op: str, fn):
    """A function raising ValueError, naming op and each tensor's device, unless fn's tensor
    arguments all lie on one device. A mix must not reach the kernels, nor the fake (meta)
    implementations: with one meta tensor among CPU ones the dispatcher picks the fake, whose
    torch.empty_like(cpu_tensor) would come back as uninitialised memory."""
    sig = inspect.signature(fn)

    def check(args, kwargs):
        first = None
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                if first is None:
                    first = a.device
                elif a.device != first:
                    bound = sig.bind(*args, **kwargs).arguments
                    where = ", ".join(f"{k} on {v.device}" for k, v in bound.items() if isinstance(v, torch.Tensor))
                    raise ValueError(f"{op}: tensors are on different devices ({where}); move them to one device")
    return check


def on_input_device(fn):
    """Checks that fn's tensor arguments share one device (ValueError otherwise), then runs fn with
    that device current when it is a GPU: the kernels launch on the current device (and size
    split-K by its SM count), so a tensor on another GPU than the current one must not reach
    them from there."""
    check = _one_device_check(fn.__name__.strip("_").removesuffix("_op"), fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        check(args, kwargs)
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is not None and t.device.type == "cuda":
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    # resolved annotations: torch.library.custom_op infers the op's schema from this signature
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    return wrapper


def register_fake(op):
    """op.register_fake with the same one-device check as on_input_device."""
    def deco(fn):
        check = _one_device_check(op._name, fn)

        @functools.wraps(fn)
        def fake(*args, **kwargs):
            check(args, kwargs)
            return fn(*args, **kwargs)
        op.register_fake(fake)
        return fn
    return deco


@torch.compiler.assume_constant_result
def native_bf16_dot() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX; csrc/isa.cpp)? A constant of a
    torch.compile graph."""
    return bool(C.cpu_bf16_dot())


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def same_device(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise ValueError unless every tensor given is on ref's device (CPU or CUDA).

    Run in the fake (meta) implementations too: a mix of devices otherwise
    reaches the fake kernel and returns uninitialised memory.
    """
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but x is on {ref.device}; move them to one device")
    if ref.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"llmforge kernels run on CPU or CUDA tensors, got {ref.device}")
