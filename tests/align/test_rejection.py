"""Best-of-N keeps the highest-scoring sample; outputs feed SFT and preference training."""
from __future__ import annotations

import torch

from llmforge.align.rejection import RejectionConfig, as_preferences, as_sft, rejection_sample
from llmforge.data.chat import validate_conversation
from llmforge.model import ModelConfig, Transformer

from ..data.byte_tokenizer import ByteTokenizer


def test_best_of_n():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=263, dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=64))
    tok = ByteTokenizer()
    prompts = [{"prompt": "Say something"}, {"prompt": "Another"}]
    score = lambda rec, text: sum(c in "aeiou" for c in text)   # a verifiable stand-in
    rows = rejection_sample(model, tok, prompts, score, RejectionConfig(n=6, max_new_tokens=12, batch_prompts=2))
    assert len(rows) == 2
    for r in rows:
        assert len(r["samples"]) == 6 and r["best_score"] == max(r["scores"]) and r["worst_score"] == min(r["scores"])
        assert score(r, r["best"]) == r["best_score"]
    for rec in as_sft(rows):
        validate_conversation(rec["messages"])
    prefs = as_preferences(rows)
    assert all(score(None, p["chosen"]) > score(None, p["rejected"]) for p in prefs)
