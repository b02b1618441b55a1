"""Preference and RL losses, written once and tested against float64 formulas.

All take per-sequence summed log-probabilities (policy and reference) as 1-D tensors and
return (loss, metrics). Notation: z = (pi_c - pi_r) - (ref_c - ref_r); sigma = logistic.

    dpo_loss      sigmoid: -(1-eps) log sigma(beta z) - eps log sigma(-beta z)   (eps: label smoothing)
                  ipo:     (z - 1/(2 beta))^2
                  hinge:   relu(1 - beta z)
    kto_loss      desirable: 1 - sigma(beta (r - z0)), undesirable: 1 - sigma(beta (z0 - r)),
                  r = pi - ref, z0 = max(0, KL estimate) (no gradient); weighted lambda_d / lambda_u
    orpo_loss     nll(chosen) - lambda log sigma(log odds(chosen) - log odds(rejected)),
                  odds from the length-normalised log-probability p: log(p / (1 - p))
    bt_loss       Bradley-Terry reward-model loss -log sigma(r_c - r_r - margin)
    grpo_loss     clipped surrogate with group-normalised advantages + beta * k3 KL to the reference
    ppo_losses    clipped policy surrogate, clipped value loss; gae() for advantages and returns
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_same(*ts):
    shapes = {tuple(t.shape) for t in ts}
    if len(shapes) != 1:
        raise ValueError(f"inputs must share one shape, got {sorted(shapes)}")


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    _check_same(pi_c, pi_r, ref_c, ref_r)
    if beta <= 0:
        raise ValueError("beta must be positive")
    z = (pi_c - pi_r) - (ref_c - ref_r)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid, ipo, hinge)")
    rc, rr = beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()
    return losses.mean(), {"reward_chosen": rc.mean().item(), "reward_rejected": rr.mean().item(),
                           "reward_margin": (rc - rr).mean().item(), "accuracy": (rc > rr).float().mean().item()}


def kto_loss(pi, ref, desirable: torch.Tensor, kl: torch.Tensor | float, beta: float = 0.1,
             w_desirable: float = 1.0, w_undesirable: float = 1.0):
    _check_same(pi, ref, desirable)
    z0 = torch.as_tensor(kl, dtype=pi.dtype, device=pi.device).detach().clamp(min=0)
    r = pi - ref
    d = desirable.bool()
    losses = torch.where(d, w_desirable * (1 - torch.sigmoid(beta * (r - z0))),
                         w_undesirable * (1 - torch.sigmoid(beta * (z0 - r))))
    rd = r.detach()
    return losses.mean(), {"reward_desirable": rd[d].mean().item() if d.any() else float("nan"),
                           "reward_undesirable": rd[~d].mean().item() if (~d).any() else float("nan"),
                           "kl": float(z0)}


def _log_odds(avg_logp):
    # log(p / (1 - p)) = log p - log(1 - p), with log(1 - p) = log1p(-exp(log p)), stable for log p < 0
    return avg_logp - torch.log1p(-torch.exp(avg_logp.clamp(max=-1e-6)))


def orpo_loss(avg_c, avg_r, nll_c, lam: float = 0.1):
    """avg_c/avg_r: length-normalised sequence log-probs; nll_c: the chosen SFT loss (per sequence)."""
    _check_same(avg_c, avg_r, nll_c)
    ratio = _log_odds(avg_c) - _log_odds(avg_r)
    losses = nll_c - lam * F.logsigmoid(ratio)
    return losses.mean(), {"log_odds_ratio": ratio.mean().item(), "accuracy": (ratio > 0).float().mean().item(),
                           "nll": nll_c.mean().item()}


def bt_loss(r_c, r_r, margin: float | torch.Tensor = 0.0):
    _check_same(r_c, r_r)
    losses = -F.logsigmoid(r_c - r_r - margin)
    return losses.mean(), {"accuracy": (r_c > r_r).float().mean().item(),
                           "margin": (r_c - r_r).mean().item()}


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: rewards (n_groups * group_size,) normalised within each group."""
    if rewards.numel() % group_size:
        raise ValueError("rewards must be a whole number of groups")
    g = rewards.view(-1, group_size).double()
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1).to(rewards.dtype)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip: float = 0.2, beta: float = 0.04):
    """Per-token tensors (B, T); advantages (B,). Token losses are averaged per sequence, then over sequences."""
    _check_same(logp, old_logp, ref_logp, mask)
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1          # k3 estimator, >= 0
    per_tok = -(surrogate - beta * kl)
    m = mask.to(logp.dtype)
    per_seq = (per_tok * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per_seq.mean(), {"kl": ((kl * m).sum() / m.sum().clamp(min=1)).item(),
                            "clip_frac": (((ratio - 1).abs() > clip).to(m.dtype) * m).sum().item() / max(1, m.sum().item())}


def gae(rewards, values, gamma: float = 1.0, lam: float = 0.95, mask=None):
    """Generalised advantage estimation over (B, T) token rewards and values (value after the
    last token is 0). Returns (advantages, returns)."""
    _check_same(rewards, values)
    B, T = rewards.shape
    m = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        nxt = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = delta + gamma * lam * last * (m[:, t + 1] if t + 1 < T else 0)
        adv[:, t] = last * m[:, t]
    return adv, (adv + values) * m


def ppo_losses(logp, old_logp, advantages, values, old_values, returns, mask, clip: float = 0.2,
               value_clip: float = 0.2):
    """Clipped policy surrogate and clipped value loss, averaged over unmasked tokens."""
    _check_same(logp, old_logp, advantages, values, old_values, returns, mask)
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1)
    ratio = torch.exp(logp - old_logp)
    pg = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    v_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    vl = 0.5 * torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    return (pg * m).sum() / n, (vl * m).sum() / n
