"""AdamW step: llmforge.train.optim.AdamW (one fused native pass per float32 parameter,
csrc/cpu/adamw.cpp) vs torch.optim.AdamW (default: foreach) and torch's fused=True, on the
parameters of the ~10M train-bench model (11.0M float32 values, 44 MB; each step reads and
writes parameter, gradient and both moments). One step of each in turn per round.

    python -m bench adamw [--record] [--quick]
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fns_interleaved
from llmforge.model import ModelConfig, Transformer
from llmforge.train.optim import AdamW


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        raise SystemExit("bench adamw: CPU only")
    cfg = ModelConfig(vocab_size=4096, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024, max_seq_len=256)
    torch.manual_seed(0)
    impls = {"llmforge AdamW": lambda ps: AdamW(ps, lr=1e-4),
             "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
             "torch AdamW (fused=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)}
    steps = []
    n = 0
    for make in impls.values():
        params = [p.detach().clone().requires_grad_() for p in Transformer(cfg).parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        n = sum(p.numel() for p in params)
        steps.append(make(params).step)
    times = time_fns_interleaved(steps, device, warmup=3, iters=10 if quick else 40)
    moved = 7 * 4 * n  # read p, g, m, v; write p, m, v
    rows = [row(f"{n / 1e6:.1f}M float32 parameters", impl, t, device, bytes_moved=moved)
            for impl, t in zip(impls, times)]
    return finish(rows, baseline="torch AdamW (foreach)")
