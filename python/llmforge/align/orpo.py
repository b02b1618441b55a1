"""ORPO (Hong et al. 2024): reference-free preference optimisation in one stage with SFT.

    result = orpo(model, tokenizer, train_pairs, ORPOConfig(lam=0.1), eval_pairs)

loss = NLL(chosen reply) - lam * log sigma(log odds(chosen) - log odds(rejected)), with odds
from the length-normalised reply log-probability. No reference model at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config_check import check_config
from .data import collate, tokenize_pairs
from .dpo import _pad_id
from .logprobs import sequence_logprobs
from .loop import optimize
from .losses import orpo_loss


@dataclass
class ORPOConfig:
    out_dir: str = "runs/orpo"
    lam: float = 0.1
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    template: str = "chatml"
    max_len: int = 256
    chunk_tokens: int = 1024
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        check_config(self, positive=("steps", "batch_size", "lr", "max_len", "chunk_tokens", "log_every"))


def _avg_logps(model, pairs, pad, chunk_tokens):
    tokens, labels = collate(pairs, pad)
    lp, n = sequence_logprobs(model, tokens, labels, chunk_tokens=chunk_tokens, return_counts=True)
    return lp / n.clamp(min=1), n


@torch.no_grad()
def odds_accuracy(model, pairs, pad, cfg) -> dict:
    was = model.training
    model.eval()
    ratios = []
    for i in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[i:i + cfg.batch_size]
        avg, _ = _avg_logps(model, chunk, pad, cfg.chunk_tokens)
        ratios.append(avg[:len(chunk)] - avg[len(chunk):])
    model.train(was)
    r = torch.cat(ratios)
    return {"accuracy": (r > 0).float().mean().item(), "avg_logp_margin": r.mean().item()}


def orpo(model, tokenizer, train_records, cfg: ORPOConfig, eval_records=None) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = _pad_id(tokenizer)
    pairs = tokenize_pairs(train_records, tokenizer, cfg.template, cfg.max_len)
    held = tokenize_pairs(eval_records, tokenizer, cfg.template, cfg.max_len) if eval_records else None
    before = odds_accuracy(model, held, pad, cfg) if held else None
    g = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step):
        idx = torch.randint(0, len(pairs), (cfg.batch_size,), generator=g).tolist()
        avg, _ = _avg_logps(model, [pairs[i] for i in idx], pad, cfg.chunk_tokens)
        n = len(idx)
        return orpo_loss(avg[:n], avg[n:], -avg[:n], cfg.lam)

    optimize(model, cfg, step_fn)
    after = odds_accuracy(model, held, pad, cfg) if held else None
    return {"before": before, "after": after}
