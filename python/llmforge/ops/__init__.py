"""llmforge.ops: the only Python code that calls the native module llmforge._C.

Each op is a ``torch.library.custom_op`` (namespace ``llmforge``) with a fake
(meta) implementation for torch.compile, autograd where training needs it, and a
pure-torch reference (``<op>_reference``) that the tests compare against.
"""
from .rmsnorm import rmsnorm, rmsnorm_reference, rmsnorm_residual, rmsnorm_residual_reference

__all__ = ["rmsnorm", "rmsnorm_reference", "rmsnorm_residual", "rmsnorm_residual_reference"]
from .attention import attention, attention_reference, attention_with_lse

__all__ += ["attention", "attention_reference", "attention_with_lse"]
