"""Sequence log-probabilities without materialising full-vocabulary logits.

    lp = sequence_logprobs(model, tokens, labels)        # (B,) sum of log p(label_t | tokens_<t)
    lp, n = sequence_logprobs(model, tokens, labels, return_counts=True)

The hidden states are computed once; the output projection, log-softmax and gather run
over chunks of `chunk_tokens` positions, each under activation checkpointing, so the
backward recomputes a chunk's logits instead of keeping (tokens x vocab) floats alive.
Peak extra memory is one chunk's logits (chunk_tokens x vocab) rather than all of them.
Labels follow the causal-LM convention: labels[:, t] is predicted from position t-1;
-100 is ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_logp(logits_fn, h, tgt):
    logits = logits_fn(h)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(model, tokens: torch.Tensor, labels: torch.Tensor, position_ids=None,
                   chunk_tokens: int = 1024) -> torch.Tensor:
    """(B, T-1) log p(labels[:, 1:]) with 0 where the label is -100."""
    if tokens.shape != labels.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and labels {tuple(labels.shape)} differ")
    h = model.hidden_states(tokens, position_ids)[:, :-1]
    B, T1, D = h.shape
    tgt = labels[:, 1:]
    valid = tgt != -100
    flat_h = h.reshape(-1, D)
    flat_t = tgt.clamp(min=0).reshape(-1)
    out = []
    for s in range(0, flat_h.shape[0], chunk_tokens):
        hc, tc = flat_h[s:s + chunk_tokens], flat_t[s:s + chunk_tokens]
        if torch.is_grad_enabled() and hc.requires_grad:
            out.append(checkpoint(_chunk_logp, model.logits, hc, tc, use_reentrant=False))
        else:
            out.append(_chunk_logp(model.logits, hc, tc))
    lp = torch.cat(out).view(B, T1)
    return lp * valid


def sequence_logprobs(model, tokens, labels, position_ids=None, chunk_tokens: int = 1024, return_counts=False):
    lp = token_logprobs(model, tokens, labels, position_ids, chunk_tokens)
    total = lp.sum(-1)
    if return_counts:
        return total, (labels[:, 1:] != -100).sum(-1)
    return total


def logprobs_reference(model, tokens, labels, position_ids=None) -> torch.Tensor:
    """Unchunked float64 reference (materialises all logits)."""
    logits = model(tokens, position_ids)[:, :-1].double()
    tgt = labels[:, 1:]
    lp = F.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * (tgt != -100)).sum(-1)
