"""Quantized linear modules that run on the quantized-matmul ops (frozen weights).

    layer = Int4Linear.from_linear(linear, group_size=64, symmetric=True)
    layer = Int8Linear.from_linear(linear)
    swap_linears(model, Int4Linear, targets=("q_proj", ...), group_size=64)   # in place
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import dequantize_int4, dequantize_int8, int4_linear, int8_linear, quantize_int4, quantize_int8


class Int4Linear(nn.Module):
    """compact=True stores the group scales as bfloat16 (float32's range, 2^-9 relative rounding, far
    below int4's own step) and, for symmetric codes, one zero point
    instead of one per group (QLoRA's frozen base: 0.53 bytes per weight at group 64, 3.8x below
    bf16); each call then widens them, which costs a little on small, latency-bound calls."""

    def __init__(self, q: dict, in_features: int, out_features: int, bias: torch.Tensor | None = None,
                 compact: bool = False):
        super().__init__()
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
        y = int4_linear(x if dt in (torch.float32, torch.bfloat16) else x.float(), self._q(), self.bias)
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


def swap_linears(model: nn.Module, cls, targets=None, **kw) -> list[str]:
    """Replace nn.Linear children whose attribute name is in targets (all when None) by cls.from_linear."""
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and (targets is None or child_name in targets):
                setattr(module, child_name, cls.from_linear(child, **kw))
                swapped.append(f"{name}.{child_name}" if name else child_name)
    return swapped
