"""Perplexity and bits per byte of held-out text.

    r = text_perplexity(model, tokenizer, ["held-out document", ...])
    r["bits_per_byte"], r["perplexity"], r["nats_per_token"], r["tokens"], r["bytes"]
    r = packed_bits_per_byte(model, tokenizer, packed_heldout)    # a PackedDataset (train.evaluate)

Each document is scored whole: its tokens follow a conditioning token (bos, else eos) so
every token is predicted, and documents longer than the model's window are cut into
consecutive windows that overlap by one token (each token is predicted once, with the
window's earlier tokens as context). Bits per byte divides the total negative
log-likelihood (in bits) by the documents' UTF-8 byte count, so it compares across
tokenizers; perplexity is exp(nats per token) and does not.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..train.evaluate import bits_per_byte, token_byte_lengths
from .loglik import special_id


@torch.no_grad()
def text_perplexity(model, tokenizer, texts, batch_size: int = 8, max_bytes: int | None = None) -> dict:
    texts = [t for t in texts if t]
    if max_bytes is not None:           # a prefix of the documents, in order, up to max_bytes
        kept, total = [], 0
        for t in texts:
            b = len(t.encode("utf-8"))
            if total + b > max_bytes and kept:
                break
            kept.append(t)
            total += b
        texts = kept
    if not texts:
        raise ValueError("no held-out text to score")
    start = special_id(tokenizer, "bos")
    start = special_id(tokenizer, "eos") if start is None else start
    if start is None:
        raise ValueError("the tokenizer has neither a bos nor an eos token to condition the first token on")
    L = model.cfg.max_seq_len
    windows = []
    for t in texts:
        ids = [start] + list(tokenizer.encode(t))
        for s in range(0, len(ids) - 1, L):
            windows.append(ids[s:s + L + 1])              # inputs w[:-1], targets w[1:]
    dev = next(model.parameters()).device
    nats, ntok = 0.0, 0
    was = model.training
    model.eval()
    try:
        windows.sort(key=len, reverse=True)
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            T = len(chunk[0]) - 1
            tokens = torch.zeros(len(chunk), T, dtype=torch.long, device=dev)
            tgt = torch.full((len(chunk), T), -100, dtype=torch.long, device=dev)
            for r, w in enumerate(chunk):
                tokens[r, :len(w) - 1] = torch.tensor(w[:-1], device=dev)
                tgt[r, :len(w) - 1] = torch.tensor(w[1:], device=dev)
            logits = model(tokens).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100,
                                  reduction="none")
            nats += float(nll.double().sum())
            ntok += int((tgt != -100).sum())
    finally:
        model.train(was)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"bits_per_byte": nats / math.log(2) / nbytes, "nats_per_token": nats / ntok,
            "perplexity": math.exp(nats / ntok), "tokens": ntok, "bytes": nbytes, "documents": len(texts)}


def packed_bits_per_byte(model, tokenizer, packed, batch_size: int = 8, max_batches: int | None = None) -> dict:
    """The pretraining held-out metric (llmforge.train.evaluate) over a PackedDataset, plus perplexity."""
    r = bits_per_byte(model, packed, token_byte_lengths(tokenizer), batch_size=batch_size, max_batches=max_batches)
    return {**r, "perplexity": math.exp(r["nats_per_token"])}
