"""Fused attention forward/backward vs torch's scaled_dot_product_attention (CPU flash kernel).

    python -m bench attention [--quick]
    python -m bench attention --device cuda [--record]   # kernels/flash_attn_{fwd,bwd}.cu vs torch SDPA

CUDA: bfloat16, head dim 128, 16 heads, batch 16384 // S (so every length has the same
number of tokens and fills the GPU), S = 512..16384, causal and full; torch SDPA picks its
own fastest backend (flash on sm_80/sm_90) in the same run.

Both sides take the (B, H, S, D) layout, contiguous, so no transposes are timed on
either side; grouped-query cases pass enable_gqa=True to torch. The decode row reads a
4096-long float32 KV cache once (GB/s counts those bytes). TFLOP/s counts the matmul work only: forward 4*B*H*Sq*Sk*D (halved when
causal), backward 2.5x that (five matmuls to the forward's two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import attention


def _run_cuda(quick: bool):
    rows = []
    torch.manual_seed(0)
    H, D, dt = 16, 128, torch.bfloat16
    seqs = [512, 1024, 2048, 4096, 8192, 16384] if not quick else [4096]
    for S in seqs:
        B = max(1, 16384 // S)
        q = torch.randn(B, H, S, D, dtype=dt, device="cuda")
        k, v = torch.randn_like(q), torch.randn_like(q)
        dout = torch.randn_like(q)
        for causal in (True, False):
            name = f"{B}x{H}x{S}x{D} {'causal' if causal else 'full'} bfloat16"
            flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
            with torch.no_grad():
                for impl, fn in (("llmforge", lambda: attention(q, k, v, causal=causal)),
                                 ("torch sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))):
                    rows.append(row(f"fwd {name}", impl, time_fn(fn, "cuda", warmup=3, iters=20), "cuda", flops=flops))
            qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
            o1 = attention(qg, kg, vg, causal=causal)
            o2 = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            for impl, o in (("llmforge", o1), ("torch sdpa", o2)):
                t = time_fn(lambda: torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True), "cuda",
                            warmup=3, iters=20)
                rows.append(row(f"bwd {name}", impl, t, "cuda", flops=2.5 * flops))
            del qg, kg, vg, o1, o2
    # grouped-query prefill, the Llama-3-8B shape
    q = torch.randn(2, 32, 4096, 128, dtype=dt, device="cuda")
    k, v = (torch.randn(2, 8, 4096, 128, dtype=dt, device="cuda") for _ in range(2))
    flops = 4 * 2 * 32 * 4096 * 4096 * 128 * 0.5
    with torch.no_grad():
        for impl, fn in (("llmforge", lambda: attention(q, k, v, causal=True)),
                         ("torch sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                               enable_gqa=True))):
            rows.append(row("fwd 2x32/8x4096x128 causal bfloat16", impl, time_fn(fn, "cuda"), "cuda", flops=flops))
    return finish(rows, baseline="torch sdpa")


def run(device: str = "cpu", quick: bool = False):
    if device == "cuda":
        return _run_cuda(quick)
    if device != "cpu":
        raise ValueError(f"attention: no kernels for device {device}")
    # (B, H, Hkv, S, D, causal, dtype)
    cases = [(1, 8, 8, 2048, 128, True, torch.float32), (1, 8, 8, 2048, 128, False, torch.float32),
             (1, 8, 8, 512, 128, True, torch.float32), (1, 8, 8, 512, 128, False, torch.float32),
             (1, 8, 8, 2048, 128, True, torch.bfloat16), (1, 8, 8, 512, 128, False, torch.bfloat16),
             (1, 32, 8, 1024, 64, True, torch.float32)]
    if quick:
        cases = cases[:1]
    rows = []
    torch.manual_seed(0)
    for B, H, Hkv, S, D, causal, dt in cases:
        q = torch.randn(B, H, S, D, dtype=dt)
        k = torch.randn(B, Hkv, S, D, dtype=dt)
        v = torch.randn(B, Hkv, S, D, dtype=dt)
        gqa = Hkv != H
        name = f"{B}x{H}{'/' + str(Hkv) if gqa else ''}x{S}x{D} {'causal' if causal else 'full'} " \
               f"{str(dt).replace('torch.', '')}"
        flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
        iters = 3 if S >= 2048 else 10
        slow_bwd = dt == torch.bfloat16 and S >= 2048  # torch's bf16 CPU backward takes seconds
        with torch.no_grad():
            impls = {"llmforge": lambda: attention(q, k, v, causal=causal),
                     "torch sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)}
            for impl, fn in impls.items():
                rows.append(row(f"fwd {name}", impl, time_fn(fn, device, warmup=1, iters=iters, min_time_s=0.2),
                                device, flops=flops))
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        dout = torch.randn_like(q)
        o1 = attention(qg, kg, vg, causal=causal)
        o2 = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
        for impl, o in (("llmforge", o1), ("torch sdpa", o2)):
            n = 1 if (slow_bwd and impl == "torch sdpa") else iters
            t = time_fn(lambda: torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True), device,
                        warmup=1, iters=n, min_time_s=0.2 if n > 1 else 0.0)
            rows.append(row(f"bwd {name}", impl, t, device, flops=2.5 * flops))
    if not quick:  # decode step: 1 query row per head against a 4096-long GQA cache (forward only)
        q = torch.randn(1, 32, 1, 128)
        k, v = torch.randn(1, 8, 4096, 128), torch.randn(1, 8, 4096, 128)
        name = "fwd decode 1x32/8 q1 kv4096x128 float32"
        with torch.no_grad():
            for impl, fn in (("llmforge", lambda: attention(q, k, v, causal=True)),
                             ("torch sdpa", lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))):
                rows.append(row(name, impl, time_fn(fn, device), device, bytes_moved=2 * k.numel() * 4,
                                flops=4 * 32 * 4096 * 128))
    return finish(rows, baseline="torch sdpa")
