"""llmforge.merge: merging models that share an architecture (state dicts in, state dict out).

    merged = merge_linear([sd_a, sd_b], weights=[0.7, 0.3])
    merged = merge_slerp(sd_a, sd_b, t=0.5)
    merged = merge_task_arithmetic(base, [ft_a, ft_b], scale=1.0)
    merged = merge_ties(base, [ft_a, ft_b], density=0.2, scale=1.0)
    merged = merge_dare(base, [ft_a, ft_b], drop=0.9, seed=0)            # rescaled by 1 / (1 - drop)
LoRA adapters fold into base weights with llmforge.train.lora.merge_lora.
"""
from .methods import merge_dare, merge_linear, merge_slerp, merge_task_arithmetic, merge_ties

__all__ = ["merge_linear", "merge_slerp", "merge_task_arithmetic", "merge_ties", "merge_dare"]
