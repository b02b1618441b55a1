"""Damaged checkpoints, LoRA adapters and Hugging Face directories raise ValueError naming the
file (never KeyError, AttributeError, a pickle or safetensors error type, or a crash); where only
weight bytes changed they load. A file that does not match leaves the model untouched."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.model.hf import load_hf, save_hf
from llmforge.train.checkpoint import load_checkpoint, save_checkpoint
from llmforge.train.lora import apply_lora, load_adapters, lora_modules, save_adapters

from ..damage import damaged_copies

CFG = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)


def _model(seed=0):
    torch.manual_seed(seed)
    return Transformer(CFG)


def _fuzz(tmp_path, src: str, load, n: int, seed: int) -> int:
    """Damage one file of the directory src at a time (n times); returns how many raised."""
    raised = 0
    for work in damaged_copies(src, str(tmp_path / "work"), np.random.default_rng(seed), n):
        try:
            load(work)
        except ValueError as e:
            assert work in str(e), e
            raised += 1
    return raised


def test_damaged_checkpoint(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 97, (2, 9))).sum().backward()
    opt.step()
    ck = save_checkpoint(str(tmp_path / "ck"), 3, model, opt, {"data": {"pos": 3}})

    def load(path):
        m = _model(1)
        load_checkpoint(path, m, torch.optim.AdamW(m.parameters()))

    assert _fuzz(tmp_path, ck, load, 90, 0) >= 40
    # an optim.pt that unpickles to something else than an optimizer's state
    torch.save(7, os.path.join(ck, "optim.pt"))
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        load(ck)
    os.remove(os.path.join(ck, "optim.pt"))
    with pytest.raises(ValueError, match="no optim.pt"):
        load(ck)


def test_damaged_adapters(tmp_path):
    model = _model()
    apply_lora(model, r=4, alpha=8, targets=("q_proj", "v_proj"))
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B, 0, 0.02)
    save_adapters(model, str(tmp_path / "ad"))
    assert _fuzz(tmp_path, str(tmp_path / "ad"), lambda p: load_adapters(_model(), p), 60, 1) >= 25

    # adapters for fewer modules than the model carries: raises, and copies nothing
    target = _model()
    apply_lora(target, r=4, alpha=8, targets=("q_proj", "v_proj", "k_proj"))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="missing"):
        load_adapters(target, str(tmp_path / "ad"))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_damaged_hf_directory(tmp_path):
    save_hf(_model(), str(tmp_path / "hf"))
    assert _fuzz(tmp_path, str(tmp_path / "hf"), load_hf, 60, 2) >= 30
