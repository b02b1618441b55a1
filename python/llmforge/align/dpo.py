"""Direct preference optimisation (DPO, plus IPO and label-smoothed / hinge variants).

    from llmforge.align.dpo import DPOConfig, dpo
    result = dpo(model, tokenizer, train_pairs, DPOConfig(out_dir="runs/dpo", beta=0.1), eval_pairs)

Only one model is held: the reference log-probabilities of every pair are computed once,
before training, with the initial policy (or, for a LoRA policy, with its adapters
disabled) and cached in out_dir/ref_logps.pt. A memory estimate is printed before the run.
Log-probabilities are computed chunk by chunk (align.logprobs), never holding full logits.
Reports preference accuracy and reward margin on the held-out pairs before and after.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass

import torch

from ..config_check import check_config
from ..train.lora import adapters_disabled, lora_modules
from .data import collate, tokenize_pairs
from .logprobs import sequence_logprobs
from .loop import optimize
from .losses import dpo_loss


@dataclass
class DPOConfig:
    """Objective: beta, loss_type ("sigmoid" | "ipo" | "hinge"), label_smoothing.
    Optimisation: steps, batch_size (pairs), lr, min_lr, warmup, weight_decay, grad_clip, seed.
    Data: template, max_len. Memory: chunk_tokens (log-prob chunk). Logging: log_every, out_dir."""
    out_dir: str = "runs/dpo"
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-4
    min_lr: float = 5e-5
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
        check_config(self,
                     positive=("beta", "steps", "batch_size", "lr", "max_len", "chunk_tokens", "log_every"),
                     fractions=("label_smoothing",))


def _pad_id(tokenizer) -> int:
    for name in ("pad_id", "eos_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def memory_estimate(model, cfg: DPOConfig, seq_len: int) -> dict:
    """Bytes: weights, gradients and AdamW states of the trainable parameters, and the
    largest transient (one log-prob chunk of logits plus the batch's hidden states)."""
    c = model.cfg
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = 2 * cfg.batch_size * seq_len
    acts = rows * c.dim * 4 * (c.n_layers * 12)          # rough: ~12 saved (rows x dim) floats per layer
    logits = min(rows, cfg.chunk_tokens) * c.vocab_size * 4 * 3
    return {"weights": params, "grads": trainable * 4, "optimizer": trainable * 8, "activations": acts,
            "logits_chunk": logits, "total": params + trainable * 12 + acts + logits}


@torch.no_grad()
def pair_logprobs(model, pairs, pad_id: int, batch_size: int, chunk_tokens: int, reference: bool = False) -> torch.Tensor:
    """(n, 2) summed reply log-probs of (chosen, rejected) for every pair, in eval mode.
    reference=True disables LoRA adapters (the base model is the reference)."""
    was = model.training
    model.eval()
    out = []
    ctx = adapters_disabled(model) if reference and lora_modules(model) else contextlib.nullcontext()
    with ctx:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            tokens, labels = collate(chunk, pad_id)
            lp = sequence_logprobs(model, tokens, labels, chunk_tokens=chunk_tokens)
            out.append(torch.stack([lp[:len(chunk)], lp[len(chunk):]], 1))
    model.train(was)
    return torch.cat(out).float()


def preference_metrics(model, pairs, ref: torch.Tensor, pad_id: int, cfg: DPOConfig) -> dict:
    pol = pair_logprobs(model, pairs, pad_id, cfg.batch_size, cfg.chunk_tokens)
    rc, rr = cfg.beta * (pol[:, 0] - ref[:, 0]), cfg.beta * (pol[:, 1] - ref[:, 1])
    return {"accuracy": (rc > rr).float().mean().item(), "reward_margin": (rc - rr).mean().item(),
            "logp_chosen_minus_rejected": (pol[:, 0] - pol[:, 1]).mean().item()}


def dpo(model, tokenizer, train_records, cfg: DPOConfig, eval_records=None) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = _pad_id(tokenizer)
    pairs = tokenize_pairs(train_records, tokenizer, cfg.template, cfg.max_len)
    held = tokenize_pairs(eval_records, tokenizer, cfg.template, cfg.max_len) if eval_records else None
    longest = max(max(len(p.chosen), len(p.rejected)) for p in pairs)
    est = memory_estimate(model, cfg, longest)
    print(f"dpo: memory estimate {est['total'] / 2**20:.1f} MiB (weights {est['weights'] / 2**20:.1f}, "
          f"grads+optimizer {(est['grads'] + est['optimizer']) / 2**20:.1f}, activations "
          f"{est['activations'] / 2**20:.1f}, logits chunk {est['logits_chunk'] / 2**20:.1f}); "
          f"one model, reference log-probs cached", file=sys.stderr)
    ref_path = os.path.join(cfg.out_dir, "ref_logps.pt")
    ref = pair_logprobs(model, pairs, pad, cfg.batch_size, cfg.chunk_tokens, reference=True)
    torch.save(ref, ref_path)
    ref_held = pair_logprobs(model, held, pad, cfg.batch_size, cfg.chunk_tokens, reference=True) if held else None
    before = preference_metrics(model, held, ref_held, pad, cfg) if held else None
    g = torch.Generator().manual_seed(cfg.seed)
    state = {"order": torch.randperm(len(pairs), generator=g), "pos": 0}

    def step_fn(step):  # epochs of shuffled pairs
        if state["pos"] + cfg.batch_size > len(state["order"]):
            state["order"], state["pos"] = torch.randperm(len(pairs), generator=g), 0
        idx = state["order"][state["pos"]:state["pos"] + cfg.batch_size].tolist()
        state["pos"] += cfg.batch_size
        tokens, labels = collate([pairs[i] for i in idx], pad)
        lp = sequence_logprobs(model, tokens, labels, chunk_tokens=cfg.chunk_tokens)
        n = len(idx)
        return dpo_loss(lp[:n], lp[n:], ref[idx, 0], ref[idx, 1], cfg.beta, cfg.loss_type, cfg.label_smoothing)

    optimize(model, cfg, step_fn, curves=("loss", "reward_margin", "accuracy"), bar_key="accuracy")
    after = preference_metrics(model, held, ref_held, pad, cfg) if held else None
    result = {"before": before, "after": after, "memory_estimate": est, "config": asdict(cfg)}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
