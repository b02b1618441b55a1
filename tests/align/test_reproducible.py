"""Alignment runs reproduce: the same seed and inputs give bit-identical weights (DPO, ORPO, KTO
offline; GRPO and PPO sample their completions, seeded)."""
from __future__ import annotations

import random

import pytest
import torch

from llmforge.align.data import synthetic_preferences
from llmforge.align.dpo import DPOConfig, dpo
from llmforge.align.grpo import GRPOConfig, grpo
from llmforge.align.kto import KTOConfig, kto, kto_records_from_pairs
from llmforge.align.orpo import ORPOConfig, orpo
from llmforge.align.ppo import PPOConfig, ppo

from ..data.byte_tokenizer import ByteTokenizer
from .test_dpo_reward import _model
from .test_grpo import PROMPTS, _format_trained_model, _reward


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("cls,fn", [(DPOConfig, dpo), (ORPOConfig, orpo), (KTOConfig, kto)])
def test_offline_runs_are_bit_identical(tmp_path, cls, fn):
    tok, recs = ByteTokenizer(), synthetic_preferences(48, seed=1)
    data = kto_records_from_pairs(recs) if fn is kto else recs
    runs = []
    for i in range(2):
        m = _model()
        fn(m, tok, data, cls(out_dir=str(tmp_path / str(i)), steps=5, batch_size=4, lr=2e-3, warmup=1, progress=False))
        runs.append(_weights(m))
    assert torch.equal(*runs) and not torch.equal(runs[0], _weights(_model()))


@pytest.mark.parametrize("cls,fn,kw", [(GRPOConfig, grpo, {"prompts_per_step": 4, "group_size": 4}),
                                       (PPOConfig, ppo, {"batch_prompts": 8})])
def test_online_runs_are_bit_identical(tmp_path, cls, fn, kw):
    tok, runs = ByteTokenizer(), []
    for i in range(2):
        m = _format_trained_model(tok, random.Random(0))
        fn(m, tok, PROMPTS, _reward, cls(out_dir=str(tmp_path / str(i)), steps=3, max_new_tokens=1, top_k=12, lr=1e-3,
                                        progress=False, **kw))
        runs.append(_weights(m))
    assert torch.equal(*runs)
