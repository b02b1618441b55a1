"""Reward-model judge and held-out perplexity against plain float64 computations."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from llmforge.align.reward import RewardModel
from llmforge.data.chat import render_chat
from llmforge.eval.judge import judge, reward_scores
from llmforge.eval.perplexity import packed_bits_per_byte, text_perplexity

from ..data.byte_tokenizer import ByteTokenizer
from .helpers import bpe_tokenizer, tiny_model


def _hand_reward(rm64, tok, prompt, answer):
    text = render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], "chatml")
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        h = rm64.backbone.hidden_states(ids)[0, -1]
        return float(rm64.head(h))


def test_judge_scores_match_a_hand_computation_and_ignore_padding():
    tok = ByteTokenizer()
    torch.manual_seed(3)
    rm = RewardModel(tiny_model(tok.vocab_size))
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    rm64 = copy.deepcopy(rm).double()
    recs = [{"prompt": "What is 2+2?", "answer": "4", "reference": "It is 4."},
            {"prompt": "Name a colour.", "answer": "A very long answer that goes on and on: blue.", "reference": "Red"},
            {"prompt": "Say hi", "answer": "hi", "reference": "hi"}]
    r = judge(rm, tok, recs, batch_size=2)
    hand = [_hand_reward(rm64, tok, x["prompt"], x["answer"]) for x in recs]
    ref = [_hand_reward(rm64, tok, x["prompt"], x["reference"]) for x in recs]
    assert r["scores"] == pytest.approx(hand, abs=1e-4)
    assert r["reference_scores"] == pytest.approx(ref, abs=1e-4)
    assert r["mean_score"] == pytest.approx(sum(hand) / 3, abs=1e-4)
    wins = sum(1.0 if a > b + 1e-6 else 0.5 if abs(a - b) <= 1e-6 else 0.0 for a, b in zip(hand, ref))
    assert r["win_rate"] == pytest.approx(wins / 3)
    single = [reward_scores(rm, tok, [(x["prompt"], x["answer"])])[0] for x in recs]
    assert single == pytest.approx(r["scores"], abs=1e-5)
    with pytest.raises(ValueError):
        judge(rm, tok, [])


def _hand_nats(model64, ids):
    with torch.no_grad():
        logp = torch.log_softmax(model64(torch.tensor([ids[:-1]]))[0], -1)
    return -sum(float(logp[j, ids[j + 1]]) for j in range(len(ids) - 1))


@pytest.mark.parametrize("max_len", [512, 16])          # 16: documents span several windows
def test_text_perplexity_matches_hand_computation(max_len):
    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=max_len)
    model64 = copy.deepcopy(model).double()
    texts = ["To be, or not to be, that is the question.", "Problem: How many strings?\nAnswer: 239 — ünïcödé"]
    r = text_perplexity(model, tok, texts, batch_size=3)
    nats, ntok = 0.0, 0
    for t in texts:
        ids = [tok.bos_id] + tok.encode(t)
        for s in range(0, len(ids) - 1, max_len):        # windows overlapping by one token
            w = ids[s:s + max_len + 1]
            nats += _hand_nats(model64, w)
            ntok += len(w) - 1
    nbytes = sum(len(t.encode()) for t in texts)
    assert r["tokens"] == ntok == sum(len(tok.encode(t)) for t in texts)
    assert r["bytes"] == nbytes
    assert r["bits_per_byte"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nats / ntok), rel=1e-5)
    with pytest.raises(ValueError):
        text_perplexity(model, tok, [""])


def test_packed_heldout_reuses_the_training_metric(tmp_path):
    from llmforge.data.pack import PackedDataset, write_packed
    from llmforge.train.evaluate import bits_per_byte, token_byte_lengths

    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=32)
    write_packed(str(tmp_path), tok.encode_batch(["To be, or not to be.", "that is the question " * 5]), seq_len=32,
                 eos_id=tok.eos_id, vocab_size=tok.vocab_size)
    data = PackedDataset(str(tmp_path), seed=0, shuffle=False)
    r = packed_bits_per_byte(model, tok, data, batch_size=2)
    ref = bits_per_byte(model, data, token_byte_lengths(tok), batch_size=2)
    assert r["bits_per_byte"] == ref["bits_per_byte"]
    assert r["perplexity"] == pytest.approx(math.exp(ref["nats_per_token"]))
