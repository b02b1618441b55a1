"""torch.compile(model, fullgraph=True) traces the whole Transformer — forward, loss and
backward — with llmforge's CPU kernels inside the graph as custom ops, and gives eager's loss
and gradients. fullgraph=True fails on any graph break, so these tests also pin that no direct
native call, data-dependent branch or non-tensor torch call is left on the traced path.

(MoE routing picks rows by the data, so an MoE model compiles with graph breaks; not here.)
"""
from __future__ import annotations

import pytest
import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.train.lora import apply_lora
from llmforge.train.qlora import quantize_base_linears


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()   # each test compiles its own model (no recompile-limit carry-over)
    yield
    torch._dynamo.reset()


def _model(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=301, dim=96, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=192, max_seq_len=64)
    return Transformer(ModelConfig(**{**cfg, **kw}))


def _loss_and_grads(model, fn, tokens, position_ids=None, bf16=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(tokens, position_ids, labels=tokens)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, tokens, position_ids=None, bf16=False, rtol=1e-5):
    loss0, g0 = _loss_and_grads(model, model, tokens, position_ids, bf16)
    compiled = torch.compile(model, fullgraph=True)
    loss1, g1 = _loss_and_grads(model, compiled, tokens, position_ids, bf16)
    assert torch.isfinite(loss0) and g0, "the eager run gave no loss or no gradients"
    torch.testing.assert_close(loss1, loss0, rtol=rtol, atol=0)
    assert g1.keys() == g0.keys()
    for n in g0:
        scale = g0[n].abs().max()
        assert scale > 0, n
        assert (g1[n] - g0[n]).abs().max() <= rtol * scale, n
    return compiled


def test_fused_training_path_matches_eager():
    """2 x 37 rows reach the fused CPU path (qkv_rope, [gate | up] GEMM, linear_cross_entropy);
    q/k/v biases and tied embeddings on."""
    model = _model(attention_bias=True, tie_embeddings=True)
    tokens = torch.randint(0, 301, (2, 37))
    compiled = _compare(model, tokens)
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens), model(tokens), rtol=1e-5, atol=1e-6)


def test_short_batch_and_packed_documents_match_eager():
    """13 rows: below the fused path (per-projection linears, apply_rope, swiglu); then packed
    documents, whose RoPE tables under compile cover max_seq_len positions."""
    model = _model(seed=1)
    _compare(model, torch.randint(0, 301, (1, 13)))
    torch._dynamo.reset()
    pos = torch.cat([torch.arange(20), torch.arange(11), torch.arange(6)]).expand(2, 37).contiguous()
    _compare(model, torch.randint(0, 301, (2, 37)), position_ids=pos)


def test_bf16_autocast_and_qk_norm_match_eager():
    """Under bf16 autocast, with Qwen3's per-head query/key norms (head_dim 32 != dim / n_heads)."""
    _compare(_model(seed=2, qk_norm=True, head_dim=32), torch.randint(0, 301, (3, 29)), bf16=True, rtol=1e-3)


def test_gemma3_matches_eager():
    """Gemma 3's parts: GeGLU, scaled embeddings, sandwich norms, a sliding-window layer (on the fused
    kernel's window) shorter than the batch, local RoPE, query / key norms. (Gemma 2's soft-caps are
    plain torch ops.)"""
    kw = dict(hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True, tie_embeddings=True, sandwich_norm=True,
              attn_scale=0.2, sliding_window=16, layer_types=["sliding_attention", "full_attention"], qk_norm=True,
              local_rope_theta=1e4)
    _compare(_model(seed=5, **kw), torch.randint(0, 301, (2, 37)))


def test_qlora_matches_eager():
    model = _model(seed=3)
    quantize_base_linears(model, group_size=32)
    apply_lora(model, r=4)
    for m in model.modules():   # nonzero adapters, so the LoRA branch reaches the loss
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B, std=0.05)
    _compare(model, torch.randint(0, 301, (2, 41)))


def test_bad_token_ids_still_raise_under_compile():
    model = _model(seed=4)
    compiled = torch.compile(model, fullgraph=True)
    good = torch.randint(0, 301, (2, 9))
    compiled(good)
    bad = good.clone()
    bad[1, 4] = 301
    with pytest.raises(RuntimeError, match="token ids must be in"):
        compiled(bad)
    with pytest.raises(RuntimeError, match="token ids must be in"):
        compiled(-good - 1)
