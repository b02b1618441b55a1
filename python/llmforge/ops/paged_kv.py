"""Paged KV cache ops: append new keys/values into a block pool, gather them back,
and decode attention that reads keys/values straight from the pages.

    from llmforge.ops import paged_kv_append, paged_kv_gather, paged_decode_attention
    # k_pool, v_pool: (num_blocks, block_size, n_kv_heads, head_dim)   float32 | bfloat16
    # block_table:    int32 (batch, max_blocks)  pool block of each sequence's j-th page; -1 = unused
    # seq_lens:       int32 (batch,)             tokens already cached per sequence
    paged_kv_append(k_pool, v_pool, block_table, seq_lens, k_new, v_new)   # in place, at seq_lens[b]..
    out = paged_decode_attention(q, k_pool, v_pool, block_table, seq_lens + 1)  # q: (batch, n_heads, head_dim)
    k = paged_kv_gather(k_pool, block_table, seq_lens)  # (batch, max_len, n_kv_heads, head_dim), zeros past each length

Token p of sequence b lives in block block_table[b, p // block_size], slot p % block_size.
Grouped-query attention: query head i reads kv head i // (n_heads // n_kv_heads), as
``scaled_dot_product_attention(..., enable_gqa=True)`` does. A sequence of length 0 gets
zeros. The kernels (csrc/cpu/paged_kv.cpp, CPU only) accumulate in float32 with an online
softmax over the pages; the native adapter checks every block index a call touches, so a
corrupt table raises ValueError and never reads or writes outside the pool. Blocks must
not be shared by two sequences that append in the same call. The block manager the
generation engine uses is ``llmforge.generate.paged_cache.PagedKVCache``.

On CUDA tensors ``paged_kv_append`` and ``paged_decode_attention`` run kernels/paged_attn.cu
(float32, float16 or bfloat16 pools; decode needs head_dim 64 or 128): the decode splits long
sequences over several blocks and merges them by log-sum-exp, and reads each K/V row once for
all the query heads that share it. The table and lengths are checked on the GPU with one
synchronising read per call, with the same errors as on CPU. ``paged_kv_gather`` on CUDA is
plain torch indexing; ``contiguous_decode_attention`` is CPU only.

``contiguous_decode_attention`` is the same kernel over a contiguous (batch, n_kv_heads,
max_len, head_dim) cache, for comparison. The ``*_reference`` functions are pure torch
(attention in float64) and serve as the tests' references.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, stream, threads

_CACHE_DTYPES = (torch.float32, torch.bfloat16)
_CUDA_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _on_cpu(op: str, **tensors: Tensor | None) -> None:
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        names = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t is not None)
        raise ValueError(f"{op}: tensors are on different devices ({names}); move them to one device")
    for dev in devices:
        if dev.type not in ("cpu", "meta"):
            raise ValueError(f"{op}: the paged KV cache kernels run on CPU tensors only, got {dev}")


def _on_one_device(op: str, **tensors: Tensor | None) -> None:
    """All on one CPU, CUDA or meta device (the ops that have CUDA kernels)."""
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        names = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t is not None)
        raise ValueError(f"{op}: tensors are on different devices ({names}); move them to one device")
    for dev in devices:
        if dev.type not in ("cpu", "cuda", "meta"):
            raise ValueError(f"{op}: the paged KV cache kernels run on CPU or CUDA tensors, got {dev}")


def _check_cache(op: str, k_pool: Tensor, v_pool: Tensor, block_table: Tensor, seq_lens: Tensor,
                 cuda_ok: bool = False) -> None:
    """Shape/dtype/device checks shared by the kernels and the fake implementations."""
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool), ("block_table", block_table), ("seq_lens", seq_lens)):
        require(isinstance(t, Tensor), f"{op}: {name} must be a tensor")
    if cuda_ok and k_pool.device.type == "cuda":
        if k_pool.dtype not in _CUDA_CACHE_DTYPES:
            raise TypeError(f"{op}: k_pool has dtype {k_pool.dtype}, expected float32, float16 or bfloat16")
    elif k_pool.dtype not in _CACHE_DTYPES:
        raise TypeError(f"{op}: k_pool has dtype {k_pool.dtype}, expected float32 or bfloat16")
    if v_pool.dtype != k_pool.dtype:
        raise TypeError(f"{op}: v_pool has dtype {v_pool.dtype} but k_pool has {k_pool.dtype}; they must match")
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens)):
        if t.dtype != torch.int32:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected torch.int32")
    require(k_pool.dim() == 4 and k_pool.numel() > 0,
            f"{op}: k_pool must be a non-empty (num_blocks, block_size, n_kv_heads, head_dim) tensor, "
            f"got shape {tuple(k_pool.shape)}")
    require(v_pool.shape == k_pool.shape,
            f"{op}: v_pool has shape {tuple(v_pool.shape)} but k_pool has {tuple(k_pool.shape)}")
    require(block_table.dim() == 2, f"{op}: block_table must be (batch, max_blocks), got {tuple(block_table.shape)}")
    require(seq_lens.shape == (block_table.shape[0],),
            f"{op}: seq_lens has shape {tuple(seq_lens.shape)}, expected ({block_table.shape[0]},)")
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool), ("block_table", block_table), ("seq_lens", seq_lens)):
        require(t.is_contiguous(), f"{op}: {name} must be contiguous; call .contiguous() first")
    if cuda_ok:
        _on_one_device(op, k_pool=k_pool, v_pool=v_pool, block_table=block_table, seq_lens=seq_lens)
    else:
        _on_cpu(op, k_pool=k_pool, v_pool=v_pool, block_table=block_table, seq_lens=seq_lens)


def _check_query(op: str, q: Tensor, k_dtype: torch.dtype, batch: int, n_kv_heads: int, head_dim: int) -> None:
    require(isinstance(q, Tensor), f"{op}: q must be a tensor")
    if q.dtype != k_dtype:
        raise TypeError(f"{op}: q has dtype {q.dtype} but the cache has {k_dtype}; they must match")
    require(q.dim() == 3, f"{op}: q must be (batch, n_heads, head_dim), got shape {tuple(q.shape)}")
    require(q.shape[0] == batch, f"{op}: q has {q.shape[0]} sequences but the cache has {batch}")
    require(q.shape[2] == head_dim, f"{op}: q has head_dim {q.shape[2]} but the cache has {head_dim}")
    require(q.shape[1] > 0 and q.shape[1] % n_kv_heads == 0,
            f"{op}: the number of query heads ({q.shape[1]}) must be a positive multiple of n_kv_heads ({n_kv_heads})")
    require(q.is_contiguous(), f"{op}: q must be contiguous; call .contiguous() first")


def _scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


# ---- append ------------------------------------------------------------------------------
def _check_append(k_pool, v_pool, block_table, seq_lens, k_new, v_new, counts):
    op = "paged_kv_append"
    _check_cache(op, k_pool, v_pool, block_table, seq_lens, cuda_ok=True)
    _on_one_device(op, k_pool=k_pool, k_new=k_new, v_new=v_new, counts=counts)
    if k_new.dtype != k_pool.dtype or v_new.dtype != k_pool.dtype:
        raise TypeError(f"{op}: k_new/v_new have dtypes {k_new.dtype}/{v_new.dtype} but the pools have {k_pool.dtype}")
    want = (block_table.shape[0], "n_new", k_pool.shape[2], k_pool.shape[3])
    require(k_new.dim() == 4 and (k_new.shape[0], k_new.shape[2], k_new.shape[3]) == (want[0], want[2], want[3]),
            f"{op}: k_new has shape {tuple(k_new.shape)}, expected {want}")
    require(v_new.shape == k_new.shape, f"{op}: v_new has shape {tuple(v_new.shape)} but k_new has {tuple(k_new.shape)}")
    require(k_new.is_contiguous() and v_new.is_contiguous(), f"{op}: k_new and v_new must be contiguous")
    if counts is not None:
        if counts.dtype != torch.int32:
            raise TypeError(f"{op}: counts has dtype {counts.dtype}, expected torch.int32")
        require(counts.shape == seq_lens.shape, f"{op}: counts has shape {tuple(counts.shape)}, expected {tuple(seq_lens.shape)}")
        require(counts.is_contiguous(), f"{op}: counts must be contiguous")


@torch.library.custom_op("llmforge::paged_kv_append", mutates_args=("k_pool", "v_pool"))
@on_input_device
def paged_kv_append(k_pool: Tensor, v_pool: Tensor, block_table: Tensor, seq_lens: Tensor, k_new: Tensor,
                    v_new: Tensor, counts: Tensor | None = None) -> None:
    """Write k_new/v_new (batch, n_new, n_kv_heads, head_dim) into the pools at positions
    seq_lens[b], seq_lens[b] + 1, ... of each sequence (in place). counts (int32 (batch,),
    optional) writes only the first counts[b] rows of sequence b (ragged appends).
    seq_lens is not changed: the caller advances it. Raises ValueError, writing nothing,
    if a position falls outside block_table or on an entry that is not a pool block."""
    _check_append(k_pool, v_pool, block_table, seq_lens, k_new, v_new, counts)
    if k_pool.device.type == "cuda":
        _check_append_contents(k_pool, block_table, seq_lens, k_new.shape[1], counts)
        with torch.cuda.device(k_pool.device):
            C.paged_kv_append_cuda(k_pool, v_pool, block_table, seq_lens, arg(k_new), arg(v_new), counts,
                                   stream(k_pool))
        return
    C.paged_kv_append(k_pool, v_pool, block_table, seq_lens, arg(k_new), arg(v_new), counts, threads())


@register_fake(paged_kv_append)
def _(k_pool, v_pool, block_table, seq_lens, k_new, v_new, counts=None):
    _check_append(k_pool, v_pool, block_table, seq_lens, k_new, v_new, counts)


# ---- gather ------------------------------------------------------------------------------
@torch.library.custom_op("llmforge::paged_kv_gather", mutates_args=())
@on_input_device
def _paged_kv_gather(pool: Tensor, block_table: Tensor, seq_lens: Tensor, max_len: int) -> Tensor:
    _check_cache("paged_kv_gather", pool, pool, block_table, seq_lens)
    require(max_len >= 0, f"paged_kv_gather: max_len must be >= 0, got {max_len}")
    out = pool.new_empty(block_table.shape[0], max_len, pool.shape[2], pool.shape[3])
    if out.numel() == 0:
        require(not seq_lens.any(), f"paged_kv_gather: max_len 0 is shorter than the longest sequence")
        return out
    C.paged_kv_gather(pool, block_table, seq_lens, out, threads())
    return out


@register_fake(_paged_kv_gather)
def _(pool, block_table, seq_lens, max_len):
    _check_cache("paged_kv_gather", pool, pool, block_table, seq_lens)
    return pool.new_empty(block_table.shape[0], max_len, pool.shape[2], pool.shape[3])


def paged_kv_gather(pool: Tensor, block_table: Tensor, seq_lens: Tensor, max_len: int | None = None) -> Tensor:
    """The cached rows of each sequence as a contiguous (batch, max_len, n_kv_heads, head_dim)
    tensor, zeros past seq_lens[b]. max_len defaults to the longest sequence. On CUDA tensors
    this is plain torch indexing (after the same table checks), not a hand-written kernel."""
    if isinstance(pool, Tensor) and pool.device.type == "cuda":
        return _gather_cuda(pool, block_table, seq_lens, max_len)
    if max_len is None:
        max_len = int(seq_lens.max()) if seq_lens.numel() else 0
    return _paged_kv_gather(pool, block_table, seq_lens, int(max_len))


def _gather_cuda(pool: Tensor, block_table: Tensor, seq_lens: Tensor, max_len: int | None) -> Tensor:
    op = "paged_kv_gather"
    _check_cache(op, pool, pool, block_table, seq_lens, cuda_ok=True)
    longest = _check_decode_contents(pool, block_table, seq_lens, op)
    max_len = longest if max_len is None else int(max_len)
    require(max_len >= longest, f"{op}: max_len {max_len} is shorter than the longest sequence ({longest})")
    B, bs = block_table.shape[0], pool.shape[1]
    pos = torch.arange(max_len, device=pool.device)
    valid = pos[None, :] < seq_lens.long()[:, None]                                   # (B, max_len)
    col = (pos // bs).clamp(max=block_table.shape[1] - 1)[None, :].expand(B, -1)
    blk = torch.where(valid, block_table.long().gather(1, col), 0)
    out = pool[blk, (pos % bs)[None, :].expand(B, -1)]                                # (B, max_len, Hkv, D)
    return out.masked_fill(~valid[:, :, None, None], 0)


# ---- decode attention -----------------------------------------------------------------------
def _check_decode(q, k_pool, v_pool, block_table, seq_lens):
    _check_cache("paged_decode_attention", k_pool, v_pool, block_table, seq_lens, cuda_ok=True)
    _check_query("paged_decode_attention", q, k_pool.dtype, block_table.shape[0], k_pool.shape[2], k_pool.shape[3])
    _on_one_device("paged_decode_attention", q=q, k_pool=k_pool)


@torch.library.custom_op("llmforge::paged_decode_attention", mutates_args=())
@on_input_device
def paged_decode_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor, seq_lens: Tensor,
                           scale: float | None = None) -> Tensor:
    """softmax(scale * q K^T) V for one query token per sequence over its seq_lens[b] cached
    positions, reading K/V from the pages. q, out: (batch, n_heads, head_dim); scale defaults
    to 1/sqrt(head_dim)."""
    _check_decode(q, k_pool, v_pool, block_table, seq_lens)
    out = torch.empty_like(q)
    if q.device.type == "cuda":
        longest = _check_decode_contents(k_pool, block_table, seq_lens)
        _decode_cuda(q, k_pool, v_pool, block_table, seq_lens, out, _scale(scale, q.shape[2]), longest)
        return out
    C.paged_decode_attention(arg(q), k_pool, v_pool, block_table, seq_lens, out, _scale(scale, q.shape[2]), threads())
    return out


@register_fake(paged_decode_attention)
def _(q, k_pool, v_pool, block_table, seq_lens, scale=None):
    _check_decode(q, k_pool, v_pool, block_table, seq_lens)
    return torch.empty_like(q)


def _check_contiguous_cache(q, k, v, seq_lens):
    op = "contiguous_decode_attention"
    for name, t in (("k", k), ("v", v), ("seq_lens", seq_lens)):
        require(isinstance(t, Tensor), f"{op}: {name} must be a tensor")
    if k.dtype not in _CACHE_DTYPES or v.dtype != k.dtype:
        raise TypeError(f"{op}: k/v have dtypes {k.dtype}/{v.dtype}, expected matching float32 or bfloat16")
    if seq_lens.dtype != torch.int32:
        raise TypeError(f"{op}: seq_lens has dtype {seq_lens.dtype}, expected torch.int32")
    require(k.dim() == 4 and k.numel() > 0 and v.shape == k.shape,
            f"{op}: k and v must be non-empty (batch, n_kv_heads, max_len, head_dim), got {tuple(k.shape)} and "
            f"{tuple(v.shape)}")
    require(seq_lens.shape == (k.shape[0],), f"{op}: seq_lens has shape {tuple(seq_lens.shape)}, expected ({k.shape[0]},)")
    require(k.is_contiguous() and v.is_contiguous() and seq_lens.is_contiguous(), f"{op}: k, v and seq_lens must be contiguous")
    _check_query(op, q, k.dtype, k.shape[0], k.shape[1], k.shape[3])
    _on_cpu(op, q=q, k=k, v=v, seq_lens=seq_lens)


@torch.library.custom_op("llmforge::contiguous_decode_attention", mutates_args=())
@on_input_device
def contiguous_decode_attention(q: Tensor, k: Tensor, v: Tensor, seq_lens: Tensor, scale: float | None = None) -> Tensor:
    """paged_decode_attention's kernel over a contiguous cache k, v (batch, n_kv_heads, max_len,
    head_dim); sequence b attends to its first seq_lens[b] positions."""
    _check_contiguous_cache(q, k, v, seq_lens)
    out = torch.empty_like(q)
    C.contiguous_decode_attention(arg(q), k, v, seq_lens, out, _scale(scale, q.shape[2]), threads())
    return out


@register_fake(contiguous_decode_attention)
def _(q, k, v, seq_lens, scale=None):
    _check_contiguous_cache(q, k, v, seq_lens)
    return torch.empty_like(q)


# ---- CUDA: content checks (one device read per call) and launch ------------------------------
def _bad_block(op: str, block_table: Tensor, need: Tensor, num_blocks: int) -> None:
    """Raise naming the first table entry in `need` (bool, like block_table) outside the pool."""
    bad = need & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0].tolist())
        raise ValueError(f"{op}: block_table[{b}, {j}] = {int(block_table[b, j])} is not a block of the pool "
                         f"(0 <= index < {num_blocks}) but sequence {b} needs it")


def _check_append_contents(k_pool: Tensor, block_table: Tensor, seq_lens: Tensor, n_new: int,
                           counts: Tensor | None) -> None:
    op = "paged_kv_append"
    bs, capacity = k_pool.shape[1], block_table.shape[1] * k_pool.shape[1]
    lens = seq_lens.long()
    cnt = torch.full_like(lens, n_new) if counts is None else counts.long()
    cols = torch.arange(block_table.shape[1], device=block_table.device)[None, :]
    need = (cnt[:, None] > 0) & (cols >= (lens // bs)[:, None]) & (cols <= ((lens + cnt - 1) // bs)[:, None])
    bad_entry = need & ((block_table < 0) | (block_table >= k_pool.shape[0]))
    flags = torch.stack([(cnt < 0).any() | (cnt > n_new).any(), (lens < 0).any(), (lens + cnt > capacity).any(),
                         bad_entry.any()]).tolist()
    if not any(flags):
        return
    lens_l, cnt_l = lens.tolist(), cnt.tolist()
    for b, (n, c) in enumerate(zip(lens_l, cnt_l)):
        require(0 <= c <= n_new, f"{op}: counts[{b}] = {c} is outside [0, {n_new}]")
        require(n >= 0, f"{op}: seq_lens[{b}] = {n} is negative")
        require(n + c <= capacity, f"{op}: sequence {b} would grow to {n + c} tokens but block_table has room for "
                                   f"{capacity} ({block_table.shape[1]} blocks of {bs}); allocate more blocks first")
    _bad_block(op, block_table, need, k_pool.shape[0])


def _check_decode_contents(k_pool: Tensor, block_table: Tensor, seq_lens: Tensor,
                           op: str = "paged_decode_attention") -> int:
    """Raises on lengths outside the table or missing blocks; returns the longest length."""
    bs, capacity = k_pool.shape[1], block_table.shape[1] * k_pool.shape[1]
    if seq_lens.numel() == 0:
        return 0
    lens = seq_lens.long()
    cols = torch.arange(block_table.shape[1], device=block_table.device)[None, :]
    need = cols < ((lens + bs - 1) // bs)[:, None]
    bad_entry = need & ((block_table < 0) | (block_table >= k_pool.shape[0]))
    lo, hi, bad = torch.stack([lens.min(), lens.max(), bad_entry.any().long()]).tolist()
    if lo < 0 or hi > capacity:
        b = int(((lens < 0) | (lens > capacity)).nonzero()[0])
        raise ValueError(f"{op}: seq_lens[{b}] = {int(lens[b])} is outside [0, {capacity}] (block_table has "
                         f"{block_table.shape[1]} blocks of {bs} per sequence)")
    if bad:
        _bad_block(op, block_table, need, k_pool.shape[0])
    return int(hi)


def _decode_cuda(q, k_pool, v_pool, block_table, seq_lens, out, scale: float, longest: int) -> None:
    """kernels/paged_attn.cu without the content checks (callers check, or own the table)."""
    n = C.paged_decode_workspace_cuda(arg(q), k_pool, block_table, int(longest))
    ws = torch.empty(n, dtype=torch.float32, device=q.device) if n > 0 else None
    with torch.cuda.device(q.device):
        C.paged_decode_attention_cuda(arg(q), k_pool, v_pool, block_table, seq_lens, out, ws, float(scale),
                                      int(longest), stream(q))


# ---- pure-torch references -------------------------------------------------------------------
def _positions(block_table: Tensor, seq_lens: Tensor, b: int, block_size: int) -> tuple[Tensor, Tensor]:
    pos = torch.arange(int(seq_lens[b]))
    return block_table[b].long()[pos // block_size], pos % block_size


def paged_kv_append_reference(k_pool: Tensor, v_pool: Tensor, block_table: Tensor, seq_lens: Tensor, k_new: Tensor,
                              v_new: Tensor, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pure torch: returns updated copies of (k_pool, v_pool)."""
    k_pool, v_pool = k_pool.clone(), v_pool.clone()
    bs = k_pool.shape[1]
    for b in range(block_table.shape[0]):
        n = k_new.shape[1] if counts is None else int(counts[b])
        pos = int(seq_lens[b]) + torch.arange(n)
        blk, slot = block_table[b].long()[pos // bs], pos % bs
        k_pool[blk, slot] = k_new[b, :n]
        v_pool[blk, slot] = v_new[b, :n]
    return k_pool, v_pool


def paged_kv_gather_reference(pool: Tensor, block_table: Tensor, seq_lens: Tensor, max_len: int | None = None) -> Tensor:
    """Pure torch: (batch, max_len, n_kv_heads, head_dim) in pool's dtype, zeros past each length."""
    if max_len is None:
        max_len = int(seq_lens.max()) if seq_lens.numel() else 0
    out = pool.new_zeros(block_table.shape[0], max_len, pool.shape[2], pool.shape[3])
    for b in range(block_table.shape[0]):
        blk, slot = _positions(block_table, seq_lens, b, pool.shape[1])
        out[b, : blk.numel()] = pool[blk, slot]
    return out


def _attention64(q: Tensor, k: Tensor, v: Tensor, seq_lens: Tensor, scale: float | None) -> Tensor:
    """q (B, H, D); k, v (B, L, Hkv, D): float64 masked softmax attention; zeros for length 0.
    Query head i reads kv head i // (H // Hkv)."""
    B, H, D = q.shape
    Hkv = k.shape[2]
    qd = q.to(torch.float64).view(B, Hkv, H // Hkv, D)
    s = torch.einsum("bkgd,blkd->bkgl", qd, k.to(torch.float64)) * _scale(scale, D)
    mask = torch.arange(k.shape[1])[None, :] < seq_lens.long()[:, None]  # (B, L)
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no keys -> 0
    return torch.einsum("bkgl,blkd->bkgd", p, v.to(torch.float64)).reshape(B, H, D)


def paged_decode_attention_reference(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor, seq_lens: Tensor,
                                     scale: float | None = None) -> Tensor:
    """Pure torch, in float64 (the result is float64): gathers the pages, then a masked softmax."""
    max_len = int(seq_lens.max()) if seq_lens.numel() else 0
    k = paged_kv_gather_reference(k_pool, block_table, seq_lens, max_len)
    v = paged_kv_gather_reference(v_pool, block_table, seq_lens, max_len)
    return _attention64(q, k, v, seq_lens, scale)


def contiguous_decode_attention_reference(q: Tensor, k: Tensor, v: Tensor, seq_lens: Tensor,
                                          scale: float | None = None) -> Tensor:
    """Pure torch, float64: k, v (batch, n_kv_heads, max_len, head_dim)."""
    return _attention64(q, k.transpose(1, 2), v.transpose(1, 2), seq_lens, scale)
