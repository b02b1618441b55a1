"""PagedKVCache: the block pool and per-sequence block tables behind the generation engine.

    cache = PagedKVCache(num_blocks=512, n_kv_heads=8, head_dim=128, num_layers=2, block_size=16)
    cache.add_sequence("a"); cache.add_sequence("b")
    step = cache.prepare(["a", "b"], n_new=1)        # allocates blocks as sequences grow
    for layer in range(2):
        cache.append(layer, step, k_new, v_new)      # k_new: (2, 1, n_kv_heads, head_dim)
        out = cache.attention(layer, step, q)        # q: (2, n_heads, head_dim), over the new lengths
    cache.commit(step)                               # the sequences are now one token longer
    cache.free_sequence("a")                         # its blocks go back to the pool

Pools: k_pools, v_pools of shape (num_layers, num_blocks, block_size, n_kv_heads, head_dim);
every layer uses the same block ids. prepare() raises OutOfBlocksError (allocating
nothing) when the free blocks do not cover the step. The ops it drives live in
llmforge.ops.paged_kv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor

from ..ops.paged_kv import paged_decode_attention, paged_kv_append, paged_kv_gather


class OutOfBlocksError(RuntimeError):
    """The block pool has too few free blocks for the requested step."""


@dataclass
class PagedBatch:
    """One step over a batch of sequences, as prepare() returns it."""
    seq_ids: list
    block_table: Tensor  # int32 (batch, max_blocks); -1 past each sequence's blocks
    seq_lens: Tensor     # int32 (batch,): cached tokens before the step (where append writes)
    new_lens: Tensor     # int32 (batch,): seq_lens + n_new (what attention reads)
    n_new: Tensor        # int32 (batch,)
    ragged: bool         # n_new differs between sequences (append passes counts)


class PagedKVCache:
    def __init__(self, num_blocks: int, n_kv_heads: int, head_dim: int, num_layers: int = 1, block_size: int = 16,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        for name, v in (("num_blocks", num_blocks), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("num_layers", num_layers), ("block_size", block_size)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"PagedKVCache: {name} must be a positive int, got {v!r}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"PagedKVCache: dtype must be float32 or bfloat16, got {dtype}")
        if num_blocks >= 2**31:
            raise ValueError("PagedKVCache: num_blocks must fit in int32")
        shape = (num_layers, num_blocks, block_size, n_kv_heads, head_dim)
        self.k_pools = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pools = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_layers = num_layers
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._blocks: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, int] = {}

    # ---- bookkeeping ---------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def sequences(self) -> list:
        return list(self._lens)

    def seq_len(self, seq_id: Hashable) -> int:
        return self._lens[self._known(seq_id)]

    def blocks_of(self, seq_id: Hashable) -> list[int]:
        return list(self._blocks[self._known(seq_id)])

    def _known(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._lens:
            raise KeyError(f"PagedKVCache: unknown sequence {seq_id!r}")
        return seq_id

    def add_sequence(self, seq_id: Hashable) -> None:
        """Start an empty sequence (no blocks until it grows)."""
        if seq_id in self._lens:
            raise ValueError(f"PagedKVCache: sequence {seq_id!r} already exists")
        self._blocks[seq_id] = []
        self._lens[seq_id] = 0

    def free_sequence(self, seq_id: Hashable) -> int:
        """Drop a sequence and return its blocks to the pool; returns how many were freed."""
        blocks = self._blocks.pop(self._known(seq_id))
        del self._lens[seq_id]
        self._free.extend(reversed(blocks))
        return len(blocks)

    def truncate(self, seq_id: Hashable, length: int) -> None:
        """Shorten a sequence to `length` tokens (e.g. rejected draft tokens), freeing whole blocks past it."""
        cur = self._lens[self._known(seq_id)]
        if not 0 <= length <= cur:
            raise ValueError(f"PagedKVCache: cannot truncate {seq_id!r} of length {cur} to {length}")
        keep = -(-length // self.block_size)
        blocks = self._blocks[seq_id]
        self._free.extend(reversed(blocks[keep:]))
        del blocks[keep:]
        self._lens[seq_id] = length

    def _blocks_needed(self, seq_id: Hashable, n_new: int) -> int:
        need = -(-(self._lens[seq_id] + n_new) // self.block_size)
        return max(0, need - len(self._blocks[seq_id]))

    def reserve(self, seq_ids: Sequence[Hashable], n_new: int | Sequence[int]) -> None:
        """Make room for n_new more tokens in each sequence; all or nothing."""
        counts = self._counts(seq_ids, n_new)
        needs = [self._blocks_needed(s, n) for s, n in zip(seq_ids, counts)]
        total = sum(needs)
        if total > len(self._free):
            raise OutOfBlocksError(
                f"PagedKVCache: the step needs {total} more blocks of {self.block_size} tokens but only "
                f"{len(self._free)} of {self.num_blocks} are free; free finished sequences or make a larger pool")
        for s, k in zip(seq_ids, needs):
            for _ in range(k):
                self._blocks[s].append(self._free.pop())

    def _counts(self, seq_ids: Sequence[Hashable], n_new: int | Sequence[int]) -> list[int]:
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("PagedKVCache: a sequence appears twice in one batch")
        for s in seq_ids:
            self._known(s)
        counts = [int(n_new)] * len(seq_ids) if isinstance(n_new, int) else [int(n) for n in n_new]
        if len(counts) != len(seq_ids) or any(n < 0 for n in counts):
            raise ValueError(f"PagedKVCache: n_new must be one int >= 0 or one per sequence, got {n_new!r}")
        return counts

    # ---- one step ----------------------------------------------------------------------------
    def prepare(self, seq_ids: Sequence[Hashable], n_new: int | Sequence[int] = 1) -> PagedBatch:
        """Reserve blocks for n_new tokens per sequence and build the batch's block table."""
        seq_ids = list(seq_ids)
        counts = self._counts(seq_ids, n_new)
        self.reserve(seq_ids, counts)
        rows = [self._blocks[s] for s in seq_ids]
        width = max([len(b) for b in rows] + [1])
        table = torch.tensor([b + [-1] * (width - len(b)) for b in rows], dtype=torch.int32).view(len(rows), width)
        lens = torch.tensor([self._lens[s] for s in seq_ids], dtype=torch.int32)
        n = torch.tensor(counts, dtype=torch.int32)
        dev = self.k_pools.device
        return PagedBatch(seq_ids, table.to(dev), lens.to(dev), (lens + n).to(dev), n.to(dev),
                          len(set(counts)) > 1)

    def append(self, layer: int, batch: PagedBatch, k_new: Tensor, v_new: Tensor) -> None:
        """Write the step's keys/values, (batch, max n_new, n_kv_heads, head_dim), for one layer."""
        paged_kv_append(self.k_pools[layer], self.v_pools[layer], batch.block_table, batch.seq_lens,
                        k_new.contiguous(), v_new.contiguous(), batch.n_new if batch.ragged else None)

    def attention(self, layer: int, batch: PagedBatch, q: Tensor, scale: float | None = None) -> Tensor:
        """Decode attention of q (batch, n_heads, head_dim) over each sequence including this step's tokens."""
        return paged_decode_attention(q.contiguous(), self.k_pools[layer], self.v_pools[layer], batch.block_table,
                                      batch.new_lens, scale)

    def commit(self, batch: PagedBatch) -> None:
        """The step's tokens are now part of the sequences."""
        for s, n in zip(batch.seq_ids, batch.n_new.tolist()):
            self._lens[self._known(s)] += n

    def gather(self, layer: int, seq_ids: Sequence[Hashable]) -> tuple[Tensor, Tensor]:
        """(k, v), each (batch, max_len, n_kv_heads, head_dim), zeros past each sequence's length."""
        batch = self.prepare(seq_ids, 0)
        return (paged_kv_gather(self.k_pools[layer], batch.block_table, batch.seq_lens),
                paged_kv_gather(self.v_pools[layer], batch.block_table, batch.seq_lens))
