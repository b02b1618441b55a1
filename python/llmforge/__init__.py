"""llmforge: train, align, quantize, export and serve language models on hand-written kernels.

    import llmforge
    llmforge.cuda_available()          # are the CUDA kernels usable here?
    from llmforge.ops import rmsnorm   # every op: torch custom op + autograd + reference
"""
from __future__ import annotations

import torch as _torch

from . import _C

__version__ = "0.1.0"


@_torch.compiler.assume_constant_result
def cuda_available() -> bool:
    """True when this build has CUDA kernels and a usable GPU is present.

    False (never an exception) on machines without a GPU or driver: the module
    links the CUDA runtime statically and treats any runtime error as "no GPU".
    """
    return bool(_C.built_with_cuda()) and _C.cuda_device_count() > 0


def build_info() -> dict:
    """What the native module was built with, which CPU paths it runs (vector ISA, AVX512-VNNI
    int8 dot products, native bf16 dot products: what `dtype = "auto"` trains in) and how many
    threads the CPU kernels use."""
    import torch

    return {
        "version": __version__,
        "torch": torch.__version__,
        "cuda_kernels": bool(_C.built_with_cuda()),
        "cuda_devices": int(_C.cuda_device_count()),
        "cpu_isa": _C.cpu_isa(),
        "cpu_best_isa": _C.cpu_best_isa(),
        "cpu_vnni": bool(_C.cpu_vnni()),
        "cpu_bf16_dot": bool(_C.cpu_bf16_dot()),
        "threads": torch.get_num_threads(),
    }


__all__ = ["cuda_available", "build_info", "__version__"]
