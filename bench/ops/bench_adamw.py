"""AdamW step as llmforge.train.make_optimizer builds it (torch.optim.AdamW with fused=True: one
multi-tensor pass) vs torch.optim.AdamW's default (on CPU a loop of per-tensor ops) and its
foreach=True variant, on the parameters of the ~10M train-bench model (11.0M float32 values;
each step reads parameter, gradient and both moments and writes three of them). One step of each in turn per round.

    python -m bench adamw [--record] [--quick]
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fns_interleaved
from llmforge.model import ModelConfig, Transformer
from llmforge.train.optim import make_optimizer


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        raise SystemExit("bench adamw: CPU only")
    cfg = ModelConfig(vocab_size=4096, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024, max_seq_len=256,
                      tie_embeddings=True)
    torch.manual_seed(0)
    impls = {"make_optimizer (torch fused)": lambda m: make_optimizer(m, "adamw", lr=1e-4, weight_decay=0.01),
             "torch AdamW (default)": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4),
             "torch AdamW (foreach=True)": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True)}
    steps = []
    n = 0
    for make in impls.values():
        model = Transformer(cfg)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        n = sum(p.numel() for p in model.parameters())
        steps.append(make(model).step)
    times = time_fns_interleaved(steps, device, warmup=3, iters=10 if quick else 40)
    moved = 7 * 4 * n  # read p, g, m, v; write p, m, v
    rows = [row(f"{n / 1e6:.1f}M float32 parameters", impl, t, device, bytes_moved=moved)
            for impl, t in zip(impls, times)]
    return finish(rows, baseline="torch AdamW (default)")
