"""Round-to-nearest group quantisation (the baseline every other quantiser is measured against).

    codes, scales, zeros = quantize_groups(w, bits=4, group_size=64, symmetric=False)
    w_hat = dequantize_groups(codes, scales, zeros, group_size)

Groups run along in_features (columns). Asymmetric: scale = (max - min) / (2^bits - 1),
zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 2^bits - 1).
Symmetric: scale = absmax / (2^(bits-1) - 1), zero = 2^(bits-1), same clamp range.
w_hat = (q - zero) * scale. Codes are uint8 (unpacked); packing for the kernels is the
quantized-matmul op's business.
"""
from __future__ import annotations

import torch


def group_params(w: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero for each row of w (rows are groups here): (n, 1) each."""
    qmax = 2 ** bits - 1
    if symmetric:
        amax = w.abs().amax(-1, keepdim=True)
        scale = amax / (2 ** (bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo = w.amin(-1, keepdim=True).clamp(max=0)
        hi = w.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.round(-lo / scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, zero


def quantize_with(w, scale, zero, bits):
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
    return q, (q - zero) * scale


def _check(w, group_size):
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if w.shape[1] % group_size:
        raise ValueError(f"in_features {w.shape[1]} is not a multiple of group_size {group_size}")
    if not torch.isfinite(w).all():
        raise ValueError("weight contains NaN or infinity")


def quantize_groups(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = False):
    _check(w, group_size)
    out, inp = w.shape
    g = w.double().reshape(out, inp // group_size, group_size)
    scale, zero = group_params(g, bits, symmetric)
    q, _ = quantize_with(g, scale, zero, bits)
    return q.reshape(out, inp).to(torch.uint8), scale.squeeze(-1).float(), zero.squeeze(-1).float()


def dequantize_groups(codes, scales, zeros, group_size: int) -> torch.Tensor:
    out, inp = codes.shape
    q = codes.double().reshape(out, inp // group_size, group_size)
    return ((q - zeros.double()[..., None]) * scales.double()[..., None]).reshape(out, inp).float()


def rtn(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = False) -> torch.Tensor:
    """The dequantised RTN weight (for quality evaluation)."""
    return dequantize_groups(*quantize_groups(w, bits, group_size, symmetric), group_size).to(w.dtype)
