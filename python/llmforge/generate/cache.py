"""A contiguous key/value cache for batched incremental decoding with left-padded prompts.

    cache = KVCache(model.cfg, batch=B, max_len=L, valid=prompt_mask)   # valid: (B, P) real-token mask
    logits = model.forward_cached(tokens, positions, cache)
    cache.reorder(beam_index)          # beam search: rows follow their parent beams

Keys/values live in (B, n_kv_heads, max_len, head_dim) buffers per layer. `valid` marks
real (non-padding) slots; attention masks out padding and the future.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, cfg, batch: int, max_len: int, dtype=torch.float32, device="cpu"):
        self.k = [torch.zeros(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype=dtype, device=device)
                  for _ in range(cfg.n_layers)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.max_len = max_len

    def set_valid(self, mask: torch.Tensor) -> None:
        """Mark which of the next mask.shape[1] slots hold real tokens (before appending them)."""
        self.valid[:, self.length:self.length + mask.shape[1]] = mask

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > max_len {self.max_len}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def mask(self, T: int) -> torch.Tensor:
        """(B, 1, T, length+T) boolean: real slots only, causal over the new tokens."""
        end = self.length + T
        q_abs = torch.arange(self.length, end, device=self.valid.device)[:, None]
        k_abs = torch.arange(end, device=self.valid.device)[None, :]
        causal = k_abs <= q_abs                                     # (T, end)
        m = self.valid[:, None, None, :end] & causal[None, None]
        # a padding query (left padding in the prompt) attends to itself so softmax stays finite
        diag = torch.zeros_like(m)
        diag[..., torch.arange(T), torch.arange(self.length, end)] = True
        return m | diag

    def advance(self, T: int) -> None:
        self.length += T

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch, in that order (beam search: a row may repeat or vanish;
        the batch size becomes len(index))."""
        index = index.to(self.valid.device, torch.long)
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.valid = self.valid.index_select(0, index)
