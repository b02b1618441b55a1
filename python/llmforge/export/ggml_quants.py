"""ggml block quantisation formats, written from the format definitions (numpy, row-major,
blocks of 32 along each row). Bytes are meant to equal ggml's reference quantisers
(quantize_row_q8_0_ref / quantize_row_q4_0_ref): float32 arithmetic, scales stored as
float16, roundf (half away from zero) for Q8_0 and truncation of x/d + 8.5 for Q4_0.

    Q8_0 block (34 bytes): fp16 d = amax / 127; 32 x int8 q = round(x / d)
    Q4_0 block (18 bytes): fp16 d = m / -8 (m: the value of largest magnitude);
                           16 bytes, byte j = q[j] | q[j + 16] << 4, q = min(15, trunc(x / d + 8.5))
"""
from __future__ import annotations

import numpy as np

QK = 32


def _blocks(w: np.ndarray) -> np.ndarray:
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {w.shape}")
    if w.shape[1] % QK:
        raise ValueError(f"row length {w.shape[1]} is not a multiple of {QK}")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or infinity")
    return w.reshape(w.shape[0], -1, QK)


def _roundf(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """(rows, cols) float -> (rows, cols // 32 * 34) uint8."""
    b = _blocks(w)
    amax = np.abs(b).max(-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _roundf(b * inv).astype(np.int8)
    out = np.empty(b.shape[:2] + (34,), dtype=np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(b.shape[:2] + (2,))
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(w.shape[0], -1)


def dequantize_q8_0(data: np.ndarray, cols: int) -> np.ndarray:
    b = np.ascontiguousarray(data).reshape(data.shape[0], cols // QK, 34)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    q = b[..., 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(data.shape[0], cols)


def quantize_q4_0(w: np.ndarray) -> np.ndarray:
    b = _blocks(w)
    idx = np.abs(b).argmax(-1)[..., None]                    # first index of the largest magnitude
    m = np.take_along_axis(b, idx, -1)
    d = m / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(15, np.trunc(b * inv + np.float32(8.5))).astype(np.uint8)
    out = np.empty(b.shape[:2] + (18,), dtype=np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(b.shape[:2] + (2,))
    out[..., 2:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(w.shape[0], -1)


def dequantize_q4_0(data: np.ndarray, cols: int) -> np.ndarray:
    b = np.ascontiguousarray(data).reshape(data.shape[0], cols // QK, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    qs = b[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], -1).astype(np.float32) - 8
    return (q * d).reshape(data.shape[0], cols)


QUANTIZERS = {"q8_0": (quantize_q8_0, dequantize_q8_0), "q4_0": (quantize_q4_0, dequantize_q4_0)}
