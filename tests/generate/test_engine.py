"""KV-cached generation equals full recomputation; sampling processors; seeds reproduce."""
from __future__ import annotations

import pytest
import torch

from llmforge.generate.engine import generate
from llmforge.generate.sampling import SamplingParams, process_logits, sample
from llmforge.model import ModelConfig, Transformer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   max_seq_len=128)).eval()


def _greedy_reference(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_matches_recompute_with_ragged_prompts():
    model = _model()
    prompts = [[5, 7, 9, 11, 13, 2, 3], [1], [40, 41, 42]]
    out = generate(model, prompts, 12, SamplingParams(temperature=0))
    for p, o in zip(prompts, out.tokens):
        assert o == _greedy_reference(model, p, 12)


def test_stop_tokens_and_limits():
    model = _model()
    ref = _greedy_reference(model, [3, 4, 5], 10)
    stop = ref[4]
    out = generate(model, [[3, 4, 5]], 10, SamplingParams(temperature=0), stop_ids={stop})
    assert out.tokens[0] == ref[:ref.index(stop) + 1] and out.finished == [True]
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 100], 40)
    with pytest.raises(ValueError):
        generate(model, [[]], 3)


def test_seeded_sampling_reproduces():
    model = _model()
    p = SamplingParams(temperature=0.9, top_k=20, top_p=0.9)
    a = generate(model, [[1, 2, 3], [4, 5]], 15, p, seed=7).tokens
    b = generate(model, [[1, 2, 3], [4, 5]], 15, p, seed=7).tokens
    c = generate(model, [[1, 2, 3], [4, 5]], 15, p, seed=8).tokens
    assert a == b and a != c


def test_processors():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    k = process_logits(logits, SamplingParams(top_k=2))
    assert torch.isfinite(k).tolist() == [[True, False, False, False, True]]
    probs = logits.softmax(-1)[0]   # [0.2306, 0.0848, 0.0514, 0.0114, 0.6268]
    tp = process_logits(logits, SamplingParams(top_p=0.8))
    assert torch.isfinite(tp).tolist() == [[True, False, False, False, True]]   # 0.627 + 0.231 >= 0.8
    mp = process_logits(logits, SamplingParams(min_p=0.1))
    assert torch.isfinite(mp).tolist() == [(probs >= 0.1 * probs.max()).tolist()]
    rp = process_logits(logits, SamplingParams(repetition_penalty=2.0), history=torch.tensor([[0, 3]]))
    assert rp[0, 0] == 1.0 and rp[0, 3] == -2.0 and rp[0, 4] == 3.0
    fp = process_logits(logits, SamplingParams(frequency_penalty=0.5), history=torch.tensor([[4, 4, -1]]))
    assert fp[0, 4] == 2.0
    assert sample(logits, SamplingParams(temperature=0)).item() == 4
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, SamplingParams(temperature=1.0), g) for _ in range(4000)])
    freq = torch.bincount(draws.view(-1), minlength=5).float() / 4000
    assert (freq - probs).abs().max() < 0.03
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


def test_presence_penalty_and_finite_params():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    pp = process_logits(logits, SamplingParams(presence_penalty=0.5), history=torch.tensor([[4, 4, 1, -1]]))
    assert pp[0].tolist() == [2.0, 0.5, 0.5, -1.0, 2.5]           # once per seen token, whatever the count
    for bad in ({"temperature": float("nan")}, {"top_p": float("inf")}, {"top_k": 1.5}, {"presence_penalty": None}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
