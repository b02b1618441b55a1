"""The optimisation loop shared by the offline preference trainers (DPO, ORPO, KTO, reward model).

    log = optimize(model, cfg, step_fn, curves=("loss", "accuracy"))
    # step_fn(step) -> (loss tensor, {metric: float}); called once per step, in training mode

Per step: the trainer's step_fn samples its batch and returns the loss; the loop sets the
cosine learning rate (cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps), back-propagates, clips
the gradient norm of the trainable parameters (cfg.grad_clip; a non-finite loss or norm raises
FloatingPointError before the update) and steps AdamW (betas
0.9/0.95, cfg.weight_decay when the config has it, else 0). Every cfg.log_every steps and at
the last one, a record {step, loss, lr, metrics} goes to out_dir/metrics.jsonl (NaN metrics,
e.g. a KTO batch without undesirable examples, are left out); curves are drawn at the end.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch

from ..train.metrics import MetricsLog, Progress, plot_curves
from ..train.optim import cosine_lr, make_optimizer


def optimize(model: torch.nn.Module, cfg, step_fn: Callable[[int], tuple], curves=None,
             bar_key: str | None = None) -> MetricsLog:
    """Run cfg.steps optimisation steps of step_fn's loss on model's trainable parameters."""
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    opt = make_optimizer(model, "adamw", cfg.lr, getattr(cfg, "weight_decay", 0.0), (0.9, 0.95))
    params = [p for p in model.parameters() if p.requires_grad]
    log = MetricsLog(cfg.out_dir)
    bar = Progress(cfg.steps) if cfg.progress else None
    model.train()
    for step in range(cfg.steps):
        loss, metrics = step_fn(step)
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        if not (math.isfinite(loss.item()) and math.isfinite(norm)):  # stop before NaN reaches the weights
            raise FloatingPointError(f"step {step + 1}: loss {loss.item()}, gradient norm {norm}: not finite; the "
                                     f"weights were not updated (lower lr, or check the data)")
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
            log.write(step=step + 1, loss=loss.item(), lr=lr, **clean)
        if bar:
            extra = {bar_key: metrics[bar_key]} if bar_key and bar_key in metrics else {}
            bar.update(step + 1, loss=loss.item(), **extra)
    if curves:
        plot_curves(log.path, os.path.join(cfg.out_dir, "curves.png"), keys=tuple(curves))
    return log
