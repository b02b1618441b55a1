"""The model against transformers (same logits from the same safetensors), packing masks, MoE, bad input."""
from __future__ import annotations

import json
import os

import pytest
import torch

from llmforge.model import ModelConfig, Transformer, load_hf, save_hf

transformers = pytest.importorskip("transformers")


def _cfg(**kw):
    base = dict(vocab_size=311, dim=96, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=200, max_seq_len=256)
    base.update(kw)
    return ModelConfig(**base)


def _hf_logits(path, tokens):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("kw", [
    {},                                             # GQA 6/2
    {"n_kv_heads": 6, "tie_embeddings": True},      # MHA, tied embeddings
    {"attention_bias": True},                       # Qwen2-style q/k/v biases
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}, "rope_theta": 500000.0},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                      "beta_fast": 16.0, "beta_slow": 2.0}},
    {"head_dim": 32},                               # head_dim != dim / n_heads
    {"qk_norm": True, "head_dim": 32, "tie_embeddings": True, "rope_theta": 1e6},   # Qwen3
])
def test_logits_match_transformers(tmp_path, kw):
    torch.manual_seed(0)
    model = Transformer(_cfg(**kw)).eval()
    for p in model.parameters():  # biases and norms away from their init, so they are exercised
        if p.dim() == 1:
            p.data.normal_(1.0 if p.shape[0] == model.cfg.dim else 0.0, 0.1)
    save_hf(model, tmp_path)
    tokens = torch.randint(0, 311, (3, 97))
    with torch.no_grad():
        ours = model(tokens)
    theirs = _hf_logits(tmp_path, tokens)
    assert (ours - theirs).abs().max().item() < 1e-4
    again = load_hf(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(tokens), ours)


@pytest.mark.parametrize("arch", [
    ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0)),
    ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, rope_scaling={   # Qwen2.5's long-context yarn
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})),
    ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1e6, head_dim=32, tie_word_embeddings=True)),
    ("MistralConfig", "MistralForCausalLM", dict(rope_theta=1e6, sliding_window=120)),
    ("Phi3Config", "Phi3ForCausalLM", dict(rope_theta=1e4, sliding_window=120, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0)),   # fused qkv_proj / gate_up_proj, split on load
])
def test_loads_what_transformers_saves(tmp_path, arch):
    """transformers' own checkpoints (its current config.json: rope_parameters instead of
    rope_theta) load with the same logits; Mistral's and Phi-3's sliding window (every layer) is
    modelled past the window, and they save as Mistral checkpoints transformers reads the same."""
    conf_cls, model_cls, kw = arch
    torch.manual_seed(0)
    conf = getattr(transformers, conf_cls)(vocab_size=311, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                                            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                                            **kw)
    hf = getattr(transformers, model_cls)(conf).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():   # norms and biases away from their init
            if p.dim() == 1:
                p.normal_(1.0 if "norm" in n else 0.0, 0.1)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path).eval()
    assert ours.cfg.rope_theta == kw["rope_theta"]
    assert ours.cfg.max_seq_len == 256
    tokens = torch.randint(0, 311, (2, 201))   # past the window (120)
    with torch.no_grad():
        ref = hf(tokens).logits
        assert (ours(tokens) - ref).abs().max().item() < 1e-4
    if "sliding_window" in kw:
        assert ours.cfg.layer_types == ["sliding_attention"] * 2 and ours.cfg.sliding_window == 120
        save_hf(ours, tmp_path / "saved")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
        assert type(back).__name__ == "MistralForCausalLM" and back.config.sliding_window == 120
        with torch.no_grad():
            assert (back(tokens).logits - ref).abs().max().item() < 1e-4


def test_packed_documents_do_not_attend_across():
    torch.manual_seed(1)
    model = Transformer(_cfg()).eval()
    a, b = torch.randint(0, 311, (1, 20)), torch.randint(0, 311, (1, 13))
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(20), torch.arange(13)])[None]
    with torch.no_grad():
        out = model(packed, position_ids=pos)
        torch.testing.assert_close(out[:, :20], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 20:], model(b), atol=1e-5, rtol=1e-5)
    # the loss does not predict the first token of the next document
    labels = packed.clone()
    l_packed = model.loss(packed, labels, pos)
    la, lb = model.loss(a), model.loss(b)
    torch.testing.assert_close(l_packed, (la * 19 + lb * 12) / 31, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(2)
    model = Transformer(_cfg())
    tokens = torch.randint(0, 311, (2, 40))
    model.loss(tokens).backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model.loss(tokens).backward()
    for a, p in zip(g1, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_moe_routes_and_balances():
    torch.manual_seed(3)
    model = Transformer(_cfg(n_experts=4, moe_top_k=2))
    tokens = torch.randint(0, 311, (2, 30))
    loss = model.loss(tokens)
    aux = model.aux_loss()
    assert aux.item() > 0 and torch.isfinite(loss)
    loss.backward()
    assert model.model.layers[0].mlp.router.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="MoE"):
        _cfg(n_experts=4, attention_bias=True).to_hf()


def test_param_count_matches_module():
    for kw in ({}, {"tie_embeddings": True}, {"attention_bias": True}, {"n_experts": 3}, {"qk_norm": True}):
        cfg = _cfg(**kw)
        assert cfg.n_params() == sum(p.numel() for p in Transformer(cfg).parameters())


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="must divide"):
        _cfg(n_kv_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(dim=100, n_heads=6)
    model = Transformer(_cfg())
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[0, 311]]))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(5, dtype=torch.long))


def test_load_rejects_bad_checkpoints(tmp_path):
    model = Transformer(_cfg())
    save_hf(model, tmp_path)
    st = tmp_path / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read safetensors"):
        load_hf(tmp_path)
    os.remove(st)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="only safetensors"):
        load_hf(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "none")
    # a checkpoint whose shapes disagree with its config
    other = tmp_path / "o"
    save_hf(Transformer(_cfg(ffn_dim=128)), other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["intermediate_size"] = 200
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape"):
        load_hf(other)


def test_phi3_fused_rows_checked(tmp_path):
    """A Phi-3 checkpoint whose fused projections do not fit its config raises, naming the tensor."""
    conf = transformers.Phi3Config(vocab_size=311, hidden_size=96, intermediate_size=200, num_hidden_layers=1,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.Phi3ForCausalLM(conf).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value, match in (("num_key_value_heads", 3, "qkv_proj"), ("intermediate_size", 150, "gate_up_proj")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=match):
            load_hf(tmp_path)


@pytest.mark.parametrize("where", ["top", "rope_parameters", "rope_scaling"])
def test_partial_rotary_refused(tmp_path, where):
    """RoPE over part of each head (Phi-4-mini's partial_rotary_factor 0.75) is refused, in any
    place config.json may hold it, rather than loaded with full rotation."""
    model = Transformer(_cfg())
    save_hf(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    if where == "top":
        cfg["partial_rotary_factor"] = 0.75
    elif where == "rope_scaling":
        cfg.pop("rope_parameters", None)
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.75}
    else:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.75}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        load_hf(tmp_path)


def test_unsupported_rope_scaling_raises_when_the_config_is_built():
    with pytest.raises(ValueError, match="not supported"):
        ModelConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="factor"):
        ModelConfig(rope_scaling={"rope_type": "linear", "factor": -1.0})
