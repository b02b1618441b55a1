"""8-bit AdamW: quantisation error bounds, trajectory close to fp32 AdamW, 4x less state."""
from __future__ import annotations

import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.train.optim import make_optimizer
from llmforge.train.optim8bit import BLOCK, AdamW8bit, _dequantize_log, _quantize_log, state_bytes


def test_log_codes_relative_error():
    torch.manual_seed(0)
    x = torch.randn(7, BLOCK) * torch.logspace(-6, 0, BLOCK)      # six decades inside each block
    x[0, :10] = 0
    for signed in (True, False):
        src = x if signed else x.abs()
        codes, lo, hi = _quantize_log(src, signed)
        back = _dequantize_log(codes, lo, hi, signed)
        assert torch.equal(back[src == 0], src[src == 0])
        nz = src != 0
        rel = ((back - src).abs() / src.abs())[nz]
        levels = 126 if signed else 254
        bound = torch.expm1((hi - lo).max() / levels / 2) + 1e-4
        assert rel.max() <= bound, (rel.max(), bound)
        assert torch.equal(torch.sign(back), torch.sign(src))


def test_trajectory_close_to_fp32_adamw():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=32)
    a, b = Transformer(cfg), Transformer(cfg)
    b.load_state_dict(a.state_dict())
    oa = torch.optim.AdamW(a.parameters(), lr=3e-3, weight_decay=0.0)
    ob = AdamW8bit(b.parameters(), lr=3e-3)
    data = [torch.randint(0, 61, (4, 32)) for _ in range(40)]
    la = lb = None
    for t in data:
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            loss = m.loss(t)
            loss.backward()
            o.step()
        la, lb = a.loss(data[0]).item(), b.loss(data[0]).item()
    assert abs(la - lb) < 0.02 * la, (la, lb)
    fp32 = state_bytes(oa)
    assert state_bytes(ob) * 3.5 < fp32
    assert isinstance(make_optimizer(b, "adamw8bit"), AdamW8bit)
