"""GPTQ and AWQ on MoE models: the router and shared-expert gate stay float (they pick experts),
AWQ's folded scales leave the effective router unchanged, experts that calibration never reached
are rounded to nearest (GPTQ's dead-column rule would zero them), and the result is closer to
the float model than round-to-nearest."""
from __future__ import annotations

import copy

import pytest
import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.quant.awq import quantize_model_awq
from llmforge.quant.gptq import quantize_model_gptq
from llmforge.quant.quality import compare_models
from llmforge.quant.rtn import rtn


def _moe(seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=256, dim=128, n_layers=2, n_heads=4, ffn_dim=128, n_experts=8, moe_top_k=2,
                                attention_bias=True, moe_shared_ffn_dim=192, moe_norm_topk=False,
                                max_seq_len=64)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.6, 1.4)
    return m


def _rtn_model(m, bits, gs):
    r = copy.deepcopy(m)
    for n, mod in r.model.layers.named_modules():
        if isinstance(mod, torch.nn.Linear) and not n.endswith((".router", ".shared_expert_gate")):
            mod.weight.data.copy_(rtn(mod.weight.data, bits, gs))
    return r


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_moe_quantisation(method):
    m = _moe()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 256, (4, 48), generator=g) for _ in range(2)]
    held = [torch.randint(0, 256, (4, 48), generator=g) for _ in range(2)]
    q = copy.deepcopy(m)
    if method == "gptq":
        quantize_model_gptq(q, calib, 3, 64)
    else:
        quantize_model_awq(q, calib, 3, 64)
    for (n, a), (_, b) in zip(m.named_parameters(), q.named_parameters()):
        if n.endswith(("router.weight", "shared_expert_gate.weight")):
            if method == "gptq":
                assert torch.equal(a, b), n          # untouched
            else:                                    # scaled columns, the same logits on the normalised input
                norm = n.replace("mlp.router.weight", "post_attention_layernorm.weight").replace(
                    "mlp.shared_expert_gate.weight", "post_attention_layernorm.weight")
                before = a * dict(m.named_parameters())[norm]
                after = b * dict(q.named_parameters())[norm]
                torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)
        elif n.endswith("proj.weight") and method == "gptq":   # on the 3-bit grid: at most 8 values per group
            assert max(len(torch.unique(group)) for group in b.reshape(-1, 64)) <= 8, n
    kl_q = compare_models(m, q, held)["kl_per_token"]
    kl_rtn = compare_models(m, _rtn_model(m, 3, 64), held)["kl_per_token"]
    assert kl_q < kl_rtn, (kl_q, kl_rtn)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_experts_calibration_never_reached_are_rounded_not_zeroed(method):
    m = _moe(seed=2)
    calib = [torch.randint(0, 256, (1, 2), generator=torch.Generator().manual_seed(3))]   # 2 tokens: <= 4 experts
    q = copy.deepcopy(m)
    if method == "gptq":
        with pytest.warns(UserWarning, match="no calibration tokens"):
            quantize_model_gptq(q, calib, 4, 64)
    else:
        quantize_model_awq(q, calib, 4, 64)
    unseen = 0
    for li in range(2):
        for e in range(8):
            mine, orig = q.model.layers[li].mlp.experts[e], m.model.layers[li].mlp.experts[e]
            w = mine.gate_proj.weight
            assert w.abs().max() > 0, (li, e)                               # never zeroed
            if torch.equal(mine.down_proj.weight, rtn(orig.down_proj.weight, 4, 64)):   # rounded to nearest
                unseen += 1
                if method == "gptq":   # (AWQ's gate/up share the block's scale, searched on all tokens)
                    assert torch.equal(w, rtn(orig.gate_proj.weight, 4, 64))
    assert unseen >= 2 * (8 - 4), unseen
