"""GRPO (Shao et al. 2024): group sampling from the library's own generation engine,
verifiable rewards, group-normalised advantages, clipped ratios and a KL penalty.

    result = grpo(model, tokenizer, prompts, reward_fn, GRPOConfig(group_size=8, steps=50))
    # prompts: [{"prompt": str, "answer": str, ...}]; reward_fn(record, completion_text) -> float

Each step takes `prompts_per_step` prompts, samples `group_size` completions for each
(temperature sampling with a seed), scores them, and runs `inner_epochs` updates of the
clipped surrogate. The reference for the KL term is the initial policy: the LoRA base
(adapters disabled) when the model has adapters, else a frozen copy made at the start.
Prompts are fed as raw text (render a chat template into the prompt beforehand if wanted).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch

from ..config_check import check_config
from ..generate.engine import generate
from ..generate.sampling import SamplingParams
from ..train.lora import adapters_disabled, lora_modules
from ..train.metrics import MetricsLog, Progress
from ..train.optim import make_optimizer
from .logprobs import token_logprobs
from .losses import grpo_loss, group_advantages


@dataclass
class GRPOConfig:
    out_dir: str = "runs/grpo"
    steps: int = 50
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_k: int = 0
    lr: float = 1e-3
    clip: float = 0.2
    beta: float = 0.04
    inner_epochs: int = 1
    grad_clip: float = 1.0
    seed: int = 0
    max_seconds: float = 0.0      # wall-clock budget: stop after the step that passes it (0: none)
    log_every: int = 1
    progress: bool = True

    def __post_init__(self):
        check_config(self,
                     positive=("steps", "prompts_per_step", "group_size", "max_new_tokens", "lr", "inner_epochs", "log_every"))


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end a completion: end-of-sequence, and the chat end-of-turn token if known."""
    out = {getattr(tokenizer, "eos_id", None)}
    if hasattr(tokenizer, "token_to_id"):
        out.add(tokenizer.token_to_id("<|im_end|>"))
    return {int(i) for i in out if i is not None}


def _batch(prompts_ids, completions, pad):
    seqs = [p + c for p, c in zip(prompts_ids, completions)]
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts_ids, completions)):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
    return tokens, labels


def grpo(model, tokenizer, prompts, reward_fn, cfg: GRPOConfig) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = getattr(tokenizer, "pad_id", None) or getattr(tokenizer, "eos_id", None) or 0
    stop = stop_ids(tokenizer)
    ref_model = None if lora_modules(model) else copy.deepcopy(model).eval().requires_grad_(False)
    opt = make_optimizer(model, "adamw", cfg.lr, 0.0, (0.9, 0.95))
    log = MetricsLog(cfg.out_dir)
    bar = Progress(cfg.steps) if cfg.progress else None
    g = torch.Generator().manual_seed(cfg.seed)
    sp = SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k)
    history = []
    t_start = time.perf_counter()
    for step in range(cfg.steps):
        if cfg.max_seconds and step and time.perf_counter() - t_start > cfg.max_seconds:
            break
        idx = torch.randint(0, len(prompts), (cfg.prompts_per_step,), generator=g).tolist()
        recs = [prompts[i] for i in idx for _ in range(cfg.group_size)]
        p_ids = [tokenizer.encode(r["prompt"]) for r in recs]
        gen = generate(model, p_ids, cfg.max_new_tokens, sp, stop_ids=stop, seed=cfg.seed * 100003 + step, pad_id=pad)
        texts = [tokenizer.decode(c) for c in gen.tokens]
        rewards = torch.tensor([float(reward_fn(r, t)) for r, t in zip(recs, texts)])
        adv = group_advantages(rewards, cfg.group_size)
        tokens, labels = _batch(p_ids, gen.tokens, pad)
        mask = labels[:, 1:] != -100
        with torch.no_grad():
            old = token_logprobs(model, tokens, labels)
            if ref_model is not None:
                ref = token_logprobs(ref_model, tokens, labels)
            else:
                with adapters_disabled(model):
                    ref = token_logprobs(model, tokens, labels)
        for _ in range(cfg.inner_epochs):
            lp = token_logprobs(model, tokens, labels)
            loss, m = grpo_loss(lp, old, ref, adv, mask, cfg.clip, cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
        mean_r = rewards.mean().item()
        history.append(mean_r)
        if (step + 1) % cfg.log_every == 0:
            log.write(step=step + 1, reward=mean_r, loss=loss.item(), **m)
        if bar:
            bar.update(step + 1, reward=mean_r)
    k = max(1, len(history) // 5)
    return {"reward_first": sum(history[:k]) / k, "reward_last": sum(history[-k:]) / k, "rewards": history,
            "steps": len(history), "seconds": time.perf_counter() - t_start}
