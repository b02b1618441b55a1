"""llmforge.ops: the only Python code that calls the native module llmforge._C.

Each op is a ``torch.library.custom_op`` (namespace ``llmforge``) with a fake
(meta) implementation for torch.compile, autograd where training needs it, and a
pure-torch reference (``<op>_reference``) that the tests compare against. qkv_rope
and linear_cross_entropy are custom ops too (linear_cross_entropy inside a
``torch.autograd.Function``, since its forward makes the gradients). gemm / linear call
the native GEMM directly in eager mode (no dispatcher on the hot path) and the
``llmforge::gemm`` custom op under torch.compile, so ``torch.compile(model,
fullgraph=True)`` traces the whole model (tests/model/test_compile.py).
"""
from .rmsnorm import rmsnorm, rmsnorm_reference, rmsnorm_residual, rmsnorm_residual_reference

__all__ = ["rmsnorm", "rmsnorm_reference", "rmsnorm_residual", "rmsnorm_residual_reference"]
from .paged_kv import (contiguous_decode_attention, contiguous_decode_attention_reference, paged_decode_attention,
                       paged_decode_attention_reference, paged_kv_append, paged_kv_append_reference, paged_kv_gather,
                       paged_kv_gather_reference)

__all__ += ["paged_kv_append", "paged_kv_gather", "paged_decode_attention", "contiguous_decode_attention",
            "paged_kv_append_reference", "paged_kv_gather_reference", "paged_decode_attention_reference",
            "contiguous_decode_attention_reference"]
from .rope import apply_rope, apply_rope_reference, rope_cos_sin, rope_frequencies

__all__ += ["apply_rope", "apply_rope_reference", "rope_cos_sin", "rope_frequencies"]
from .swiglu import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference

__all__ += ["swiglu", "swiglu_packed", "swiglu_packed_reference", "swiglu_reference"]
from .rmsnorm_gemm import rmsnorm_linear, rmsnorm_linear_reference

__all__ += ["rmsnorm_linear", "rmsnorm_linear_reference"]
from .int4_matmul import dequantize_int4, int4_linear, int4_linear_reference, quantize_int4
from .int8_matmul import (dequantize_int8, int8_linear, int8_linear_reference, quantize_activations_int8,
                          quantize_int8, w8a8_linear, w8a8_linear_reference)

__all__ += ["quantize_int4", "dequantize_int4", "int4_linear", "int4_linear_reference", "quantize_int8",
            "dequantize_int8", "int8_linear", "int8_linear_reference", "quantize_activations_int8", "w8a8_linear",
            "w8a8_linear_reference"]
from .attention import attention, attention_reference, attention_with_lse
from .attention import attention_varlen, attention_varlen_reference, attention_varlen_with_lse

__all__ += ["attention", "attention_reference", "attention_with_lse"]
__all__ += ["attention_varlen", "attention_varlen_reference", "attention_varlen_with_lse"]
from .cross_entropy import cross_entropy, cross_entropy_reference, linear_cross_entropy

__all__ += ["cross_entropy", "cross_entropy_reference", "linear_cross_entropy"]
from .qkv_rope import qkv_rope, qkv_rope_reference

__all__ += ["qkv_rope", "qkv_rope_reference"]
from .gemm import gemm, linear

__all__ += ["gemm", "linear"]
