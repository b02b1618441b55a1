"""GGUF block quantisers: quantise throughput (MB/s of float32 input) per type on a 4096 x 4096
weight, llmforge (C++, csrc/cpu/ggml_quants.cpp) vs the gguf package's numpy quantiser
(legacy types only: it cannot write k-quants) vs llama.cpp's ggml_quantize_chunk through
ctypes (when llama-cpp-python is installed; single-threaded, as one call runs).

    python -m bench ggml_quants [--quick] [--record]
"""
from __future__ import annotations

import numpy as np
import torch

from bench.harness import finish, row, time_fn
from llmforge.export import llamacpp_ggml
from llmforge.export.ggml_quants import FORMATS, quantize

LEGACY = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def _row(case, impl, timing, nbytes):
    """GB/s and MB/s of float32 input quantised per second."""
    return row(case, impl, timing, bytes_moved=nbytes, **{"MB/s": f"{nbytes / (timing[0] * 1e-3) / 1e6:.0f}"})


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        raise ValueError("the GGUF quantisers run on the CPU")
    import gguf

    n = 1024 if quick else 4096
    w = (np.random.default_rng(0).standard_normal((n, n)) * 0.02).astype(np.float32)
    ref = llamacpp_ggml.load()
    rows = []
    # a 64 MB input per call: a few calls are enough, and the k-quant searches take seconds
    kw = dict(warmup=1, iters=3, min_time_s=0.0)
    for name, f in FORMATS.items():
        case = f"{name} {n}x{n}"
        nbytes = w.nbytes  # GB/s column = float32 input consumed per second
        threads = torch.get_num_threads()
        rows.append(_row(case, f"llmforge ({threads} threads)", time_fn(lambda: quantize(w, name), **kw), nbytes))
        if ref is not None:
            rows.append(_row(case, "llama.cpp ctypes", time_fn(lambda: ref.quantize(w, f.type_id), **kw), nbytes))
        if name in LEGACY:
            qt = getattr(gguf.GGMLQuantizationType, name.upper())
            rows.append(_row(case, "gguf numpy", time_fn(lambda: gguf.quants.quantize(w, qt), **kw), nbytes))
    return finish(rows, baseline="llama.cpp ctypes" if ref is not None else "gguf numpy")
