"""SwiGLU forward/backward vs torch eager (F.silu(gate) * up), separate and packed operands.

    python -m bench swiglu [--record]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import swiglu, swiglu_packed


def run(device: str = "cpu", quick: bool = False):
    cases = [(2048, 11008, torch.float32), (2048, 11008, torch.bfloat16), (16, 1001, torch.float32)]
    if quick:
        cases = cases[:1]
    rows = []
    torch.manual_seed(0)
    for n, f, dt in cases:
        g, u = torch.randn(n, f, dtype=dt, device=device), torch.randn(n, f, dtype=dt, device=device)
        x = torch.cat([g, u], -1)
        es = g.element_size()
        tag = f"{n}x{f} {str(dt).replace('torch.', '')}"
        with torch.no_grad():
            case = f"fwd {tag}"
            nb = 3 * n * f * es
            rows.append(row(case, "llmforge", time_fn(lambda: swiglu(g, u), device), device, bytes_moved=nb))
            rows.append(row(case, "llmforge packed", time_fn(lambda: swiglu_packed(x), device), device, bytes_moved=nb))
            rows.append(row(case, "torch eager", time_fn(lambda: F.silu(g) * u, device), device, bytes_moved=nb))
            rows.append(row(case, "torch eager packed", time_fn(lambda: (lambda a, b: F.silu(a) * b)(*x.chunk(2, -1)), device),
                            device, bytes_moved=nb))
        gs, us = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
        dy = torch.randn_like(g)
        y1, y2 = swiglu(gs, us), F.silu(gs) * us
        case = f"bwd {tag}"
        nb = 5 * n * f * es
        rows.append(row(case, "llmforge", time_fn(lambda: torch.autograd.grad(y1, (gs, us), dy, retain_graph=True), device),
                        device, bytes_moved=nb))
        rows.append(row(case, "torch eager", time_fn(lambda: torch.autograd.grad(y2, (gs, us), dy, retain_graph=True),
                                                     device), device, bytes_moved=nb))
    return finish(rows, baseline="torch eager")
