"""llmforge.ops: the only Python code that calls the native module llmforge._C.

Each op is a ``torch.library.custom_op`` (namespace ``llmforge``) with a fake
(meta) implementation for torch.compile, autograd where training needs it, and a
pure-torch reference (``<op>_reference``) that the tests compare against.
"""
from .rmsnorm import rmsnorm, rmsnorm_reference, rmsnorm_residual, rmsnorm_residual_reference

__all__ = ["rmsnorm", "rmsnorm_reference", "rmsnorm_residual", "rmsnorm_residual_reference"]
from .paged_kv import (contiguous_decode_attention, contiguous_decode_attention_reference, paged_decode_attention,
                       paged_decode_attention_reference, paged_kv_append, paged_kv_append_reference, paged_kv_gather,
                       paged_kv_gather_reference)

__all__ += ["paged_kv_append", "paged_kv_gather", "paged_decode_attention", "contiguous_decode_attention",
            "paged_kv_append_reference", "paged_kv_gather_reference", "paged_decode_attention_reference",
            "contiguous_decode_attention_reference"]
from .rope import apply_rope, apply_rope_reference, rope_cos_sin

__all__ += ["apply_rope", "apply_rope_reference", "rope_cos_sin"]
from .swiglu import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference

__all__ += ["swiglu", "swiglu_packed", "swiglu_packed_reference", "swiglu_reference"]
from .rmsnorm_gemm import rmsnorm_linear, rmsnorm_linear_reference

__all__ += ["rmsnorm_linear", "rmsnorm_linear_reference"]
