"""LoRA algebra (zero init, merge/unmerge, disable, save/load) and SFT on real chat data."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from llmforge.model import ModelConfig, Transformer
from llmforge.train.lora import (LoRALinear, adapters_disabled, apply_lora, load_adapters, lora_modules, merge_lora,
                                 save_adapters)
from llmforge.train.pretrain import PretrainConfig
from llmforge.train.sft import SFTConfig, sft

from ..data.byte_tokenizer import ByteTokenizer


def _model(vocab=263):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   max_seq_len=256))


def test_lora_linear_algebra():
    torch.manual_seed(0)
    base = nn.Linear(13, 7).double()
    lora = LoRALinear(base, r=3, alpha=6.0)
    lora.double()
    x = torch.randn(5, 13, dtype=torch.float64)
    torch.testing.assert_close(lora(x), base(x))            # B = 0 at init
    with torch.no_grad():
        lora.lora_B.normal_()
    want = x @ (base.weight + 2.0 * lora.lora_B @ lora.lora_A).t() + base.bias
    torch.testing.assert_close(lora(x), want)
    w0 = base.weight.clone()
    lora.merge()
    torch.testing.assert_close(lora(x), want)
    lora.unmerge()
    torch.testing.assert_close(base.weight, w0)
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(2, 2), r=0, alpha=1)


def test_apply_merge_save_load(tmp_path):
    model = _model()
    names = apply_lora(model, r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    assert len(names) == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.normal_(0, 0.02)
    tokens = torch.randint(0, 263, (2, 21))
    with torch.no_grad():
        y = model(tokens)
        with adapters_disabled(model):
            y_base = model(tokens)
    assert (y - y_base).abs().max() > 1e-4
    save_adapters(model, tmp_path)
    fresh = _model()
    load_adapters(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), y)
    merged = merge_lora(model)
    assert not lora_modules(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens), y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no module"):
        apply_lora(_model(), targets=("nope",))


def test_lora_sft_lowers_heldout_assistant_loss(tmp_path):
    try:
        from llmforge.data.corpora import chitchat
        convs = chitchat()
    except Exception:
        pytest.skip("chitchat-dataset not installed")
    train, held = convs[:150], convs[3000:3030]
    model = _model()
    # a random base cannot help a rank-16 update much; adapting lm_head too lets the
    # adapter learn the reply distribution, which is what this test checks
    cfg = SFTConfig(out_dir=str(tmp_path), seq_len=128, lora_r=16, lora_alpha=32,
                    lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
                    train=PretrainConfig(steps=25, batch_size=8, lr=1e-2, warmup=3, weight_decay=0.0,
                                         checkpoint_every=25, eval_every=25, eval_batches=4, progress=False))
    res = sft(model, ByteTokenizer(), train, cfg, eval_conversations=held)
    assert res["eval_loss"] < 0.8 * res["eval_loss_before"], res
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
