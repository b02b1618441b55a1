"""RMSNorm forward/backward vs torch eager (composite and F.rms_norm); on CUDA also torch.compile.

    python -m bench rmsnorm [--device cuda] [--record]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import rmsnorm

EPS = 1e-6


def composite(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def run(device: str = "cpu", quick: bool = False):
    if device == "cpu":
        cases = [(8192, 4096, torch.float32), (8192, 4096, torch.bfloat16), (2048, 1000, torch.float32)]
    else:
        cases = [(16384, 4096, torch.bfloat16), (16384, 4096, torch.float16), (16384, 4096, torch.float32),
                 (4096, 8192, torch.bfloat16), (16384, 1000, torch.bfloat16)]
    if quick:
        cases = cases[:1]
    rows = []
    torch.manual_seed(0)
    for n, h, dt in cases:
        x = torch.randn(n, h, dtype=dt, device=device)
        w = torch.randn(h, dtype=dt, device=device)
        es = x.element_size()
        case = f"fwd {n}x{h} {str(dt).replace('torch.', '')}"
        fwd_bytes = 2 * n * h * es + h * es
        impls = {"llmforge": lambda: rmsnorm(x, w, EPS), "torch eager composite": lambda: composite(x, w),
                 "torch F.rms_norm": lambda: F.rms_norm(x, (h,), w, EPS)}
        if device == "cuda":
            impls["torch.compile composite"] = torch.compile(composite)
            impls["torch.compile composite"](x, w)
        with torch.no_grad():
            for name, fn in impls.items():
                rows.append(row(case, name, time_fn(fn if name != "torch.compile composite" else (lambda f=fn: f(x, w)), device),
                                device, bytes_moved=fwd_bytes))
        # backward: reads x, dy, writes dx (+ small dw)
        xg = x.clone().requires_grad_(True)
        wg = w.clone().requires_grad_(True)
        dy = torch.randn_like(x)
        bcase = f"bwd {n}x{h} {str(dt).replace('torch.', '')}"
        bwd_bytes = 3 * n * h * es + 2 * h * es
        y1 = rmsnorm(xg, wg, EPS)
        y2 = composite(xg, wg)
        rows.append(row(bcase, "llmforge", time_fn(lambda: torch.autograd.grad(y1, (xg, wg), dy, retain_graph=True), device),
                        device, bytes_moved=bwd_bytes))
        rows.append(row(bcase, "torch eager composite",
                        time_fn(lambda: torch.autograd.grad(y2, (xg, wg), dy, retain_graph=True), device),
                        device, bytes_moved=bwd_bytes))
    return finish(rows, baseline="torch eager composite")
