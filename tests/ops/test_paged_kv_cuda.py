"""CUDA paged KV cache (kernels/paged_attn.cu): append against the pure-torch reference
(bit-exact), decode attention against the float64 reference, split-K over long sequences,
GQA, sentinel-filled outputs, and bad tables raising. `cuda` tests skip without a GPU; the
input checks at the bottom run anywhere. Tests whose names contain "sanitizer" are the small
ones bench/gpu_session.sh runs under compute-sanitizer.
"""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import (paged_decode_attention, paged_decode_attention_reference, paged_kv_append,
                          paged_kv_append_reference)
from llmforge.ops._native import stream

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _cache(lens, block_size, n_kv, d, dtype, spare=3, device="cuda"):
    """Pools with shuffled blocks covering lens (plus `spare` free blocks), and the table."""
    per = max(1, max(-(-n // block_size) for n in lens))
    num_blocks = len(lens) * per + spare
    perm = torch.randperm(num_blocks)[: len(lens) * per].to(torch.int32)
    table = perm.view(len(lens), per).contiguous()
    k_pool = torch.randn(num_blocks, block_size, n_kv, d).to(dtype)
    v_pool = torch.randn(num_blocks, block_size, n_kv, d).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return [t.to(device) for t in (k_pool, v_pool, table, seq_lens)]


def _assert_decode(out, ref, dtype):
    """Kernel vs float64 reference, and no worse than 2x the error of rounding the
    reference to dtype plus the kernel's fp32 accumulation slack."""
    err = (out.double() - ref).abs().max().item()
    assert err <= TOL[dtype] * max(ref.abs().max().item(), 1.0), err


# ---- append ------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size,n_kv,d", [(16, 2, 64), (5, 3, 24), (16, 8, 128)])
@pytest.mark.parametrize("ragged", [False, True])
def test_append_cuda(dtype, block_size, n_kv, d, ragged):
    lens_after = [37, 1, 90]
    k_pool, v_pool, table, _ = _cache(lens_after, block_size, n_kv, d, dtype)
    seq_lens = torch.tensor([30, 0, 83], dtype=torch.int32, device="cuda")
    n_new = 7
    k_new = torch.randn(3, n_new, n_kv, d, device="cuda").to(dtype)
    v_new = torch.randn(3, n_new, n_kv, d, device="cuda").to(dtype)
    counts = torch.tensor([7, 1, 7], dtype=torch.int32, device="cuda") if ragged else None
    if not ragged:  # every sequence gets n_new rows: make room
        k_pool, v_pool, table, _ = _cache([37, 7, 90], block_size, n_kv, d, dtype)
    want_k, want_v = paged_kv_append_reference(k_pool.cpu(), v_pool.cpu(), table.cpu(), seq_lens.cpu(),
                                               k_new.cpu(), v_new.cpu(), None if counts is None else counts.cpu())
    paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new, counts)
    assert torch.equal(k_pool.cpu(), want_k)
    assert torch.equal(v_pool.cpu(), want_v)


@pytest.mark.cuda
def test_append_rejects_bad_table_cuda():
    k_pool, v_pool, table, seq_lens = _cache([20, 20], 16, 2, 64, torch.bfloat16)
    k_new = torch.randn(2, 3, 2, 64, device="cuda", dtype=torch.bfloat16)
    before = k_pool.clone()
    bad = table.clone()
    bad[1, 1] = k_pool.shape[0]  # positions 20..22 of sequence 1 live in its block 1
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]"):
        paged_kv_append(k_pool, v_pool, bad, seq_lens, k_new, k_new.clone())
    with pytest.raises(ValueError, match="room for"):
        paged_kv_append(k_pool, v_pool, table, torch.tensor([31, 0], dtype=torch.int32, device="cuda"), k_new,
                        k_new.clone())
    assert torch.equal(k_pool, before)


# ---- decode ------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (32, 8), (12, 1)])
@pytest.mark.parametrize("block_size", [16, 7])
def test_decode_cuda(dtype, d, heads, block_size):
    H, Hkv = heads
    lens = [0, 1, 97, 1025]  # batch 4: empty, single token, odd, long enough to split
    k_pool, v_pool, table, seq_lens = _cache(lens, block_size, Hkv, d, dtype)
    q = torch.randn(len(lens), H, d, device="cuda").to(dtype)
    out = paged_decode_attention(q, k_pool, v_pool, table, seq_lens)
    ref = paged_decode_attention_reference(q.cpu(), k_pool.cpu(), v_pool.cpu(), table.cpu(), seq_lens.cpu())
    assert out.dtype == dtype and out.shape == q.shape
    assert (out[0] == 0).all()
    _assert_decode(out.cpu(), ref, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("L", [4096, 20000])
def test_decode_split_k_cuda(L):
    """One long sequence and short ones: the long one is split over many blocks and merged."""
    lens = [L, 3, 300]
    k_pool, v_pool, table, seq_lens = _cache(lens, 16, 8, 128, torch.bfloat16)
    q = torch.randn(3, 32, 128, device="cuda", dtype=torch.bfloat16) * 3  # peaky softmax
    n = _C.paged_decode_workspace_cuda(q, k_pool, table, L)
    assert n > 0  # really split
    out = paged_decode_attention(q, k_pool, v_pool, table, seq_lens)
    ref = paged_decode_attention_reference(q.cpu(), k_pool.cpu(), v_pool.cpu(), table.cpu(), seq_lens.cpu())
    _assert_decode(out.cpu(), ref, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [64, 128])
def test_decode_writes_every_element_sanitizer(d):
    lens = [0, 5, 300, 33]
    k_pool, v_pool, table, seq_lens = _cache(lens, 16, 2, d, torch.float16)
    q = torch.randn(4, 8, d, device="cuda", dtype=torch.float16)
    # two splits (longest 300) and a single split (every length <= 256) write out differently
    for lens_t, max_len in ((seq_lens, 300), (seq_lens.clamp(max=200), 200)):
        out = torch.full_like(q, float("nan"))
        n = _C.paged_decode_workspace_cuda(q, k_pool, table, max_len)
        assert (n > 0) == (max_len > 256)
        ws = torch.full((max(n, 1),), float("nan"), device="cuda")
        _C.paged_decode_attention_cuda(q, k_pool, v_pool, table, lens_t, out, ws, d ** -0.5, max_len, stream(q))
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        ref = paged_decode_attention_reference(q.cpu(), k_pool.cpu(), v_pool.cpu(), table.cpu(), lens_t.cpu())
        _assert_decode(out.cpu(), ref, torch.float16)


@pytest.mark.cuda
def test_append_then_decode_sanitizer():
    k_pool, v_pool, table, _ = _cache([40, 17], 16, 2, 64, torch.bfloat16)
    seq_lens = torch.tensor([39, 16], dtype=torch.int32, device="cuda")
    kv = torch.randn(2, 1, 2, 64, device="cuda", dtype=torch.bfloat16)
    paged_kv_append(k_pool, v_pool, table, seq_lens, kv, kv.clone())
    q = torch.randn(2, 4, 64, device="cuda", dtype=torch.bfloat16)
    out = paged_decode_attention(q, k_pool, v_pool, table, seq_lens + 1)
    ref = paged_decode_attention_reference(q.cpu(), k_pool.cpu(), v_pool.cpu(), table.cpu(), (seq_lens + 1).cpu())
    _assert_decode(out.cpu(), ref, torch.bfloat16)


@pytest.mark.cuda
def test_decode_rejects_bad_input_cuda():
    k_pool, v_pool, table, seq_lens = _cache([40, 17], 16, 2, 64, torch.bfloat16)
    q = torch.randn(2, 4, 64, device="cuda", dtype=torch.bfloat16)
    bad = table.clone()
    bad[0, 2] = -1
    with pytest.raises(ValueError, match=r"block_table\[0, 2\]"):
        paged_decode_attention(q, k_pool, v_pool, bad, seq_lens)
    with pytest.raises(ValueError, match="outside"):
        paged_decode_attention(q, k_pool, v_pool, table, torch.tensor([49, 1], dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        k2, v2, t2, l2 = _cache([5], 16, 2, 32, torch.bfloat16)
        paged_decode_attention(torch.randn(1, 2, 32, device="cuda", dtype=torch.bfloat16), k2, v2, t2, l2)
    with pytest.raises(ValueError, match="different devices"):
        paged_decode_attention(q.cpu(), k_pool, v_pool, table, seq_lens)


@pytest.mark.cuda
def test_gather_cuda():
    from llmforge.ops import paged_kv_gather, paged_kv_gather_reference

    k_pool, _, table, seq_lens = _cache([0, 33, 7], 16, 2, 24, torch.bfloat16)
    got = paged_kv_gather(k_pool, table, seq_lens)
    want = paged_kv_gather_reference(k_pool.cpu(), table.cpu(), seq_lens.cpu())
    assert torch.equal(got.cpu(), want)
    assert paged_kv_gather(k_pool, table, seq_lens, 50).shape == (3, 50, 2, 24)
    with pytest.raises(ValueError, match="shorter"):
        paged_kv_gather(k_pool, table, seq_lens, 10)


# ---- input checks (run anywhere) -------------------------------------------------------------
def test_cuda_entry_points_reject_cpu_tensors():
    k_pool, v_pool, table, seq_lens = _cache([5], 16, 2, 64, torch.bfloat16, device="cpu")
    kv = torch.randn(1, 1, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA"):
        _C.paged_kv_append_cuda(k_pool, v_pool, table, seq_lens, kv, kv, None, 0)
    q = torch.randn(1, 4, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA"):
        _C.paged_decode_attention_cuda(q, k_pool, v_pool, table, seq_lens, torch.empty_like(q), None, 0.125, 5, 0)


def test_cpu_ops_still_reject_float16():
    """float16 pools are a CUDA-only option: the CPU kernels keep float32 / bfloat16."""
    k_pool, v_pool, table, seq_lens = _cache([5], 16, 2, 64, torch.float16, device="cpu")
    q = torch.randn(1, 4, 64, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        paged_decode_attention(q, k_pool, v_pool, table, seq_lens)
