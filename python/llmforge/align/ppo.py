"""PPO for language models: a value head, per-token KL penalty to the reference, GAE, and
clipped policy / value losses.

    result = ppo(model, tokenizer, prompts, reward_fn, PPOConfig(steps=50))

Per step: sample one completion for each of `batch_prompts` prompts; token rewards are
-kl_beta * (log pi - log pi_ref) at every completion token, plus reward_fn(record, text)
at the last one; advantages and returns come from GAE over the value head's estimates
(a linear head on the policy's final hidden states); then `epochs` updates of the
clipped surrogate + value_coef * clipped value loss.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..config_check import check_config
from ..generate.engine import generate
from ..generate.sampling import SamplingParams
from ..train.lora import adapters_disabled, lora_modules
from ..train.metrics import MetricsLog, Progress
from .grpo import _batch, stop_ids
from .logprobs import token_logprobs
from .losses import gae, ppo_losses


@dataclass
class PPOConfig:
    out_dir: str = "runs/ppo"
    steps: int = 50
    batch_prompts: int = 16
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_k: int = 0
    lr: float = 1e-3
    kl_beta: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.5
    epochs: int = 2
    grad_clip: float = 1.0
    seed: int = 0
    max_seconds: float = 0.0      # wall-clock budget: stop after the step that passes it (0: none)
    progress: bool = True

    def __post_init__(self):
        check_config(self,
                     positive=("steps", "batch_prompts", "max_new_tokens", "lr", "epochs"),
                     fractions=("gamma", "lam"))


class ValueHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h):
        return self.proj(h).squeeze(-1).float()


def ppo(model, tokenizer, prompts, reward_fn, cfg: PPOConfig) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = getattr(tokenizer, "pad_id", None) or getattr(tokenizer, "eos_id", None) or 0
    stop = stop_ids(tokenizer)
    ref_model = None if lora_modules(model) else copy.deepcopy(model).eval().requires_grad_(False)
    value = ValueHead(model.cfg.dim)
    params = [p for p in model.parameters() if p.requires_grad] + list(value.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    log = MetricsLog(cfg.out_dir)
    bar = Progress(cfg.steps) if cfg.progress else None
    g = torch.Generator().manual_seed(cfg.seed)
    sp = SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k)
    history = []
    t_start = time.perf_counter()
    for step in range(cfg.steps):
        if cfg.max_seconds and step and time.perf_counter() - t_start > cfg.max_seconds:
            break
        idx = torch.randint(0, len(prompts), (cfg.batch_prompts,), generator=g).tolist()
        recs = [prompts[i] for i in idx]
        p_ids = [tokenizer.encode(r["prompt"]) for r in recs]
        gen = generate(model, p_ids, cfg.max_new_tokens, sp, stop_ids=stop, seed=cfg.seed * 7919 + step, pad_id=pad)
        scores = torch.tensor([float(reward_fn(r, tokenizer.decode(c))) for r, c in zip(recs, gen.tokens)])
        tokens, labels = _batch(p_ids, gen.tokens, pad)
        mask = (labels[:, 1:] != -100).float()
        with torch.no_grad():
            old = token_logprobs(model, tokens, labels)
            if ref_model is not None:
                ref = token_logprobs(ref_model, tokens, labels)
            else:
                with adapters_disabled(model):
                    ref = token_logprobs(model, tokens, labels)
            old_v = value(model.hidden_states(tokens)[:, :-1]) * mask
            rewards = -cfg.kl_beta * (old - ref) * mask
            last = mask.cumsum(-1).argmax(-1)               # index of each sequence's last completion token
            rewards[torch.arange(len(recs)), last] += scores
            adv, ret = gae(rewards, old_v, cfg.gamma, cfg.lam, mask)
            m = mask.bool()
            a_m = adv[m]
            adv = (adv - a_m.mean()) / (a_m.std() + 1e-8) * mask
        for _ in range(cfg.epochs):
            h = model.hidden_states(tokens)
            lp = token_logprobs(model, tokens, labels)
            v = value(h[:, :-1]) * mask
            pg, vl = ppo_losses(lp, old, adv, v, old_v, ret, mask, cfg.clip, cfg.value_clip)
            loss = pg + cfg.value_coef * vl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        history.append(scores.mean().item())
        log.write(step=step + 1, reward=history[-1], policy_loss=pg.item(), value_loss=vl.item())
        if bar:
            bar.update(step + 1, reward=history[-1])
    k = max(1, len(history) // 5)
    return {"reward_first": sum(history[:k]) / k, "reward_last": sum(history[-k:]) / k, "rewards": history,
            "steps": len(history), "seconds": time.perf_counter() - t_start,
            "value_head": value}
