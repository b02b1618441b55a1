"""The training loss and every parameter gradient of the model (fused CPU paths: q/k/v GEMM with
RoPE, gate/up GEMM with packed SwiGLU, fused residual + RMSNorm, the cross-entropy kernel)
against transformers' Llama in float64."""
from __future__ import annotations

import pytest
import torch

from llmforge.model import ModelConfig, Transformer, save_hf

transformers = pytest.importorskip("transformers")


# float64: transformers builds its RoPE tables in float32, which bounds the agreement near 1e-7
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-4), (torch.float64, 1e-7, 1e-5)])
@pytest.mark.parametrize("kw", [
    {},                                                  # GQA 6/2, separate lm_head
    {"n_kv_heads": 3, "tie_embeddings": True, "head_dim": 10},
    {"attention_bias": True, "n_kv_heads": 6},
    {"qk_norm": True, "head_dim": 16},                   # Qwen3
])
def test_loss_and_grads_match_transformers_float64(tmp_path, kw, dtype, atol, rtol):
    torch.manual_seed(3)
    cfg = ModelConfig(**{**dict(vocab_size=301, dim=60, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=130,
                                max_seq_len=64), **kw})
    model = Transformer(cfg)
    for n, p in model.named_parameters():  # norms and biases away from their init
        if p.dim() == 1:
            p.data.normal_(1.0 if "norm" in n else 0.0, 0.1)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    model = model.to(dtype)
    tokens = torch.randint(0, cfg.vocab_size, (3, 41))
    labels = tokens.clone()
    labels[0, 5:9] = -100                                # ignored targets
    loss = model.loss(tokens, labels)
    logits = hf(tokens).logits                           # float64 (hf's own loss upcasts only to float32)
    assert logits.dtype == torch.float64
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss.double(), ref.detach(), atol=atol, rtol=rtol)
    loss.backward()
    ref.backward()
    theirs = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        g = theirs[name].grad
        torch.testing.assert_close(p.grad.double(), g, atol=atol * max(1.0, g.abs().max().item()), rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")
