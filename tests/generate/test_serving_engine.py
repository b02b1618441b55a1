"""Continuous batching over the paged cache gives the same tokens as one-at-a-time generation."""
from __future__ import annotations

import pytest
import torch

from llmforge.generate.engine import generate
from llmforge.generate.sampling import SamplingParams
from llmforge.generate.serving_engine import Engine
from llmforge.model import ModelConfig, Transformer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   max_seq_len=128)).eval()


def test_greedy_matches_single_requests_and_frees_blocks():
    model = _model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 101, (int(n),), generator=g).tolist() for n in (3, 17, 1, 30, 9, 16)]
    lens = [5, 20, 12, 3, 16, 8]
    eng = Engine(model, num_blocks=20, block_size=16, max_batch=3)
    rids = [eng.submit(p, n, SamplingParams(temperature=0)) for p, n in zip(prompts, lens)]
    res = eng.run()
    for rid, p, n in zip(rids, prompts, lens):
        want = generate(model, [p], n, SamplingParams(temperature=0)).tokens[0]
        assert res[rid].tokens == want and res[rid].finish_reason == "length"
    assert eng.cache.num_free_blocks == 20


def test_stop_and_seeded_sampling_independent_of_batch():
    model = _model()
    p = SamplingParams(temperature=0.8, top_k=30)
    solo = Engine(model, num_blocks=16, max_batch=1)
    a = solo.submit([1, 2, 3], 12, p, seed=5)
    alone = solo.run()[a].tokens
    eng = Engine(model, num_blocks=16, max_batch=4)
    eng.submit([9, 9], 12, p, seed=1)
    b = eng.submit([1, 2, 3], 12, p, seed=5)
    eng.submit([4], 12, p, seed=2)
    assert eng.run()[b].tokens == alone
    stop = alone[3]
    eng = Engine(model, num_blocks=16)
    c = eng.submit([1, 2, 3], 12, p, stop_ids={stop}, seed=5)
    r = eng.run()[c]
    assert r.finish_reason == "stop" and r.tokens == alone[:alone.index(stop) + 1]


def test_rejects_bad_requests():
    eng = Engine(_model(), num_blocks=4, block_size=16)
    with pytest.raises(ValueError):
        eng.submit([], 4)
    with pytest.raises(ValueError, match="vocabulary"):
        eng.submit([500], 4)
    with pytest.raises(ValueError, match="blocks"):
        eng.submit([1] * 60, 60)
