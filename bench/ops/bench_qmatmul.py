"""Quantized matmul vs fp32 F.linear: int4 (group 64, symmetric) and int8 weight-only, W8A8.

    python -m bench qmatmul [--record]

GB/s counts the weight bytes read (packed codes + scales) plus x and y.

    python -m bench qmatmul --device cuda [--record]

CUDA cases (kernels/int4_matmul.cu, kernels/int8_matmul.cu): int4 g128 GEMV for W 8192x8192
and 4096x14336 (N x K) at batch 1 and 16 against bf16 torch.matmul (cuBLAS) on the same
weight, with "% peak" = weight-stream GB/s over the measured device copy bandwidth; W8A8
at 4096^3 against bf16 cuBLAS (TFLOP/s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import (int4_linear, int8_linear, quantize_activations_int8, quantize_int4, quantize_int8,
                          w8a8_linear)
from llmforge.ops._native import C, stream


def run_cuda(quick: bool = False):
    rows = []
    torch.manual_seed(0)
    dev = "cuda"
    shapes = [(8192, 8192)] if quick else [(8192, 8192), (4096, 14336)]
    for N, K in shapes:
        w = (torch.randn(N, K, device=dev) / K ** 0.5)
        wb = w.bfloat16()
        q4 = quantize_int4(w, 128, True)
        q8 = quantize_int8(w)
        for M in (1, 16):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            case = f"GEMV {M}x{K} @ {N}x{K}^T bf16"
            flops = 2 * M * N * K
            act = (M * K + M * N) * 2
            with torch.no_grad():
                rows.append(row(case, "torch matmul bf16", time_fn(lambda: x @ wb.t(), dev), dev,
                                bytes_moved=N * K * 2 + act, flops=flops))
                rows.append(row(case, "llmforge int4 g128", time_fn(lambda: int4_linear(x, q4), dev), dev,
                                bytes_moved=N * K // 2 + q4["scales"].numel() * 8 + act, flops=flops))
                rows.append(row(case, "llmforge int8", time_fn(lambda: int8_linear(x, q8), dev), dev,
                                bytes_moved=N * K + N * 4 + act, flops=flops))
    n = 2048 if quick else 4096
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    wb = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    q8 = quantize_int8(wb.float())
    case = f"GEMM {n}^3"
    with torch.no_grad():
        rows.append(row(case, "torch matmul bf16", time_fn(lambda: a @ wb.t(), dev), dev, flops=2 * n ** 3))
        rows.append(row(case, "llmforge W8A8 (incl. act. quant)", time_fn(lambda: w8a8_linear(a, q8), dev), dev,
                        flops=2 * n ** 3))
        xq, xs = quantize_activations_int8(a)
        y = torch.empty(n, n, device=dev)
        rows.append(row(case, "llmforge W8A8 kernel only",
                        time_fn(lambda: C.w8a8_matmul_cuda(xq, xs, q8["q"], q8["scale"], y, stream(a)), dev), dev,
                        flops=2 * n ** 3))
    return finish(rows, baseline="torch matmul bf16")


def run(device: str = "cpu", quick: bool = False):
    if device == "cuda":
        return run_cuda(quick)
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
