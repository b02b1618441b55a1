"""Continuation log-likelihoods, the primitive behind multiple-choice benchmarks.

    ctx, cont = encode_pair(tokenizer, "Question...\nAnswer:", " B")
    lls = loglikelihoods(model, [(ctx, cont), ...])     # [(sum log p(cont | ctx), is_greedy), ...]

As lm-eval-harness does: the pair is encoded whole and split where the context's own
encoding ends (so a merge across the boundary stays with the continuation), trailing
spaces of the context move to the continuation, and a sequence longer than the model's
window is cut from the left. Requests whose model input is identical (a shared context with
one-token continuations, as in MMLU's " A"/" B"/" C"/" D") share one forward pass.
Scores are computed in float32 (log_softmax of float32 logits), summed in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def special_id(tokenizer, role: str) -> int | None:
    """The id of the tokenizer's bos/eos/pad token, whichever way the tokenizer exposes it."""
    v = getattr(tokenizer, f"{role}_id", None)
    if v is not None:
        return int(v)
    name = getattr(tokenizer, f"{role}_token", None)
    if name and hasattr(tokenizer, "token_to_id"):
        v = tokenizer.token_to_id(name)
        return None if v is None else int(v)
    return None


def encode_pair(tokenizer, context: str, continuation: str, prefix_ids: tuple[int, ...] = ()) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) with the lm-eval split rule. prefix_ids (e.g. bos) go in
    front of the context; an empty context needs them (nothing would predict the first token)."""
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = list(tokenizer.encode(context + continuation))
    ctx = list(tokenizer.encode(context))
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after the context")
    ctx = list(prefix_ids) + ctx
    if not ctx:
        raise ValueError("empty context: give prefix_ids (e.g. the bos or eos id) to condition on")
    return ctx, cont


@torch.no_grad()
def loglikelihoods(model, requests, batch_size: int = 16, pad_id: int = 0) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the summed log-probability of the continuation
    and whether greedy decoding would have produced it exactly."""
    max_len = model.cfg.max_seq_len
    dev = next(model.parameters()).device
    inputs: dict[tuple, int] = {}       # distinct model input -> slot
    plan = []                           # per request: (slot, first scored position, continuation)
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError(f"request {i}: context and continuation need at least one token each")
        if len(cont) > max_len:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_seq_len {max_len}")
        seq = (list(ctx) + list(cont))[-(max_len + 1):]       # left-truncate to the window
        inp = tuple(seq[:-1])
        slot = inputs.setdefault(inp, len(inputs))
        plan.append((slot, len(inp) - len(cont), list(cont)))
    seqs = list(inputs)
    order = sorted(range(len(seqs)), key=lambda s: -len(seqs[s]))   # long first: little padding per batch
    logps: list[torch.Tensor | None] = [None] * len(seqs)
    need: dict[int, int] = {}
    for slot, start, _ in plan:                 # only positions from the earliest scored one are kept
        need[slot] = min(need.get(slot, start), start)
    was = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            T = len(seqs[chunk[0]])
            tokens = torch.full((len(chunk), T), pad_id, dtype=torch.long, device=dev)
            for r, s in enumerate(chunk):
                tokens[r, :len(seqs[s])] = torch.tensor(seqs[s], device=dev)
            logits = model(tokens)                                   # (B, T, vocab); right padding is causal-safe
            for r, s in enumerate(chunk):
                lo = need[s]
                logps[s] = F.log_softmax(logits[r, lo:len(seqs[s])].float(), dim=-1).cpu()
    finally:
        model.train(was)
    out = []
    for slot, start, cont in plan:
        lp = logps[slot][start - need[slot]:]                       # (len(cont), vocab)
        tgt = torch.tensor(cont)
        ll = float(lp.gather(1, tgt[:, None]).double().sum())
        out.append((ll, bool((lp.argmax(-1) == tgt).all())))
    return out
