"""llama.cpp's GGUF block quantisation formats: rows of float32 to the exact block bytes
ggml's own quantiser writes, and back. The kernels are C++ (csrc/cpu/ggml_quants.cpp,
compiled without FMA contraction so every float rounds as in ggml's scalar reference code);
tests/export/test_ggml_quants.py checks the bytes against the `gguf` package and against
llama.cpp's ggml_quantize_chunk itself.

    q = quantize(w, "q4_k")            # (rows, cols) float -> (rows, row_bytes("q4_k", cols)) uint8
    w2 = dequantize(q, "q4_k", cols)   # -> (rows, cols) float32

    type   block  bytes  bits/weight  scheme
    q4_0   32     18     4.5          x = d (q - 8)
    q4_1   32     20     5.0          x = d q + m
    q5_0   32     22     5.5          x = d (q - 16)
    q5_1   32     24     6.0          x = d q + m
    q8_0   32     34     8.5          x = d q
    q4_k   256    144    4.5          8 sub-blocks of 32, 6-bit scales and mins: x = d sc q - dmin m
    q5_k   256    176    5.5          as q4_k with 5-bit q
    q6_k   256    210    6.5625       16 sub-blocks of 16, int8 scales: x = d sc (q - 32)

Without an importance matrix ggml_quantize_chunk runs the reference quantisers for all of
these, which is what this module reproduces (no imatrix support here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _C


@dataclass(frozen=True)
class GgmlFormat:
    name: str         # lower case, as export_gguf's qtype
    type_id: int      # ggml's enum ggml_type (= gguf.GGMLQuantizationType value)
    block: int        # values per block
    block_bytes: int  # bytes per block


FORMATS = {f.name: f for f in (
    GgmlFormat("q4_0", 2, 32, 18), GgmlFormat("q4_1", 3, 32, 20), GgmlFormat("q5_0", 6, 32, 22),
    GgmlFormat("q5_1", 7, 32, 24), GgmlFormat("q8_0", 8, 32, 34), GgmlFormat("q4_k", 12, 256, 144),
    GgmlFormat("q5_k", 13, 256, 176), GgmlFormat("q6_k", 14, 256, 210))}


def _format(qtype: str) -> GgmlFormat:
    f = FORMATS.get(str(qtype).lower())
    if f is None:
        raise ValueError(f"unknown ggml quantisation type {qtype!r}; one of {sorted(FORMATS)}")
    return f


def row_bytes(qtype: str, cols: int) -> int:
    f = _format(qtype)
    if cols % f.block:
        raise ValueError(f"{qtype}: rows of {cols} values are not a multiple of {f.block} (the block size)")
    return cols // f.block * f.block_bytes


def _float32_rows(w) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        if not w.dtype.is_floating_point:
            raise ValueError(f"expected a floating-point tensor, got {w.dtype}")
        w = w.detach().to("cpu", torch.float32).numpy()
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ValueError(f"expected a floating-point array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, cols) weight, got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    return w if w.flags.writeable else w.copy()  # DLPack will not export read-only arrays


def quantize(w, qtype: str) -> np.ndarray:
    """(rows, cols) float array or tensor -> (rows, row_bytes) uint8 holding ggml blocks.

    Raises ValueError for an unknown type, cols not a multiple of the block size, a
    non-float dtype, or NaN / infinity in w."""
    f = _format(qtype)
    x = _float32_rows(w)
    q = np.empty((x.shape[0], row_bytes(qtype, x.shape[1])), dtype=np.uint8)
    _C.ggml_quantize(x, q, f.type_id, torch.get_num_threads())
    return q


def dequantize(data, qtype: str, cols: int) -> np.ndarray:
    """(rows, row_bytes) uint8 blocks -> (rows, cols) float32, computed as ggml's dequantize_row_*."""
    f = _format(qtype)
    q = np.asarray(data)
    if q.dtype != np.uint8:
        raise ValueError(f"expected uint8 block bytes, got dtype {q.dtype}")
    nbytes = row_bytes(qtype, cols)
    if q.ndim == 1 or q.shape[-1] != nbytes:
        if q.size % nbytes:
            raise ValueError(f"{q.size} bytes are not whole rows of {cols} {qtype} values ({nbytes} bytes each)")
        q = q.reshape(-1, nbytes)
    q = np.ascontiguousarray(q.reshape(-1, nbytes))
    if not q.flags.writeable:  # e.g. a GGUFReader memmap: DLPack will not export read-only arrays
        q = q.copy()
    y = np.empty((q.shape[0], cols), dtype=np.float32)
    _C.ggml_dequantize(q, y, f.type_id, torch.get_num_threads())
    return y


# The verbs for one format, as earlier callers used them.
def quantize_q8_0(w) -> np.ndarray:
    return quantize(w, "q8_0")


def dequantize_q8_0(data, cols: int) -> np.ndarray:
    return dequantize(data, "q8_0", cols)


def quantize_q4_0(w) -> np.ndarray:
    return quantize(w, "q4_0")


def dequantize_q4_0(data, cols: int) -> np.ndarray:
    return dequantize(data, "q4_0", cols)
