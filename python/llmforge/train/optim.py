"""Optimisers and learning-rate schedules.

    opt = make_optimizer(model, "adamw", lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    lr = cosine_lr(step, base_lr, min_lr, warmup, total)

Weight decay applies to matrices only (not norms, biases or embeddings' 1-D params).
AdamW: torch's update in one fused native pass per float32 CPU parameter (csrc/cpu/adamw.cpp).
Lion (Chen et al. 2023): update = sign(beta1*m + (1-beta1)*g); m = beta2*m + (1-beta2)*g.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                update = (m * b1 + p.grad * (1 - b1)).sign_()
                p.add_(update, alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


class AdamW(torch.optim.Optimizer):
    """AdamW with torch.optim.AdamW's maths, defaults and state names (step, exp_avg,
    exp_avg_sq: state dicts load into either), but one fused native pass per float32 CPU
    parameter (csrc/cpu/adamw.cpp) instead of five elementwise passes. Parameters elsewhere
    (CUDA, bfloat16) take the same update in torch ops. No amsgrad, no sparse gradients."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be finite and >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        from .. import _C
        from ..ops._native import threads

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                m, v = state["exp_avg"], state["exp_avg_sq"]
                # sharded parameters (FSDP2's DTensors) update their local shards
                local = [t.to_local() if hasattr(t, "to_local") else t for t in (p.detach(), g, m, v)]
                if all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in local):
                    if local[0].numel():
                        _C.adamw_step(*local, lr, b1, b2, eps, wd, step, threads())
                    continue
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))
        return loss


def param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str = "adamw", lr: float = 3e-4, weight_decay: float = 0.1,
                   betas=(0.9, 0.95), eps: float = 1e-8) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "lion":
        return Lion(groups, lr=lr, betas=tuple(betas))
    if name == "adamw8bit":
        from .optim8bit import AdamW8bit

        return AdamW8bit(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r} (adamw, lion, adamw8bit)")


def cosine_lr(step: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine decay to min_lr at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))
