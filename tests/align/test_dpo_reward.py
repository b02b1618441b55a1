"""DPO and the reward model move their held-out metrics the right way on a learnable preference."""
from __future__ import annotations

import torch

from llmforge.align.data import collate, synthetic_preferences, tokenize_pairs
from llmforge.align.dpo import DPOConfig, dpo
from llmforge.align.reward import RewardConfig, RewardModel, train_reward_model
from llmforge.data.chat import IGNORE
from llmforge.model import ModelConfig, Transformer

from ..data.byte_tokenizer import ByteTokenizer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=263, dim=48, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=256))


def test_pair_tokenisation_masks_prompt():
    tok = ByteTokenizer()
    recs = synthetic_preferences(3)
    pairs = tokenize_pairs(recs, tok)
    tokens, labels = collate(pairs, 0)
    assert tokens.shape[0] == 6
    trained = tok.decode([t for t, l in zip(tokens[0].tolist(), labels[0].tolist()) if l != IGNORE])
    assert trained == recs[0]["chosen"] + "<|im_end|>\n"


def test_dpo_raises_heldout_preference(tmp_path):
    tok = ByteTokenizer()
    recs = synthetic_preferences(192, seed=1)
    cfg = DPOConfig(out_dir=str(tmp_path), beta=0.5, steps=30, batch_size=8, lr=2e-3, warmup=4, progress=False)
    res = dpo(_model(), tok, recs[:160], cfg, eval_records=recs[160:])
    b, a = res["before"], res["after"]
    assert abs(b["reward_margin"]) < 1e-6            # policy == reference at the start
    assert a["accuracy"] > 0.8 and a["reward_margin"] > 0.5, res
    assert (tmp_path / "ref_logps.pt").exists() and (tmp_path / "curves.png").exists()


def test_reward_model_learns_preference(tmp_path):
    tok = ByteTokenizer()
    recs = synthetic_preferences(300, seed=2)
    rm = RewardModel(_model())
    res = train_reward_model(rm, tok, recs[:240], RewardConfig(out_dir=str(tmp_path), steps=60, batch_size=8,
                                                                 lr=2e-3, progress=False), recs[240:])
    assert res["accuracy_after"] > 0.6 and res["accuracy_after"] > res["accuracy_before"], res
