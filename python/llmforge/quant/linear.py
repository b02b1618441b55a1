"""Quantized linear modules that run on the quantized-matmul ops (frozen weights).

    layer = Int4Linear.from_linear(linear, group_size=64, symmetric=True)
    layer = Int8Linear.from_linear(linear)
    layer = W8A8Linear.from_linear(linear, smooth=s)        # int8 activations x int8 weights
    swap_linears(model, Int4Linear, targets=("q_proj", ...), group_size=64)   # in place
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import (dequantize_int4, dequantize_int8, int4_linear, int8_linear, quantize_int4, quantize_int8,
                   w8a8_linear)


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x rounded as ggml's Q8_0 (llama.cpp's activations before a Q4_0/Q5_0/Q8_0 matmul): per 32
    values along the last dim, d = amax / 127 kept as float16, q = round-half-even(x * 127 / amax);
    returns q * d in float32."""
    if x.shape[-1] % 32:
        raise ValueError(f"round_q8_0: the last dim ({x.shape[-1]}) must be a multiple of 32")
    b = x.float().reshape(*x.shape[:-1], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    q = torch.round(b * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    return (q * (amax / 127).half().float()).reshape(x.shape)


class Int4Linear(nn.Module):
    """act_round="q8_0" rounds the input as llama.cpp does before multiplying a Q4_0 tensor
    (round_q8_0), so a model loaded from a Q4_0 GGUF computes what llama.cpp computes; None (the
    default) multiplies the activations as they are.

    compact=True stores the group scales as bfloat16 (float32's range, 2^-9 relative rounding, far
    below int4's own step) and, for symmetric codes, one zero point
    instead of one per group (QLoRA's frozen base: 0.53 bytes per weight at group 64, 3.8x below
    bf16); each call then widens them, which costs a little on small, latency-bound calls."""

    def __init__(self, q: dict, in_features: int, out_features: int, bias: torch.Tensor | None = None,
                 compact: bool = False, act_round: str | None = None):
        super().__init__()
        if act_round not in (None, "q8_0"):
            raise ValueError(f"act_round must be None or 'q8_0', got {act_round!r}")
        self.act_round = act_round
        self.in_features, self.out_features = in_features, out_features
        self.group_size = int(q["group_size"])
        scales, zeros = q["scales"], q["zeros"]
        if compact:
            if not torch.isfinite(scales).all():
                raise ValueError("Int4Linear: scales must be finite")
            scales = scales.to(torch.bfloat16)
            if zeros.numel() and bool((zeros == zeros.reshape(-1)[0]).all()):
                zeros = zeros.reshape(-1)[:1].clone()
        self.register_buffer("packed", q["packed"])
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64, symmetric: bool = True,
                    compact: bool = False) -> "Int4Linear":
        q = quantize_int4(linear.weight.detach().float(), group_size, symmetric)
        return cls(q, linear.in_features, linear.out_features, linear.bias, compact=compact)

    def _q(self):
        shape = (self.out_features, self.in_features // self.group_size)
        zeros = self.zeros.expand(shape).contiguous() if self.zeros.numel() == 1 else self.zeros
        return {"packed": self.packed, "scales": self.scales.float(), "zeros": zeros, "group_size": self.group_size}

    def forward(self, x):
        dt = x.dtype
        if self.act_round == "q8_0":
            x = round_q8_0(x)
        y = int4_linear(x if x.dtype in (torch.float32, torch.bfloat16) else x.float(), self._q(), self.bias)
        return y.to(dt)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int4(self._q())

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros))


class Int8Linear(nn.Module):
    def __init__(self, q: dict, in_features: int, out_features: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("q", q["q"])
        self.register_buffer("scale", q["scale"])
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(quantize_int8(linear.weight.detach().float()), linear.in_features, linear.out_features, linear.bias)

    def forward(self, x):
        dt = x.dtype
        return int8_linear(x if dt in (torch.float32, torch.bfloat16) else x.float(),
                           {"q": self.q, "scale": self.scale}, self.bias).to(dt)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int8({"q": self.q, "scale": self.scale})

    def weight_bytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4


class W8A8Linear(nn.Module):
    """y = (x / smooth) @ (W * smooth)^T on the W8A8 op: the activations are quantised per token
    (absmax / 127) on the fly, the weights per output channel, int32 accumulation. `smooth`
    (in_features,) is SmoothQuant's explicit input scale for a linear whose scale could not be
    folded into the preceding op; None when it was folded (or when there is no smoothing)."""

    def __init__(self, q: dict, in_features: int, out_features: int, bias: torch.Tensor | None = None,
                 smooth: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("q", q["q"])
        self.register_buffer("scale", q["scale"])
        self.register_buffer("smooth", None if smooth is None else smooth.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None = None) -> "W8A8Linear":
        w = linear.weight.detach().double()
        if smooth is not None:
            if tuple(smooth.shape) != (linear.in_features,):
                raise ValueError(f"smooth must have shape ({linear.in_features},), got {tuple(smooth.shape)}")
            if not bool(torch.isfinite(smooth).all()) or bool((smooth <= 0).any()):
                raise ValueError("smooth must be finite and positive")
            w = w * smooth.double()[None]
        return cls(quantize_int8(w), linear.in_features, linear.out_features, linear.bias, smooth)

    def forward(self, x):
        dt = x.dtype
        x = x if dt in (torch.float32, torch.bfloat16) else x.float()
        if self.smooth is not None:
            x = (x / self.smooth).to(x.dtype)
        return w8a8_linear(x, {"q": self.q, "scale": self.scale}, self.bias).to(dt)

    def dequantized_weight(self) -> torch.Tensor:
        w = dequantize_int8({"q": self.q, "scale": self.scale})
        return w if self.smooth is None else w / self.smooth[None]

    def weight_bytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4 + (0 if self.smooth is None else self.smooth.numel() * 4)


def swap_linears(model: nn.Module, cls, targets=None, **kw) -> list[str]:
    """Replace nn.Linear children whose attribute name is in targets (all when None) by cls.from_linear."""
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and (targets is None or child_name in targets):
                setattr(module, child_name, cls.from_linear(child, **kw))
                swapped.append(f"{name}.{child_name}" if name else child_name)
    return swapped
