"""Paged KV cache: append, gather and decode attention (CPU per ISA) against float64 /
pure-torch references on odd shapes; threads and splits; opcheck; bad input; PagedKVCache."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmforge import _C
from llmforge.generate.paged_cache import OutOfBlocksError, PagedKVCache
from llmforge.ops import (contiguous_decode_attention, contiguous_decode_attention_reference, paged_decode_attention,
                          paged_decode_attention_reference, paged_kv_append, paged_kv_append_reference,
                          paged_kv_gather, paged_kv_gather_reference)

# (dtype, atol, rtol) together: inputs are exact in float64; bf16 output rounding is 2^-9 relative.
TOLS = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 1e-4, 2**-8)]
LENS = [1, 15, 16, 17, 1000, 0, 33]
HEADS = [(32, 8), (4, 4), (6, 2), (5, 1)]  # (n_heads, n_kv_heads): GQA 4, 1-to-1, GQA 3, MQA 5


def _cache(lens, block_size, n_kv, head_dim, dtype, spare_blocks=3, spare_cols=2, seed=0):
    """Random pools and a shuffled block table with -1 past each sequence's blocks."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    num_blocks = sum(need) + spare_blocks
    perm = torch.randperm(num_blocks, generator=g).tolist()
    width = max(need + [1]) + spare_cols
    table = torch.full((len(lens), width), -1, dtype=torch.int32)
    for b, k in enumerate(need):
        table[b, :k] = torch.tensor(perm[:k], dtype=torch.int32)
        perm = perm[k:]
    shape = (num_blocks, block_size, n_kv, head_dim)
    k_pool = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    v_pool = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return k_pool, v_pool, table, torch.tensor(lens, dtype=torch.int32)


def _close(out, ref64, atol, rtol):
    torch.testing.assert_close(out.to(torch.float64), ref64, atol=atol, rtol=rtol)


# ---- decode attention ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("block_size", [16, 7])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_dim", [128, 59])
def test_decode_matches_float64(cpu_isa, dtype, atol, rtol, block_size, heads, head_dim):
    n_heads, n_kv = heads
    k_pool, v_pool, table, lens = _cache(LENS, block_size, n_kv, head_dim, dtype)
    q = torch.randn(len(LENS), n_heads, head_dim, dtype=torch.float64).to(dtype)
    out = paged_decode_attention(q, k_pool, v_pool, table, lens)
    assert out.dtype == dtype and out.shape == q.shape
    _close(out, paged_decode_attention_reference(q, k_pool, v_pool, table, lens), atol, rtol)
    assert torch.equal(out[LENS.index(0)], torch.zeros_like(out[0]))


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
def test_decode_wide_score_range(cpu_isa, dtype, atol, rtol):
    # a large scale spreads the scores over ~[-150, 150]: exercises the vector exp's clamps
    k_pool, v_pool, table, lens = _cache([300, 5, 64], 16, 2, 64, dtype)
    q = torch.randn(3, 4, 64, dtype=torch.float64).to(dtype)
    out = paged_decode_attention(q, k_pool, v_pool, table, lens, scale=2.5)
    _close(out, paged_decode_attention_reference(q, k_pool, v_pool, table, lens, scale=2.5), atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("heads", [(32, 8), (4, 4)])
def test_decode_equals_sdpa_on_contiguous_cache(dtype, atol, rtol, heads):
    n_heads, n_kv = heads
    B, L, D = 3, 77, 128
    k_pool, v_pool, table, lens = _cache([L] * B, 16, n_kv, D, dtype)
    q = torch.randn(B, n_heads, D).to(dtype)
    k = paged_kv_gather(k_pool, table, lens).transpose(1, 2)  # (B, Hkv, L, D)
    v = paged_kv_gather(v_pool, table, lens).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q.double()[:, :, None], k.double(), v.double(), enable_gqa=True)[:, :, 0]
    _close(paged_decode_attention(q, k_pool, v_pool, table, lens), ref, atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("heads", HEADS)
def test_contiguous_decode_matches_float64(cpu_isa, dtype, atol, rtol, heads):
    n_heads, n_kv = heads
    lens = torch.tensor([1000, 1, 0, 31, 33, 64], dtype=torch.int32)
    B, L, D = len(lens), 1000, 72
    k = torch.randn(B, n_kv, L, D, dtype=torch.float64).to(dtype)
    v = torch.randn(B, n_kv, L, D, dtype=torch.float64).to(dtype)
    q = torch.randn(B, n_heads, D, dtype=torch.float64).to(dtype)
    out = contiguous_decode_attention(q, k, v, lens)
    _close(out, contiguous_decode_attention_reference(q, k, v, lens), atol, rtol)


SPLIT_SHAPES = [([1000], 1, 1), ([1000], 8, 32), ([17, 900], 2, 2), ([5, 1, 3], 1, 4), ([1000, 0, 260], 3, 6)]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("block_size", [16, 7])
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_decode_split_across_threads(cpu_isa, threads, block_size, shape):
    # few sequences: their lengths are split over the threads and merged by log-sum-exp
    lens, n_kv, n_heads = shape
    k_pool, v_pool, table, seq_lens = _cache(lens, block_size, n_kv, 64, torch.float32)
    q = torch.randn(len(lens), n_heads, 64)
    out = torch.empty_like(q)
    _C.paged_decode_attention(q, k_pool, v_pool, table, seq_lens, out, 0.125, threads)
    _close(out, paged_decode_attention_reference(q, k_pool, v_pool, table, seq_lens, 0.125), 2e-5, 1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_contiguous_decode_split_across_threads(cpu_isa, threads, shape):
    lens, n_kv, n_heads = shape
    k = torch.randn(len(lens), n_kv, max(lens), 48)
    v = torch.randn(len(lens), n_kv, max(lens), 48)
    q = torch.randn(len(lens), n_heads, 48)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = torch.empty_like(q)
    _C.contiguous_decode_attention(q, k, v, seq_lens, out, 0.2, threads)
    _close(out, contiguous_decode_attention_reference(q, k, v, seq_lens, 0.2), 2e-5, 1e-4)


def test_threads_follow_torch():
    k_pool, v_pool, table, lens = _cache([700, 3], 16, 1, 64, torch.float32)
    q = torch.randn(2, 2, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paged_decode_attention(q, k_pool, v_pool, table, lens)
        torch.set_num_threads(2)
        two = paged_decode_attention(q, k_pool, v_pool, table, lens)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, atol=1e-6, rtol=1e-5)


def test_isas_agree():
    k_pool, v_pool, table, lens = _cache([100, 37], 16, 2, 128, torch.float32)
    q = torch.randn(2, 8, 128)
    outs = []
    before = _C.cpu_isa()
    try:
        for isa in ("scalar", _C.cpu_best_isa()):
            _C.set_cpu_isa(isa)
            outs.append(paged_decode_attention(q, k_pool, v_pool, table, lens))
    finally:
        _C.set_cpu_isa(before)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_nan_stays_in_its_sequence():
    k_pool, v_pool, table, lens = _cache([20, 20, 20], 16, 1, 32, torch.float32, spare_blocks=0)
    k_pool[table[1, 1], 2, 0, 5] = float("nan")
    out = paged_decode_attention(torch.randn(3, 2, 32), k_pool, v_pool, table, lens)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[[0, 2]]).all()


def test_positions_past_length_are_ignored():
    k_pool, v_pool, table, lens = _cache([20], 16, 1, 32, torch.float32, spare_blocks=0)
    q = torch.randn(1, 1, 32)
    out = paged_decode_attention(q, k_pool, v_pool, table, lens)
    k_pool[table[0, 1], 4:] = float("nan")  # slots 20.. of the last page: not part of the sequence
    v_pool[table[0, 1], 4:] = 1e30
    assert torch.equal(paged_decode_attention(q, k_pool, v_pool, table, lens), out)


def test_decode_torch_compile_fullgraph():
    k_pool, v_pool, table, lens = _cache([9, 40], 16, 2, 32, torch.float32)
    q = torch.randn(2, 4, 32)
    f = torch.compile(lambda *a: paged_decode_attention(*a) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(q, k_pool, v_pool, table, lens), paged_decode_attention(q, k_pool, v_pool, table, lens) * 2)


# ---- append / gather -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 7, 1])
@pytest.mark.parametrize("n_new", [1, 5, 23])
def test_append_matches_reference(cpu_isa, dtype, block_size, n_new):
    start = [0, 15, 16, 6, 40]
    k_pool, v_pool, table, lens = _cache([s + n_new for s in start], block_size, 3, 20, dtype)
    seq_lens = torch.tensor(start, dtype=torch.int32)
    k_new = torch.randn(len(start), n_new, 3, 20).to(dtype)
    v_new = torch.randn(len(start), n_new, 3, 20).to(dtype)
    ref_k, ref_v = paged_kv_append_reference(k_pool, v_pool, table, seq_lens, k_new, v_new)
    paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new)
    assert torch.equal(k_pool, ref_k) and torch.equal(v_pool, ref_v)  # untouched slots unchanged too
    assert torch.equal(seq_lens, torch.tensor(start, dtype=torch.int32))
    got = paged_kv_gather(k_pool, table, lens)
    for b, s in enumerate(start):
        assert torch.equal(got[b, s:s + n_new], k_new[b])


def test_append_ragged_counts(cpu_isa):
    k_pool, v_pool, table, lens = _cache([30, 30, 30, 30], 7, 2, 16, torch.float32)
    seq_lens = torch.tensor([0, 3, 29, 10], dtype=torch.int32)
    counts = torch.tensor([9, 0, 1, 20], dtype=torch.int32)
    k_new, v_new = torch.randn(4, 20, 2, 16), torch.randn(4, 20, 2, 16)
    ref_k, ref_v = paged_kv_append_reference(k_pool, v_pool, table, seq_lens, k_new, v_new, counts)
    paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new, counts)
    assert torch.equal(k_pool, ref_k) and torch.equal(v_pool, ref_v)


def test_append_large_uses_threads():
    # > 1 MiB of new rows: the parallel path
    k_pool, v_pool, table, lens = _cache([600, 600], 16, 8, 64, torch.float32)
    seq_lens = torch.tensor([3, 0], dtype=torch.int32)
    k_new, v_new = torch.randn(2, 590, 8, 64), torch.randn(2, 590, 8, 64)
    ref_k, ref_v = paged_kv_append_reference(k_pool, v_pool, table, seq_lens, k_new, v_new)
    paged_kv_append(k_pool, v_pool, table, seq_lens, k_new, v_new)
    assert torch.equal(k_pool, ref_k) and torch.equal(v_pool, ref_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 7])
def test_gather_matches_reference(cpu_isa, dtype, block_size):
    k_pool, _, table, lens = _cache(LENS, block_size, 3, 24, dtype)
    out = paged_kv_gather(k_pool, table, lens)
    assert out.shape == (len(LENS), max(LENS), 3, 24)
    assert torch.equal(out, paged_kv_gather_reference(k_pool, table, lens))
    longer = paged_kv_gather(k_pool, table, lens, max_len=1011)
    assert torch.equal(longer[:, : max(LENS)], out) and not longer[:, max(LENS):].any()
    for b, n in enumerate(LENS):
        assert not out[b, n:].any()


def test_gather_large_and_empty():
    k_pool, _, table, lens = _cache([2000, 1], 16, 8, 64, torch.float32)
    assert torch.equal(paged_kv_gather(k_pool, table, lens), paged_kv_gather_reference(k_pool, table, lens))
    empty = paged_kv_gather(k_pool, table, torch.zeros(2, dtype=torch.int32))
    assert empty.shape == (2, 0, 8, 64)


def test_references_agree_with_a_plain_loop():
    k_pool, v_pool, table, lens = _cache([5, 18], 4, 2, 8, torch.float64)
    q = torch.randn(2, 4, 8, dtype=torch.float64)
    ref = paged_decode_attention_reference(q, k_pool, v_pool, table, lens)
    for b in range(2):
        for h in range(4):
            ks = torch.stack([k_pool[table[b, p // 4], p % 4, h // 2] for p in range(int(lens[b]))])
            vs = torch.stack([v_pool[table[b, p // 4], p % 4, h // 2] for p in range(int(lens[b]))])
            p = torch.softmax(ks @ q[b, h] / math.sqrt(8), 0)
            torch.testing.assert_close(ref[b, h], p @ vs)


def test_opcheck():
    k_pool, v_pool, table, lens = _cache([9, 40, 1], 16, 2, 32, torch.float32)
    q = torch.randn(3, 4, 32)
    torch.library.opcheck(torch.ops.llmforge.paged_decode_attention.default, (q, k_pool, v_pool, table, lens, None))
    torch.library.opcheck(torch.ops.llmforge.paged_decode_attention.default, (q, k_pool, v_pool, table, lens, 0.3))
    torch.library.opcheck(torch.ops.llmforge.paged_kv_gather.default, (k_pool, table, lens, 41))
    k = torch.randn(3, 2, 40, 32)
    torch.library.opcheck(torch.ops.llmforge.contiguous_decode_attention.default, (q, k, k.clone(), lens, None))
    seq = torch.tensor([0, 30, 1], dtype=torch.int32)
    kn, vn = torch.randn(3, 2, 2, 32), torch.randn(3, 2, 2, 32)
    torch.library.opcheck(torch.ops.llmforge.paged_kv_append.default, (k_pool, v_pool, table, seq, kn, vn, None))
    counts = torch.tensor([2, 1, 0], dtype=torch.int32)
    torch.library.opcheck(torch.ops.llmforge.paged_kv_append.default, (k_pool, v_pool, table, seq, kn, vn, counts))


# ---- bad input: a Python exception, never a crash or an out-of-bounds access -----------------
def _small():
    k_pool, v_pool, table, lens = _cache([20, 3], 16, 2, 8, torch.float32, spare_blocks=1, spare_cols=1)
    return k_pool, v_pool, table, lens, torch.randn(2, 4, 8)


def test_rejects_wrong_dtypes():
    k_pool, v_pool, table, lens, q = _small()
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        paged_decode_attention(q.half(), k_pool.half(), v_pool.half(), table, lens)
    with pytest.raises(TypeError, match="must match"):
        paged_decode_attention(q, k_pool, v_pool.bfloat16(), table, lens)
    with pytest.raises(TypeError, match="q has dtype"):
        paged_decode_attention(q.bfloat16(), k_pool, v_pool, table, lens)
    with pytest.raises(TypeError, match="block_table"):
        paged_decode_attention(q, k_pool, v_pool, table.long(), lens)
    with pytest.raises(TypeError, match="seq_lens"):
        paged_kv_gather(k_pool, table, lens.long(), 20)
    with pytest.raises(TypeError, match="k_new"):
        paged_kv_append(k_pool, v_pool, table, lens * 0, torch.randn(2, 1, 2, 8).double(), torch.randn(2, 1, 2, 8).double())
    with pytest.raises(TypeError, match="counts"):
        paged_kv_append(k_pool, v_pool, table, lens * 0, torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8),
                        torch.ones(2, dtype=torch.int64))


def test_rejects_bad_shapes():
    k_pool, v_pool, table, lens, q = _small()
    with pytest.raises(ValueError, match="multiple"):
        paged_decode_attention(torch.randn(2, 3, 8), k_pool, v_pool, table, lens)
    with pytest.raises(ValueError, match="head_dim"):
        paged_decode_attention(torch.randn(2, 4, 9), k_pool, v_pool, table, lens)
    with pytest.raises(ValueError, match="sequences"):
        paged_decode_attention(torch.randn(3, 4, 8), k_pool, v_pool, table, lens)
    with pytest.raises(ValueError, match="v_pool has shape"):
        paged_decode_attention(q, k_pool, v_pool[:-1], table, lens)
    with pytest.raises(ValueError, match="seq_lens has shape"):
        paged_decode_attention(q, k_pool, v_pool, table, lens[:1])
    with pytest.raises(ValueError, match="block_table"):
        paged_decode_attention(q, k_pool, v_pool, table[0], lens)
    with pytest.raises(ValueError, match="k_pool"):
        paged_decode_attention(q, k_pool[:, :, :, :0], v_pool[:, :, :, :0], table, lens)
    with pytest.raises(ValueError, match="k_new has shape"):
        paged_kv_append(k_pool, v_pool, table, lens * 0, torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8))
    with pytest.raises(ValueError, match="v_new has shape"):
        paged_kv_append(k_pool, v_pool, table, lens * 0, torch.randn(2, 1, 2, 8), torch.randn(2, 2, 2, 8))
    with pytest.raises(ValueError, match="max_len"):
        paged_kv_gather(k_pool, table, lens, 19)


def test_rejects_non_contiguous():
    k_pool, v_pool, table, lens, q = _small()
    with pytest.raises(ValueError, match="contiguous"):
        paged_decode_attention(q.transpose(0, 1).contiguous().transpose(0, 1), k_pool, v_pool, table, lens)
    with pytest.raises(ValueError, match="contiguous"):
        paged_decode_attention(q, k_pool.transpose(2, 3).contiguous().transpose(2, 3), v_pool, table, lens)
    with pytest.raises(ValueError, match="contiguous"):
        paged_kv_gather(k_pool, table.t().contiguous().t(), lens)


def test_rejects_corrupt_block_table_without_touching_memory():
    k_pool, v_pool, table, lens, q = _small()
    for bad in (-1, k_pool.shape[0], 1 << 30):
        t = table.clone()
        t[0, 1] = bad  # sequence 0 (20 tokens) needs blocks 0 and 1
        with pytest.raises(ValueError, match=r"block_table\[0, 1\]"):
            paged_decode_attention(q, k_pool, v_pool, t, lens)
        with pytest.raises(ValueError, match=r"block_table\[0, 1\]"):
            paged_kv_gather(k_pool, t, lens)
        before_k, before_v = k_pool.clone(), v_pool.clone()
        with pytest.raises(ValueError, match=r"block_table\[0, 1\]"):
            paged_kv_append(k_pool, v_pool, t, torch.tensor([19, 0], dtype=torch.int32), torch.randn(2, 1, 2, 8),
                            torch.randn(2, 1, 2, 8))
        assert torch.equal(k_pool, before_k) and torch.equal(v_pool, before_v)
    # the native boundary checks too, without the Python layer
    t = table.clone()
    t[1, 0] = -7
    with pytest.raises(ValueError, match="block_table"):
        _C.paged_decode_attention(q, k_pool, v_pool, t, lens, torch.empty_like(q), 0.3, 2)
    with pytest.raises(ValueError, match="block_table"):
        _C.paged_kv_append(k_pool, v_pool, t, lens, torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), None, 1)


def test_rejects_lengths_past_the_table():
    k_pool, v_pool, table, lens, q = _small()
    capacity = table.shape[1] * k_pool.shape[1]
    for bad in (capacity + 1, -1):
        with pytest.raises(ValueError, match="seq_lens"):
            paged_decode_attention(q, k_pool, v_pool, table, torch.tensor([bad, 3], dtype=torch.int32))
    t = table.clone()
    t[:, 2] = 0  # a full table: length = capacity is fine
    paged_decode_attention(q, k_pool, v_pool, t, torch.tensor([capacity, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="room for"):
        paged_kv_append(k_pool, v_pool, t, torch.tensor([capacity - 1, 0], dtype=torch.int32), torch.randn(2, 2, 2, 8),
                        torch.randn(2, 2, 2, 8))
    with pytest.raises(ValueError, match="negative"):
        paged_kv_append(k_pool, v_pool, t, torch.tensor([-1, 0], dtype=torch.int32), torch.randn(2, 1, 2, 8),
                        torch.randn(2, 1, 2, 8))
    with pytest.raises(ValueError, match="counts"):
        paged_kv_append(k_pool, v_pool, t, lens * 0, torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8),
                        torch.tensor([2, 0], dtype=torch.int32))


def test_rejects_other_bad_arguments():
    k_pool, v_pool, table, lens, q = _small()
    with pytest.raises(ValueError, match="scale"):
        paged_decode_attention(q, k_pool, v_pool, table, lens, float("nan"))
    with pytest.raises(ValueError, match="different tensors"):
        _C.paged_kv_append(k_pool, k_pool, table, lens * 0, torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), None, 1)
    with pytest.raises(ValueError, match="threads"):
        _C.paged_kv_gather(k_pool, table, lens, torch.empty(2, 20, 2, 8), 0)
    with pytest.raises(TypeError, match="not a tensor"):
        _C.paged_kv_gather([1.0], table, lens, torch.empty(2, 20, 2, 8), 1)
    with pytest.raises(ValueError, match="device"):
        paged_decode_attention(q, k_pool, v_pool, table.to("meta"), lens)
    with pytest.raises(ValueError, match="outside"):
        contiguous_decode_attention(q, torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8),
                                    torch.tensor([11, 1], dtype=torch.int32))


# ---- PagedKVCache ------------------------------------------------------------------------------
def test_cache_allocates_and_frees_blocks():
    c = PagedKVCache(num_blocks=6, n_kv_heads=1, head_dim=4, block_size=4)
    c.add_sequence("a")
    c.add_sequence("b")
    c.prepare(["a", "b"], [5, 4])  # a: 2 blocks, b: 1 block
    assert c.num_free_blocks == 3 and len(c.blocks_of("a")) == 2
    with pytest.raises(OutOfBlocksError, match="needs 4 more blocks"):
        c.prepare(["a", "b"], [20, 5])  # nothing allocated on failure
    assert c.num_free_blocks == 3 and c.seq_len("a") == 0
    with pytest.raises(ValueError, match="already exists"):
        c.add_sequence("a")
    with pytest.raises(KeyError):
        c.prepare(["zz"])
    with pytest.raises(ValueError, match="twice"):
        c.prepare(["a", "a"])
    assert c.free_sequence("a") == 2 and c.num_free_blocks == 5
    c.truncate("b", 0)
    assert c.num_free_blocks == 6


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
def test_cache_prefill_then_decode_matches_reference(dtype, atol, rtol):
    torch.manual_seed(0)
    n_heads, n_kv, D, layers = 8, 2, 32, 2
    c = PagedKVCache(num_blocks=40, n_kv_heads=n_kv, head_dim=D, num_layers=layers, block_size=7, dtype=dtype)
    ids = ["x", "y", "z"]
    for s in ids:
        c.add_sequence(s)
    history = {(l, s): ([], []) for l in range(layers) for s in ids}
    prompt = [13, 1, 30]
    steps = [prompt] + [[1, 1, 1]] * 9
    for step_n in steps:
        st = c.prepare(ids, step_n)
        q = torch.randn(3, n_heads, D).to(dtype)
        for l in range(layers):
            k_new = torch.randn(3, max(step_n), n_kv, D).to(dtype)
            v_new = torch.randn(3, max(step_n), n_kv, D).to(dtype)
            c.append(l, st, k_new, v_new)
            for b, s in enumerate(ids):
                history[(l, s)][0].append(k_new[b, : step_n[b]])
                history[(l, s)][1].append(v_new[b, : step_n[b]])
            out = c.attention(l, st, q)
            for b, s in enumerate(ids):
                k = torch.cat(history[(l, s)][0]).double()  # (len, n_kv, D)
                v = torch.cat(history[(l, s)][1]).double()
                kk, vv = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
                p = torch.softmax(torch.einsum("hd,lhd->hl", q[b].double(), kk) / math.sqrt(D), -1)
                _close(out[b], torch.einsum("hl,lhd->hd", p, vv), atol, rtol)
        c.commit(st)
    assert [c.seq_len(s) for s in ids] == [22, 10, 39]
    assert c.num_used_blocks == 4 + 2 + 6
    k, v = c.gather(1, ids)
    assert torch.equal(k[2, :39], torch.cat(history[(1, "z")][0]))
    c.free_sequence("y")
    assert c.num_free_blocks == 40 - 10


def test_cache_rejects_bad_construction():
    with pytest.raises(ValueError, match="block_size"):
        PagedKVCache(num_blocks=4, n_kv_heads=1, head_dim=4, block_size=0)
    with pytest.raises(TypeError, match="dtype"):
        PagedKVCache(num_blocks=4, n_kv_heads=1, head_dim=4, dtype=torch.float16)
