"""Fused attention forward/backward vs torch's scaled_dot_product_attention (CPU flash kernel).

    python -m bench attention [--quick]

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


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        raise ValueError("attention has CPU kernels only")
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
