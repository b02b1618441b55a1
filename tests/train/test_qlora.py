"""QLoRA: int4 base weights (3.76x smaller than bf16 with group 64 and bfloat16 scales), adapters train,
loss falls."""
from __future__ import annotations

import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.quant.linear import Int4Linear
from llmforge.train.lora import apply_lora, lora_modules
from llmforge.train.qlora import quantize_base_linears


def test_qlora_trains_adapters_over_int4_base():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64))
    tokens = torch.randint(0, 97, (4, 64))
    with torch.no_grad():
        fp_loss = model.loss(tokens).item()
    bf16_bytes = sum(m.weight.numel() * 2 for m in model.modules()
                     if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
    names = quantize_base_linears(model, group_size=64)
    assert len(names) == 14
    int4_bytes = sum(m.weight_bytes() for m in model.modules() if isinstance(m, Int4Linear))
    assert bf16_bytes / int4_bytes > 3.7   # 0.5 byte codes + 2 bytes of scale per 64 weights: 3.76x
    with torch.no_grad():
        assert abs(model.loss(tokens).item() - fp_loss) < 0.05      # int4 base ~ fp base
    apply_lora(model, r=8, alpha=16)
    assert len(lora_modules(model)) == 14
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(tokens)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.9 * first
    assert all(not b.requires_grad for m in model.modules() if isinstance(m, Int4Linear) for b in m.buffers())


def test_compact_int4_linear_matches_the_plain_one():
    torch.manual_seed(1)
    lin = torch.nn.Linear(192, 37)
    x = torch.randn(5, 192)
    plain = Int4Linear.from_linear(lin, group_size=64, symmetric=True)
    compact = Int4Linear.from_linear(lin, group_size=64, symmetric=True, compact=True)
    assert compact.zeros.numel() == 1 and compact.scales.dtype == torch.bfloat16
    assert compact.weight_bytes() < plain.weight_bytes()
    ref = x.double() @ plain.dequantized_weight().double().T + lin.bias.double()
    err = (compact(x).double() - ref).abs().max() / ref.abs().max()
    assert 0 < err < 5e-3  # bfloat16 scales: relative rounding 2^-9 of each group's scale
    asym = Int4Linear.from_linear(lin, group_size=64, symmetric=False, compact=True)
    assert asym.zeros.shape == (37, 3)   # per-group zero points are kept when they differ
