"""SmolLM3 in the Hugging Face layout, against transformers: a Llama whose every 4th layer has no
RoPE (NoPE). Checkpoints transformers wrote load to the same logits, loss and gradients; ours save
to checkpoints transformers loads; cached decode, packing and the serving engine agree."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.model import ModelConfig, load_hf, save_hf

transformers = pytest.importorskip("transformers")

VOCAB = 199


def _hf_model(**kw):
    cfg = transformers.SmolLM3Config(**{**dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 5e4}), **kw})
    torch.manual_seed(0)
    hf = transformers.SmolLM3ForCausalLM(cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(1.0, 0.3) if n.endswith("norm.weight") else p.normal_(0.0, 0.2)
    hf.config._attn_implementation = "eager"
    return hf.double().eval()


def test_hf_checkpoint_loads_saves_and_decodes(tmp_path):
    from llmforge.generate.cache import KVCache

    hf = _hf_model()
    hf.save_pretrained(tmp_path / "src")
    model = load_hf(tmp_path / "src", dtype=torch.float64)
    assert model.cfg.hf_model_type() == "smollm3" and model.cfg.rope_layers == [1, 1, 1, 0, 1]
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [True, True, True, False, True]
    tokens = torch.randint(3, VOCAB, (2, 57))
    ref = hf(tokens, labels=tokens)   # transformers' RMSNorm computes in float32 even in a float64 model
    full = model(tokens)
    assert (full - ref.logits).abs().max().item() < 2e-5
    loss = model.loss(tokens)
    assert abs(loss.item() - ref.loss.item()) < 1e-5    # transformers' loss is float32
    loss.backward()
    ref.loss.backward()
    grads = dict(hf.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n].grad, atol=1e-5, rtol=1e-4), n
    m32 = load_hf(tmp_path / "src").eval()
    with torch.no_grad():
        assert (m32(tokens) - ref.logits).abs().max().item() < 1e-4     # the fused float32 kernels
        cache = KVCache(model.cfg, 2, 57, dtype=torch.float64)
        cache.set_valid(torch.ones(2, 57, dtype=torch.bool))
        first = model.forward_cached(tokens[:, :20], torch.arange(20).expand(2, 20), cache)
        steps = [model.forward_cached(tokens[:, t:t + 1], torch.full((2, 1), t), cache) for t in range(20, 57)]
        assert (torch.cat([first, *steps], 1) - full).abs().max().item() < 1e-9
        a, b = tokens[:1, :30], tokens[1:, :25]
        packed = model(torch.cat([a, b], 1), position_ids=torch.cat([torch.arange(30), torch.arange(25)])[None])
        assert (packed[:, :30] - model(a)).abs().max().item() < 1e-9
        assert (packed[:, 30:] - model(b)).abs().max().item() < 1e-9
    save_hf(m32, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "smollm3" and cfg["no_rope_layers"] == [1, 1, 1, 0, 1]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(tokens).logits - ref.logits).abs().max().item() < 1e-4
    assert load_hf(tmp_path / "out").cfg == m32.cfg


def test_serving_engine_matches_transformers_generate(tmp_path):
    from llmforge.generate.engine import generate
    from llmforge.generate.sampling import SamplingParams
    from llmforge.generate.serving_engine import Engine

    hf = _hf_model(no_rope_layers=[1, 0, 1, 1, 0])
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path).eval()
    assert model.cfg.rope_layers == [1, 0, 1, 1, 0]
    prompt = torch.randint(3, VOCAB, (17,)).tolist()
    ref = hf.float().generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, 17:].tolist()
    eng = Engine(model, num_blocks=16, block_size=8, max_batch=2)
    rid = eng.submit(prompt, max_new_tokens=25, params=SamplingParams(temperature=0))
    assert eng.run()[rid].tokens == ref
    assert generate(model, [prompt], 25, SamplingParams(temperature=0)).tokens[0] == ref


def test_bad_rope_layers_raise():
    base = dict(vocab_size=50, dim=32, n_layers=3, n_heads=2, ffn_dim=40, max_seq_len=64)
    for bad in ([1, 0], [1, 2, 1], [1.0, 0, 1], "101"):
        with pytest.raises((ValueError, TypeError), match="rope_layers"):
            ModelConfig(**base, rope_layers=bad)
    with pytest.raises(ValueError, match="SmolLM3"):
        ModelConfig(**base, rope_layers=[1, 0, 1], qk_norm=True).hf_model_type()
    assert ModelConfig(**base, rope_layers=[1, 1, 1]).hf_model_type() == "llama"
