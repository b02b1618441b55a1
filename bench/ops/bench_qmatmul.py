"""Quantized matmul vs fp32 F.linear: int4 (group 64, symmetric) and int8 weight-only, W8A8.

    python -m bench qmatmul [--record]

GB/s counts the weight bytes read (packed codes + scales) plus x and y.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import int4_linear, int8_linear, quantize_int4, quantize_int8, w8a8_linear


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    rows = []
    torch.manual_seed(0)
    shapes = [(4096, 4096)] if quick else [(4096, 4096), (4096, 11008)]
    batches = (1,) if quick else (1, 4, 16, 256)
    for N, K in shapes:
        w = torch.randn(N, K) / K ** 0.5
        q4, q8 = quantize_int4(w, 64, True), quantize_int8(w)
        for M in batches:
            x = torch.randn(M, K)
            case = f"{M}x{K} @ {N}x{K}^T"
            flops = 2 * M * N * K
            fp_bytes = N * K * 4 + (M * K + M * N) * 4
            i4_bytes = N * K // 2 + q4["scales"].numel() * 8 + (M * K + M * N) * 4
            i8_bytes = N * K + N * 4 + (M * K + M * N) * 4
            with torch.no_grad():
                rows.append(row(case, "torch F.linear fp32", time_fn(lambda: F.linear(x, w)), bytes_moved=fp_bytes,
                                flops=flops))
                rows.append(row(case, "llmforge int4 g64", time_fn(lambda: int4_linear(x, q4)), bytes_moved=i4_bytes,
                                flops=flops))
                rows.append(row(case, "llmforge int8", time_fn(lambda: int8_linear(x, q8)), bytes_moved=i8_bytes,
                                flops=flops))
                if M > 1:
                    rows.append(row(case, "llmforge W8A8", time_fn(lambda: w8a8_linear(x, q8)), bytes_moved=i8_bytes,
                                    flops=flops))
    return finish(rows, baseline="torch F.linear fp32")
