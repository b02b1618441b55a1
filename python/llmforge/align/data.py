"""Preference data: {prompt, chosen, rejected} records -> token tensors with reply-only labels.

    pairs = tokenize_pairs(records, tokenizer, template="chatml", max_len=256)
    batch = collate(pairs[i:j], pad_id)   # chosen and rejected stacked: (2B, T) tokens and labels

The prompt is the user turn, each reply an assistant turn rendered with the chat template;
labels keep only the reply and its end-of-turn token (as in SFT). Sequences are
right-padded (labels -100), so causal attention never sees the padding.
Also: synthetic_preferences(), a learnable preference task for tests and demos.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.chat import IGNORE, tokenize_chat


@dataclass
class TokenizedPair:
    chosen: list[int]
    chosen_labels: list[int]
    rejected: list[int]
    rejected_labels: list[int]


def _conv(prompt, reply):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def tokenize_pairs(records, tokenizer, template: str = "chatml", max_len: int = 512) -> list[TokenizedPair]:
    out = []
    for i, r in enumerate(records):
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(r.get(k), str):
                raise ValueError(f"preference record {i}: field {k!r} must be a string")
        c = tokenize_chat(_conv(r["prompt"], r["chosen"]), tokenizer, template, max_len=max_len)
        j = tokenize_chat(_conv(r["prompt"], r["rejected"]), tokenizer, template, max_len=max_len)
        if c.n_loss_tokens == 0 or j.n_loss_tokens == 0:
            continue  # the reply was cut off entirely by max_len
        out.append(TokenizedPair(c.input_ids, c.labels, j.input_ids, j.labels))
    if not out:
        raise ValueError("no usable preference pair (empty data, or max_len too short for any reply)")
    return out


def collate(pairs: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, T) tokens and labels: rows [0, B) chosen, [B, 2B) rejected."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    labs = [p.chosen_labels for p in pairs] + [p.rejected_labels for p in pairs]
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labs)):
        tokens[i, :len(s)] = torch.tensor(s)
        labels[i, :len(l)] = torch.tensor(l)
    return tokens, labels


GOOD = "kind clear honest helpful precise gentle careful patient thoughtful accurate".split()
BAD = "rude vague false useless sloppy harsh careless hasty thoughtless wrong".split()
NEUTRAL = "the answer is that we can see it here now and then so".split()


def synthetic_preferences(n: int, seed: int = 0) -> list[dict]:
    """A learnable preference: replies mixing neutral words with 'good' words are preferred
    to the same replies with 'bad' words."""
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        prompt = "Tell me about " + " ".join(rng.choice(NEUTRAL) for _ in range(3))
        base = [rng.choice(NEUTRAL) for _ in range(6)]
        pos = sorted(rng.sample(range(7), 2))
        good, bad = list(base), list(base)
        for p in pos:
            good.insert(p, rng.choice(GOOD))
            bad.insert(p, rng.choice(BAD))
        recs.append({"prompt": prompt, "chosen": " ".join(good), "rejected": " ".join(bad)})
    return recs
