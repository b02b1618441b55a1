"""float32 GEMM: llmforge's (ops.gemm, csrc/cpu/gemm.cpp) vs torch.mm (MKL) on the matmuls of a
training step of the ~10M train-bench model (8 x 256 tokens, dim 384, ffn 1024, vocab 4096):
each layer's forward (x @ w^T), input gradient (dy @ w) and weight gradient (dy^T @ x), and the
output layer's chunked GEMMs. Both read the same operands (transposed views included) and
write into preallocated outputs; one call of each in turn per round.

    python -m bench gemm [--record] [--quick]
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fns_interleaved
from llmforge.ops import gemm


# (name, M, K, N, layout): "fwd" a @ b^T with b (N, K); "dx" a @ b, b (K, N); "dw" a^T @ b, a (K, M)
CASES = [
    ("gate/up fwd", 2048, 384, 2048, "fwd"),
    ("gate/up dx", 2048, 2048, 384, "dx"),
    ("gate/up dw", 2048, 2048, 384, "dw"),
    ("down fwd", 2048, 1024, 384, "fwd"),
    ("down dx", 2048, 384, 1024, "dx"),
    ("down dw", 384, 2048, 1024, "dw"),
    ("qkv fwd", 2048, 384, 640, "fwd"),
    ("qkv dw", 640, 2048, 384, "dw"),
    ("o_proj fwd", 2048, 384, 384, "fwd"),
    ("lm head fwd (1024-row chunk)", 1024, 384, 4096, "fwd"),
    ("lm head dh", 1024, 4096, 384, "dx"),
    ("lm head dw", 4096, 1024, 384, "dw"),
]


def _operands(M, K, N, layout):
    if layout == "fwd":
        return torch.randn(M, K), torch.randn(N, K).t()
    if layout == "dx":
        return torch.randn(M, K), torch.randn(K, N)
    return torch.randn(K, M).t(), torch.randn(K, N)


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        raise SystemExit("bench gemm: CPU only (CUDA matmuls use cuBLAS)")
    rows = []
    torch.manual_seed(0)
    cases = CASES[:3] if quick else CASES
    for name, M, K, N, layout in cases:
        a, b = _operands(M, K, N, layout)
        c1, c2 = torch.empty(M, N), torch.empty(M, N)
        times = time_fns_interleaved([lambda: gemm(a, b, out=c1), lambda: torch.mm(a, b, out=c2)], device,
                                     warmup=3, iters=10 if quick else 30)
        case = f"{name}: M={M} K={K} N={N}"
        flops = 2 * M * N * K
        rows.append(row(case, "llmforge gemm", times[0], device, flops=flops))
        rows.append(row(case, "torch.mm (MKL)", times[1], device, flops=flops))
    return finish(rows, baseline="torch.mm (MKL)")
