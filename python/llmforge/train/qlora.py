"""QLoRA: freeze the base linears as int4 (group-wise, on the int4 matmul op), train LoRA adapters
in float32 on top (base: 0.53 bytes per weight, 3.8x below bf16); gradients reach the inputs
through the frozen int4 weights.

    names = quantize_base_linears(model, targets=DEFAULT_TARGETS, group_size=64)
    apply_lora(model, r=16, alpha=32, targets=DEFAULT_TARGETS)
"""
from __future__ import annotations

from ..quant.linear import Int4Linear, swap_linears
from .lora import DEFAULT_TARGETS


def quantize_base_linears(model, targets=DEFAULT_TARGETS, group_size: int = 64, symmetric: bool = True,
                          compact: bool = True) -> list[str]:
    """compact: bfloat16 group scales and one zero point per layer (see Int4Linear)."""
    names = swap_linears(model, Int4Linear, targets=tuple(targets), group_size=group_size, symmetric=symmetric,
                         compact=compact)
    if not names:
        raise ValueError(f"no nn.Linear named any of {tuple(targets)} to quantise")
    for p in model.parameters():
        p.requires_grad_(False)
    return names
