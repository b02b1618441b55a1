"""Model-as-judge: score (prompt, answer) pairs with a trained reward model.

    r = judge(reward_model, tokenizer, [{"prompt": ..., "answer": ..., "reference": ...}, ...])
    r["mean_score"], r["scores"], r["win_rate"] (answer scored above its reference), r["n"]

Each pair is rendered as a user turn and an assistant turn with the chat template the reward
model was trained on (llmforge.align.reward: the score is read at the last token of the
rendered conversation), right-padded in batches; padding does not change a score.
"""
from __future__ import annotations

import torch

from ..align.data import _conv
from ..data.chat import tokenize_chat
from .loglik import special_id


@torch.no_grad()
def reward_scores(rm, tokenizer, pairs: list[tuple[str, str]], template: str = "chatml", max_len: int = 512,
                  batch_size: int = 16) -> list[float]:
    max_len = min(max_len, rm.cfg.max_seq_len)
    seqs = []
    for i, (prompt, answer) in enumerate(pairs):
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise ValueError(f"pair {i}: prompt and answer must be strings")
        seqs.append(tokenize_chat(_conv(prompt, answer), tokenizer, template, max_len=max_len).input_ids)
    pad = special_id(tokenizer, "pad") or 0
    dev = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    out = []
    try:
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b:b + batch_size]
            T = max(len(s) for s in chunk)
            tokens = torch.full((len(chunk), T), pad, dtype=torch.long, device=dev)
            for r, s in enumerate(chunk):
                tokens[r, :len(s)] = torch.tensor(s, device=dev)
            lengths = torch.tensor([len(s) for s in chunk], device=dev)
            out.extend(float(x) for x in rm.score(tokens, lengths))
    finally:
        rm.train(was)
    return out


def judge(rm, tokenizer, records: list[dict], template: str = "chatml", max_len: int = 512,
          batch_size: int = 16) -> dict:
    """Mean reward of the answers; with references, also the share of answers the judge prefers
    to their reference (ties count half)."""
    if not records:
        raise ValueError("no (prompt, answer) pair to judge")
    scores = reward_scores(rm, tokenizer, [(r["prompt"], r["answer"]) for r in records], template, max_len, batch_size)
    res = {"n": len(records), "mean_score": sum(scores) / len(scores), "scores": scores}
    refs = [i for i, r in enumerate(records) if isinstance(r.get("reference"), str)]
    if refs:
        ref_scores = reward_scores(rm, tokenizer, [(records[i]["prompt"], records[i]["reference"]) for i in refs],
                                   template, max_len, batch_size)
        wins = sum(1.0 if scores[i] > s else 0.5 if scores[i] == s else 0.0 for i, s in zip(refs, ref_scores))
        res.update(win_rate=wins / len(refs), mean_reference_score=sum(ref_scores) / len(ref_scores),
                   reference_scores=ref_scores)
    return res
