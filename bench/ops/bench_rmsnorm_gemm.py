"""RMSNorm+GEMM (rmsnorm_linear) vs torch's separate F.rms_norm then x @ W.T, same dtype.

    python -m bench rmsnorm_gemm [--record] [--quick]

Cases: K = 4096 hidden, N = 4096 (and 11008) outputs, M = 1 .. 2048 rows, float32 and
bfloat16; "torch matmul only" (x @ W.T without the norm; cuBLAS on CUDA) is shown for
reference. One backward case (M = 512, float32) against torch's autograd of the same composite.
--device cuda runs the same cases on kernels/rmsnorm_gemm.cu (float32 there means bf16
tensor-core operands, so compare it with the bf16 cuBLAS row as well).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import rmsnorm_linear

EPS = 1e-6


def _timing(fn, device):
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    if once > 0.2:  # slow cases (torch bf16 at large M): a few calls
        return time_fn(fn, device, warmup=1, iters=3, min_time_s=0)
    return time_fn(fn, device)


def run(device: str = "cpu", quick: bool = False):
    K = 4096
    cases = [(m, 4096, torch.float32) for m in (1, 16, 128, 512, 2048)]
    cases += [(m, 4096, torch.bfloat16) for m in (1, 16, 128, 512)]
    cases += [(128, 11008, torch.float32), (128, 11008, torch.bfloat16)]
    if quick:
        cases = [(16, 4096, torch.float32), (128, 4096, torch.float32), (128, 4096, torch.bfloat16)]
    rows = []
    torch.manual_seed(0)
    for M, N, dt in cases:
        x = torch.randn(M, K, dtype=dt, device=device)
        g = torch.randn(K, dtype=dt, device=device)
        w = torch.randn(N, K, dtype=dt, device=device) / K**0.5
        case = f"fwd M={M} K={K} N={N} {str(dt).replace('torch.', '')}"
        flops = 2 * M * N * K
        with torch.no_grad():
            rows.append(row(case, "llmforge", _timing(lambda: rmsnorm_linear(x, g, w, EPS), device), device,
                            flops=flops))
            rows.append(row(case, "torch rms_norm + matmul",
                            _timing(lambda: F.rms_norm(x, (K,), g, EPS) @ w.t(), device), device, flops=flops))
            rows.append(row(case, "torch matmul only", _timing(lambda: x @ w.t(), device), device, flops=flops))
    if not quick:
        M, N, dt = 512, 4096, torch.float32
        x = torch.randn(M, K, dtype=dt, device=device, requires_grad=True)
        g = torch.randn(K, dtype=dt, device=device, requires_grad=True)
        w = (torch.randn(N, K, dtype=dt, device=device) / K**0.5).requires_grad_(True)
        dy = torch.randn(M, N, dtype=dt, device=device)
        y1 = rmsnorm_linear(x, g, w, EPS)
        y2 = F.rms_norm(x, (K,), g, EPS) @ w.t()
        case = f"bwd M={M} K={K} N={N} float32"
        flops = 4 * M * N * K
        rows.append(row(case, "llmforge", _timing(lambda: torch.autograd.grad(y1, (x, g, w), dy, retain_graph=True),
                                                  device), device, flops=flops))
        rows.append(row(case, "torch rms_norm + matmul",
                        _timing(lambda: torch.autograd.grad(y2, (x, g, w), dy, retain_graph=True), device), device,
                        flops=flops))
    return finish(rows, baseline="torch rms_norm + matmul")
