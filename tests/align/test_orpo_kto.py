"""ORPO and KTO move held-out preference metrics the right way on the learnable synthetic preference."""
from __future__ import annotations

import torch

from llmforge.align.data import synthetic_preferences
from llmforge.align.kto import KTOConfig, kto, kto_records_from_pairs
from llmforge.align.orpo import ORPOConfig, orpo
from llmforge.model import ModelConfig, Transformer

from ..data.byte_tokenizer import ByteTokenizer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=263, dim=48, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=256))


def test_orpo_prefers_chosen(tmp_path):
    recs = synthetic_preferences(160, seed=3)
    res = orpo(_model(), ByteTokenizer(), recs[:128], ORPOConfig(out_dir=str(tmp_path), lam=0.5, steps=30,
                                                                  lr=3e-3, progress=False), recs[128:])
    assert res["after"]["avg_logp_margin"] > res["before"]["avg_logp_margin"]
    assert res["after"]["accuracy"] > 0.8, res


def test_kto_separates_desirable(tmp_path):
    recs = synthetic_preferences(112, seed=4)
    res = kto(_model(), ByteTokenizer(), kto_records_from_pairs(recs[:96]),
              KTOConfig(out_dir=str(tmp_path), beta=0.5, steps=15, lr=3e-3, progress=False),
              kto_records_from_pairs(recs[96:]))
    assert abs(res["before"]["margin"]) < 1e-6
    assert res["after"]["margin"] > 1.0, res
