"""Beam search on the contiguous KV cache, with Hugging Face's scoring and stopping rules.

    res = beam_search(model, prompt_ids, num_beams=4, max_new_tokens=32, length_penalty=1.0,
                      early_stopping=False, eos_ids={eos}, stop=["\\n\\n"], tokenizer=tok)
    res.sequences[0], res.scores[0]    # the best finished hypothesis (generated ids) and its score
    res.texts[0]                       # with a tokenizer: its text, cut before a stop string

A finished hypothesis scores sum(log p) / len**length_penalty, len counting the generated
tokens including the stop token. Each step scores every continuation of the live beams
(log-softmax in float64 plus the beam's running sum), keeps the best
max(2, 1 + n_eos) * num_beams, and walks them in order: a continuation that ends (a
stop token, a stop string in its text, or the last allowed token) joins the finished
set when it ranks among the first num_beams (the set keeps the num_beams best); the
first num_beams others become the next beams, and the cache rows follow their parents.

Stopping (early_stopping): True stops as soon as num_beams hypotheses are finished;
False stops when the set is full and the best live beam, scored at its current length,
cannot beat the worst finished one; "never" does the same check with the best length
it could still reach when length_penalty > 0 (an exact bound: it never stops too early).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache
from .stop import TextStream, text_decoder, normalize_stop


@dataclass
class BeamResult:
    sequences: list[list[int]]        # finished hypotheses, best first (generated ids, stop token included)
    scores: list[float]               # sum of log-probs / len**length_penalty
    texts: list[str] | None = None    # with a tokenizer


def _text(tokenizer, ids, stop, eos) -> TextStream:
    ts = TextStream(text_decoder(tokenizer), stop, eos)
    for t in ids:
        ts.feed(t)
        if ts.stopped:
            break
    ts.finish()
    return ts


@torch.no_grad()
def beam_search(model, prompt: list[int], num_beams: int = 4, max_new_tokens: int = 32, length_penalty: float = 1.0,
                early_stopping: bool | str = False, eos_ids=(), stop=None, tokenizer=None) -> BeamResult:
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    stop = normalize_stop(stop)
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    cfg = model.cfg
    V = cfg.vocab_size
    if any(not 0 <= int(t) < V for t in prompt):
        raise ValueError("prompt has token ids outside the vocabulary")
    P = len(prompt)
    if P + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt + new tokens ({P + max_new_tokens}) exceed max_seq_len {cfg.max_seq_len}")
    lp = float(length_penalty)
    eos = set(int(e) for e in eos_ids)
    was = model.training
    model.eval()
    p0 = next(model.parameters())
    dev = p0.device
    cache = KVCache(cfg, 1, P + max_new_tokens, dtype=p0.dtype if p0.is_floating_point() else torch.float32,
                    device=dev)
    cache.set_valid(torch.ones(1, P, dtype=torch.bool, device=dev))
    logits = model.forward_cached(torch.tensor([prompt], device=dev), torch.arange(P, device=dev)[None], cache)[:, -1]
    beams: list[list[int]] = [[]]
    sums = torch.zeros(1, dtype=torch.float64, device=dev)
    finished: list[tuple[float, list[int]]] = []          # (score, ids), best first, at most num_beams
    keep = max(2, 1 + len(eos)) * num_beams

    def ends(seq: list[int]) -> bool:
        if seq[-1] in eos:
            return True
        return bool(stop) and _text(tokenizer, seq, stop, eos).stopped

    for step in range(max_new_tokens):
        n_gen = step + 1
        last = n_gen == max_new_tokens
        logp = torch.log_softmax(logits.double(), dim=-1)                  # (beams, V)
        cand = (sums[:, None] + logp).reshape(-1)
        top_s, top_i = cand.topk(min(keep, cand.numel()))
        full = len(finished) >= num_beams
        nxt_src, nxt_tok, nxt_sum = [], [], []
        for rank, (s, i) in enumerate(zip(top_s.tolist(), top_i.tolist())):
            b, t = divmod(i, V)
            seq = beams[b] + [t]
            if last or ends(seq):
                if rank < num_beams and not (early_stopping is True and full):
                    finished.append((s / n_gen ** lp, seq))
            elif len(nxt_src) < num_beams:
                nxt_src.append(b)
                nxt_tok.append(t)
                nxt_sum.append(s)
        finished.sort(key=lambda h: -h[0])
        del finished[num_beams:]
        if last or not nxt_src:
            break
        full = len(finished) >= num_beams
        if full and early_stopping is True:
            break
        if full:
            best_len = max_new_tokens if (early_stopping == "never" and lp > 0) else n_gen
            if nxt_sum[0] / best_len ** lp <= finished[-1][0]:
                break
        beams = [beams[b] + [t] for b, t in zip(nxt_src, nxt_tok)]
        sums = torch.tensor(nxt_sum, dtype=torch.float64, device=dev)
        cache.reorder(torch.tensor(nxt_src, device=dev))
        cache.set_valid(torch.ones(len(beams), 1, dtype=torch.bool, device=dev))
        pos = torch.full((len(beams), 1), P + step, device=dev)
        logits = model.forward_cached(torch.tensor(nxt_tok, device=dev)[:, None], pos, cache)[:, -1]
    model.train(was)
    seqs = [h[1] for h in finished]
    texts = [_text(tokenizer, s, stop, eos).text for s in seqs] if tokenizer is not None else None
    return BeamResult(seqs, [h[0] for h in finished], texts)
