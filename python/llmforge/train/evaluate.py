"""Held-out metrics that do not depend on the tokenizer.

    bpb = bits_per_byte(model, dataset, token_bytes)     # token_bytes[id] = bytes the token stands for

bits per byte = sum over predicted tokens of -log2 p(token) / sum of their byte lengths.
The first token of each packed document segment has no context and is not predicted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_byte_lengths(tokenizer, special_bytes: int = 1) -> torch.Tensor:
    """Bytes per token id; special tokens (eos marks a paragraph break) count as `special_bytes`."""
    specials = set(getattr(tokenizer, "special_tokens", {}).values())
    return torch.tensor([special_bytes if i in specials else len(tokenizer.id_to_token(i))
                         for i in range(tokenizer.vocab_size)], dtype=torch.float64)


@torch.no_grad()
def bits_per_byte(model, data, token_bytes: torch.Tensor, batch_size: int = 8, max_batches: int | None = None) -> dict:
    """Evaluate over every sequence of a PackedDataset in order (its position is restored)."""
    was = model.training
    model.eval()
    state = data.state_dict()
    shuffle = data.shuffle
    data.shuffle, data.epoch, data.pos = False, 0, 0
    data._order = None
    nats = nbytes = ntok = 0.0
    n_batches = math.ceil(len(data) / batch_size) if max_batches is None else max_batches
    try:
        for _ in range(n_batches):
            b = data.next_batch(batch_size)
            tokens, pos = b["input_ids"], b.get("position_ids")
            logits = model(tokens, pos)[:, :-1].float()
            tgt = tokens[:, 1:]
            valid = pos[:, 1:] != 0 if pos is not None else torch.ones_like(tgt, dtype=torch.bool)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none").view_as(tgt)
            nats += float(nll[valid].double().sum())
            nbytes += float(token_bytes[tgt[valid]].sum())
            ntok += float(valid.sum())
    finally:
        data.shuffle = shuffle
        data._order = None
        data.load_state_dict(state)
        model.train(was)
    return {"bits_per_byte": nats / math.log(2) / max(1.0, nbytes), "nats_per_token": nats / max(1.0, ntok),
            "tokens": int(ntok), "bytes": int(nbytes)}
