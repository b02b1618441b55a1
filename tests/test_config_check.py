"""Config dataclasses reject recipe values of the wrong type or out of range at construction,
naming the config and the field (llmforge/config_check.py)."""
from __future__ import annotations

import pytest

from llmforge.align.dpo import DPOConfig
from llmforge.align.ppo import PPOConfig
from llmforge.eval.runner import EvalConfig
from llmforge.model import ModelConfig
from llmforge.train.pretrain import PretrainConfig
from llmforge.train.sft import SFTConfig


@pytest.mark.parametrize("cls,kw,err,match", [
    (PretrainConfig, {"lr": "1e-3"}, TypeError, "PretrainConfig.lr must be float"),   # a quoted TOML number
    (PretrainConfig, {"steps": 1.5}, TypeError, "steps must be int"),
    (PretrainConfig, {"progress": 1}, TypeError, "progress must be bool"),
    (PretrainConfig, {"steps": True}, TypeError, "steps must be int"),
    (PretrainConfig, {"lr": -1.0}, ValueError, "lr must be > 0"),                       # gradient ascent
    (PretrainConfig, {"warmup": -5}, ValueError, "warmup must be >= 0"),
    (PretrainConfig, {"grad_clip": float("nan")}, ValueError, "grad_clip must be finite"),
    (PretrainConfig, {"log_every": 0}, ValueError, "log_every must be > 0"),
    (PretrainConfig, {"min_lr": 1.0, "lr": 0.1}, ValueError, "min_lr"),
    (PretrainConfig, {"optimizer": "sgd"}, ValueError, "optimizer"),
    (PretrainConfig, {"betas": [0.9, 1.0]}, ValueError, "betas"),
    (SFTConfig, {"lora_dropout": 1.5}, ValueError, "lora_dropout must be in"),
    (SFTConfig, {"train": {"lr": 1e-3}}, TypeError, "SFTConfig.train must be PretrainConfig"),
    (DPOConfig, {"beta": 0.0}, ValueError, "beta must be > 0"),
    (PPOConfig, {"gamma": 1.5}, ValueError, "gamma must be in"),
    (EvalConfig, {"mmlu_limit": "all"}, TypeError, "mmlu_limit must be NoneType or int"),
    (ModelConfig, {"rope_theta": "1e4"}, TypeError, "rope_theta must be float"),
    (ModelConfig, {"norm_eps": 0.0}, ValueError, "norm_eps must be > 0"),
])
def test_bad_values_raise(cls, kw, err, match):
    with pytest.raises(err, match=match):
        cls(**kw)


def test_good_values_pass():
    assert PretrainConfig(lr=1, betas=[0.9, 0.99]).betas == (0.9, 0.99)   # TOML ints and arrays
    assert EvalConfig(mmlu_limit=None).mmlu_limit is None
    assert ModelConfig(pad_id=-1).pad_id == -1                            # some HF configs say -1
    assert SFTConfig(lora_targets=["q_proj"]).lora_targets == ["q_proj"]
