"""llama.cpp's own block quantiser, reached through ctypes in the ggml library that the
llama-cpp-python package bundles: the reference that tests/export/test_ggml_quants.py and
bench/ops/bench_ggml_quants.py compare our C++ quantisers (ggml_quants.py) against.

    ref = load()                        # None when llama_cpp (or its libggml) is not installed
    q = ref.quantize(w, type_id)        # (rows, cols) float32 -> (rows, row_bytes) uint8

ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst, int64_t start,
int64_t nrows, int64_t n_per_row, const float * imatrix) -> size_t bytes written; with
imatrix NULL it runs ggml's reference quantisers.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np


class LlamaCppQuantizer:
    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        self._fn = lib.ggml_quantize_chunk
        self._fn.restype = ctypes.c_size_t
        self._fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_void_p]
        self._row_size = lib.ggml_row_size
        self._row_size.restype = ctypes.c_size_t
        self._row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def row_bytes(self, type_id: int, cols: int) -> int:
        return int(self._row_size(type_id, cols))

    def quantize(self, w: np.ndarray, type_id: int) -> np.ndarray:
        x = np.ascontiguousarray(w, dtype=np.float32)
        rows, cols = x.shape
        out = np.zeros((rows, self.row_bytes(type_id, cols)), dtype=np.uint8)
        n = self._fn(type_id, x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        if n != out.size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {out.size}")
        return out


def find_library() -> str | None:
    """The bundled ggml library that exports ggml_quantize_chunk (libggml-base.so, or a
    single libggml.so in older packages)."""
    try:
        import llama_cpp
    except Exception:
        return None
    root = os.path.dirname(llama_cpp.__file__)
    libs = sorted(glob.glob(os.path.join(root, "**", "libggml*.so*"), recursive=True))
    libs.sort(key=lambda p: (("ggml-base" not in p), p))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "ggml_quantize_chunk") and hasattr(lib, "ggml_row_size"):
            return path
    return None


def load() -> LlamaCppQuantizer | None:
    path = find_library()
    return None if path is None else LlamaCppQuantizer(ctypes.CDLL(path), path)
