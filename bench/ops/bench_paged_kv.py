"""Paged KV cache: decode attention from pages vs the same attention on a contiguous cache
(torch SDPA with enable_gqa on (B, Hkv, L, D); llmforge's kernel on contiguous (B, Hkv, L, D)
and (B, L, Hkv, D) caches); append and gather.

    python -m bench paged_kv [--record]
    python -m bench paged_kv --device cuda [--record]   # kernels/paged_attn.cu

CUDA: decode at batch 16, KV length 4096, GQA 32/8 heads, head dim 128, block 16, bfloat16;
"% peak" is GB/s over the measured copy bandwidth of this GPU (bench/harness.py). The
kernel row times the launch alone (tables checked once beforehand); the op row adds the
op's per-call table check (one synchronising read). torch SDPA on the same data in a
contiguous (B, Hkv, L, D) cache is the baseline.

Pages are handed out in a random order (as a long-running server's pool ends up), block
size 16. GB/s counts the K and V bytes read (decode) or bytes read + written (append, gather).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import finish, row, time_fn
from llmforge.ops import contiguous_decode_attention, paged_decode_attention, paged_kv_append, paged_kv_gather

BLOCK = 16


def _paged(lens, n_kv, d, dtype, gen):
    """Pools holding the given lengths in shuffled blocks, and the matching contiguous (B, Hkv, L, D) cache."""
    B, L = len(lens), max(lens)
    per = -(-L // BLOCK)
    num_blocks = B * per
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    table = perm.view(B, per).contiguous()
    k_pool = torch.randn(num_blocks, BLOCK, n_kv, d, generator=gen).to(dtype)
    v_pool = torch.randn(num_blocks, BLOCK, n_kv, d, generator=gen).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return k_pool, v_pool, table, seq_lens


def _decode_rows(rows, case, lens, n_heads, n_kv, d, dtype, device, gen, sdpa=True):
    k_pool, v_pool, table, seq_lens = _paged(lens, n_kv, d, dtype, gen)
    B = len(lens)
    q = torch.randn(B, n_heads, d, generator=gen).to(dtype)
    kv_bytes = 2 * sum(lens) * n_kv * d * k_pool.element_size()
    rows.append(row(case, "llmforge paged", time_fn(lambda: paged_decode_attention(q, k_pool, v_pool, table, seq_lens)),
                    device, bytes_moved=kv_bytes))
    k_blhd = paged_kv_gather(k_pool, table, seq_lens)  # (B, L, Hkv, D)
    v_blhd = paged_kv_gather(v_pool, table, seq_lens)
    del k_pool, v_pool
    # the same kernel on a contiguous (B, L, Hkv, D) cache: one block of L tokens per sequence
    one_block = torch.arange(B, dtype=torch.int32)[:, None]
    rows.append(row(case, "llmforge contiguous BLHD",
                    time_fn(lambda: paged_decode_attention(q, k_blhd, v_blhd, one_block, seq_lens)), device,
                    bytes_moved=kv_bytes))
    k = k_blhd.transpose(1, 2).contiguous()  # (B, Hkv, L, D), SDPA's layout
    v = v_blhd.transpose(1, 2).contiguous()
    del k_blhd, v_blhd
    rows.append(row(case, "llmforge contiguous BHLD", time_fn(lambda: contiguous_decode_attention(q, k, v, seq_lens)),
                    device, bytes_moved=kv_bytes))
    if sdpa:  # equal lengths only: SDPA has no per-sequence length without a mask
        q4 = q[:, :, None]
        gqa = n_heads != n_kv
        rows.append(row(case, "torch sdpa contiguous",
                        time_fn(lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=gqa)), device,
                        bytes_moved=kv_bytes))


def _run_cuda(quick: bool):
    from llmforge.ops.paged_kv import _check_decode_contents, _decode_cuda

    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [(16, 4096, 32, 8, 128, torch.bfloat16)]  # the target shape first
    if not quick:
        cases += [(16, 4096, 32, 8, 128, torch.float16), (64, 2048, 32, 8, 128, torch.bfloat16),
                  (1, 32768, 32, 8, 128, torch.bfloat16), (16, 4096, 32, 32, 128, torch.bfloat16),
                  (16, 4096, 32, 8, 64, torch.bfloat16)]
    with torch.no_grad():
        for B, L, H, Hk, D, dt in cases:
            case = f"decode B{B} L{L} H{H}/{Hk} D{D} block{BLOCK} {str(dt).replace('torch.', '')}"
            k_pool, v_pool, table, seq_lens = (t.cuda() for t in _paged([L] * B, Hk, D, dt, gen))
            q = torch.randn(B, H, D, generator=gen).to(dt).cuda()
            kv_bytes = 2 * B * L * Hk * D * k_pool.element_size()
            out = torch.empty_like(q)
            longest = _check_decode_contents(k_pool, table, seq_lens)
            scale = D ** -0.5
            rows.append(row(case, "llmforge kernel",
                            time_fn(lambda: _decode_cuda(q, k_pool, v_pool, table, seq_lens, out, scale, longest),
                                    "cuda"), "cuda", bytes_moved=kv_bytes))
            rows.append(row(case, "llmforge op (checked)",
                            time_fn(lambda: paged_decode_attention(q, k_pool, v_pool, table, seq_lens), "cuda"),
                            "cuda", bytes_moved=kv_bytes))
            # baseline: SDPA over the same keys/values laid out contiguously
            idx = (table.long()[:, :, None] * BLOCK + torch.arange(BLOCK, device="cuda")).view(B, -1)[:, :L]
            k = k_pool.view(-1, Hk, D)[idx].transpose(1, 2).contiguous()  # (B, Hk, L, D)
            v = v_pool.view(-1, Hk, D)[idx].transpose(1, 2).contiguous()
            q4 = q[:, :, None]
            rows.append(row(case, "torch sdpa contiguous",
                            time_fn(lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=H != Hk), "cuda"),
                            "cuda", bytes_moved=kv_bytes))
            del k, v, k_pool, v_pool
        # append: one decode token for 16 sequences; a 2048-token prefill of one sequence
        for B, n_new, start in ((16, 1, 1000), (1, 2048, 0)):
            k_pool, v_pool, table, _ = (t.cuda() for t in _paged([start + n_new] * B, 8, 128, torch.bfloat16, gen))
            seq_lens = torch.full((B,), start, dtype=torch.int32, device="cuda")
            k_new = torch.randn(B, n_new, 8, 128, dtype=torch.bfloat16, device="cuda")
            v_new = torch.randn_like(k_new)
            nbytes = 2 * 2 * k_new.numel() * 2
            rows.append(row(f"append B{B} n_new {n_new} Hkv8 D128 bfloat16", "llmforge op (checked)",
                            time_fn(lambda: paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new), "cuda"),
                            "cuda", bytes_moved=nbytes))
    return finish(rows, baseline="torch sdpa contiguous")


def run(device: str = "cpu", quick: bool = False):
    if device == "cuda":
        return _run_cuda(quick)
    if device != "cpu":
        raise SystemExit(f"paged_kv: no kernels for device {device}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [  # (batch, length, n_heads, n_kv_heads, head_dim, dtype)
        (16, 1024, 32, 8, 128, torch.float32),
        (16, 1024, 32, 8, 128, torch.bfloat16),
        (16, 1024, 8, 8, 128, torch.float32),
        (1, 8192, 32, 8, 128, torch.float32),
        (1, 8192, 8, 8, 128, torch.bfloat16),
    ]
    if quick:
        cases = cases[:1]
    with torch.no_grad():
        for B, L, H, Hk, D, dt in cases:
            case = f"decode B{B} L{L} H{H}/{Hk} D{D} {str(dt).replace('torch.', '')}"
            _decode_rows(rows, case, [L] * B, H, Hk, D, dt, device, gen)
        if not quick:
            lens = torch.randint(1, 2049, (16,), generator=gen).tolist()
            _decode_rows(rows, f"decode B16 L1..2048 (sum {sum(lens)}) H32/8 D128 float32", lens, 32, 8, 128,
                         torch.float32, device, gen, sdpa=False)

            # append: one decode token for 16 sequences; a 2048-token prefill of one sequence
            for B, n_new, start in ((16, 1, 1000), (1, 2048, 0)):
                k_pool, v_pool, table, _ = _paged([start + n_new] * B, 8, 128, torch.float32, gen)
                seq_lens = torch.full((B,), start, dtype=torch.int32)
                k_new = torch.randn(B, n_new, 8, 128, generator=gen)
                v_new = torch.randn(B, n_new, 8, 128, generator=gen)
                nbytes = 2 * 2 * k_new.numel() * 4
                rows.append(row(f"append B{B} n_new {n_new} Hkv8 D128 float32", "llmforge",
                                time_fn(lambda: paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new)),
                                device, bytes_moved=nbytes))
                idx = (table.long()[:, :, None] * BLOCK + torch.arange(BLOCK)).view(B, -1)
                pos = seq_lens.long()[:, None] + torch.arange(n_new)
                flat_rows = idx.gather(1, pos).view(-1)
                kf, vf = k_pool.view(-1, 8, 128), v_pool.view(-1, 8, 128)
                rows.append(row(f"append B{B} n_new {n_new} Hkv8 D128 float32", "torch index_copy_",
                                time_fn(lambda: (kf.index_copy_(0, flat_rows, k_new.view(-1, 8, 128)),
                                                 vf.index_copy_(0, flat_rows, v_new.view(-1, 8, 128)))),
                                device, bytes_moved=nbytes))

            # gather: 16 x 1024 tokens of one pool
            k_pool, _, table, seq_lens = _paged([1024] * 16, 8, 128, torch.float32, gen)
            nbytes = 2 * 16 * 1024 * 8 * 128 * 4
            rows.append(row("gather B16 L1024 Hkv8 D128 float32", "llmforge",
                            time_fn(lambda: paged_kv_gather(k_pool, table, seq_lens)), device, bytes_moved=nbytes))
            rows.append(row("gather B16 L1024 Hkv8 D128 float32", "torch index_select",
                            time_fn(lambda: k_pool.index_select(0, table.view(-1)).view(16, 1024, 8, 128)), device,
                            bytes_moved=nbytes))
    # speedup: vs torch SDPA where it runs, else vs llmforge's contiguous BHLD kernel / the torch op
    finish(rows, baseline="torch sdpa contiguous")
    base = {}
    for r in rows:
        if r.impl in ("llmforge contiguous BHLD", "torch index_copy_", "torch index_select"):
            base.setdefault(r.case, r.ms)
    for r in rows:
        if r.speedup is None and r.case in base:
            r.speedup = base[r.case] / r.ms
    return rows
