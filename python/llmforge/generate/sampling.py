"""Logit processing and seeded sampling.

    next_ids = sample(logits, SamplingParams(temperature=0.8, top_k=50, top_p=0.95, min_p=0.05,
                                             repetition_penalty=1.1, frequency_penalty=0.2,
                                             presence_penalty=0.1),
                      generator=g, history=prev_tokens)

Order: repetition penalty (divide positive / multiply negative logits of tokens already
seen), frequency penalty (subtract count * penalty), presence penalty (subtract the
penalty once from every token seen; OpenAI's two penalties), temperature, then top-k, top-p
(smallest set with cumulative probability >= p), min-p (drop tokens below min_p * max
prob); temperature 0 is greedy. Sampling uses the given torch.Generator, so a seed
reproduces the output exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an int, got {self.top_k!r}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise ValueError("min_p must be in [0, 1)")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def penalized(self) -> bool:
        """True when a repetition, frequency or presence penalty applies (sampling needs the history)."""
        return self.repetition_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)


def process_logits(logits: torch.Tensor, p: SamplingParams, history: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) float logits -> processed logits (masked entries are -inf)."""
    x = logits.float().clone()
    if history is not None and history.numel() and p.penalized:
        counts = torch.zeros_like(x)
        counts.scatter_add_(1, history.clamp(min=0), (history >= 0).float())
        seen = counts > 0
        if p.repetition_penalty != 1.0:
            x = torch.where(seen, torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty), x)
        if p.frequency_penalty:
            x = x - p.frequency_penalty * counts
        if p.presence_penalty:
            x = x - p.presence_penalty * seen.float()
    if p.temperature == 0:
        return x
    x = x / p.temperature
    if p.top_k and p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        cum = probs.cumsum(-1)
        drop = cum - probs >= p.top_p          # keep the smallest prefix reaching top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, sorted_x)
    if p.min_p > 0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < p.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return x


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None = None,
           history: torch.Tensor | None = None) -> torch.Tensor:
    x = process_logits(logits, p, history)
    if p.temperature == 0:
        return x.argmax(-1)
    return torch.multinomial(x.softmax(-1), 1, generator=generator).squeeze(-1)
