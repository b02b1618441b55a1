"""Fill-in-the-middle (Bavarian et al. 2022): teach a causal LM to infill by moving a random
middle span of some documents to the end.

    doc = fim_transform(tokens, rng, rate=0.5, prefix_id=p, suffix_id=s, middle_id=m)

With probability `rate` a document is cut at two uniformly random token positions into
prefix / middle / suffix and rewritten as PSM: <fim_prefix> prefix <fim_suffix> suffix
<fim_middle> middle (or, with probability spm_rate among those, SPM: <fim_prefix> <fim_suffix>
suffix <fim_middle> prefix middle). Cuts are at token boundaries. The other documents are
returned unchanged. FIM_TOKENS are the special-token names the tokenizer needs.
"""
from __future__ import annotations

import random

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


def fim_transform(tokens: list[int], rng: random.Random, rate: float, prefix_id: int, suffix_id: int,
                  middle_id: int, spm_rate: float = 0.0) -> list[int]:
    if not 0.0 <= rate <= 1.0 or not 0.0 <= spm_rate <= 1.0:
        raise ValueError("rate and spm_rate must be in [0, 1]")
    if len(tokens) < 2 or rng.random() >= rate:
        return list(tokens)
    a, b = sorted(rng.randint(0, len(tokens)) for _ in range(2))
    prefix, middle, suffix = tokens[:a], tokens[a:b], tokens[b:]
    if rng.random() < spm_rate:
        return [prefix_id, suffix_id, *suffix, middle_id, *prefix, *middle]
    return [prefix_id, *prefix, suffix_id, *suffix, middle_id, *middle]
