"""Text completion for generative benchmarks, on llmforge.generate.engine.generate.

    texts = complete(model, tokenizer, ["Problem: ...\\nAnswer:"], max_new_tokens=16, temperature=0,
                     stop_strings=("\\n",))

Prompts longer than the window allows (max_seq_len - max_new_tokens) keep their last tokens.
Generation stops at the tokenizer's eos (and any stop_ids); the returned text excludes the stop
token and is cut before the first of stop_strings.
"""
from __future__ import annotations

from ..generate.engine import generate
from ..generate.sampling import SamplingParams
from .loglik import special_id


def complete(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 8, stop_strings=(), stop_ids=(),
             add_bos: bool = False) -> list[str]:
    if max_new_tokens >= model.cfg.max_seq_len:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in max_seq_len "
                         f"{model.cfg.max_seq_len}")
    room = model.cfg.max_seq_len - max_new_tokens
    eos = special_id(tokenizer, "eos")
    stops = set(int(s) for s in stop_ids) | ({eos} if eos is not None else set())
    bos = special_id(tokenizer, "bos") if add_bos else None
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos token")
    ids = []
    for p in prompts:
        t = list(tokenizer.encode(p))
        t = ([bos] if bos is not None else []) + t
        if not t:
            raise ValueError("empty prompt")
        ids.append(t[-room:])
    params = SamplingParams(temperature=temperature, top_p=top_p)
    pad = special_id(tokenizer, "pad") or 0
    out = []
    for b in range(0, len(ids), batch_size):
        g = generate(model, ids[b:b + batch_size], max_new_tokens, params, stop_ids=stops, seed=seed + b, pad_id=pad)
        for toks in g.tokens:
            if toks and toks[-1] in stops:
                toks = toks[:-1]
            text = tokenizer.decode(toks)
            for s in stop_strings:
                j = text.find(s)
                if j != -1:
                    text = text[:j]
            out.append(text)
    return out
