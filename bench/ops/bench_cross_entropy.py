"""Cross-entropy forward + backward vs torch eager (F.cross_entropy on float logits), and the
fused output layer + loss (linear_cross_entropy) vs F.linear + F.cross_entropy, at the shapes
of the training benchmark (2048 tokens, vocab 4096, dim 384).

    python -m bench cross_entropy [--record]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import cross_entropy, linear_cross_entropy


def run(device: str = "cpu", quick: bool = False):
    cases = [(2048, 4096, 384), (512, 32000, 512)]
    if quick or device != "cpu":
        cases = cases[:1]
    rows = []
    torch.manual_seed(0)
    for n, v, d in cases:
        logits = torch.randn(n, v, device=device) * 3
        targets = torch.randint(0, v, (n,), device=device)
        x = logits.clone().requires_grad_(True)
        case = f"loss fwd+bwd {n}x{v} float32"
        nb = 3 * n * v * 4  # read the logits twice (forward, backward), write their gradient
        rows.append(row(case, "llmforge", time_fn(lambda: cross_entropy(x, targets).sum().backward(), device),
                        device, bytes_moved=nb))
        rows.append(row(case, "torch eager", time_fn(
            lambda: F.cross_entropy(x, targets, reduction="sum").backward(), device), device, bytes_moved=nb))
        h = torch.randn(n, d, device=device, requires_grad=True)
        w = (torch.randn(v, d, device=device) / d ** 0.5).requires_grad_(True)
        case = f"output layer + loss fwd+bwd {n}x{d} @ {v}x{d} float32"
        fl = 3 * 2 * n * d * v
        rows.append(row(case, "llmforge", time_fn(lambda: linear_cross_entropy(h, w, targets).backward(), device),
                        device, flops=fl))
        rows.append(row(case, "torch eager", time_fn(
            lambda: F.cross_entropy(F.linear(h, w), targets, reduction="sum").backward(), device), device, flops=fl))
    return finish(rows, baseline="torch eager")
