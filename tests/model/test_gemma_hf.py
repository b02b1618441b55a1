"""Gemma, Gemma 2 and Gemma 3 (text) in the Hugging Face layouts, against transformers: checkpoints
transformers wrote (random weights, norms included, odd sizes) load to the same logits, loss and
gradients; ours save to checkpoints transformers loads; the cached decode path agrees."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.model import ModelConfig, Transformer, load_hf, save_hf

transformers = pytest.importorskip("transformers")

VOCAB = 211


def _hf_config(mtype: str, **kw):
    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=20, max_position_embeddings=256, rms_norm_eps=1e-6,
                bos_token_id=2, eos_token_id=1, pad_token_id=0)
    if mtype == "gemma":
        return transformers.GemmaConfig(**{**base, "hidden_act": "gelu_pytorch_tanh", **kw})
    if mtype == "gemma2":
        return transformers.Gemma2Config(**{**base, "query_pre_attn_scalar": 24, "sliding_window": 64,
                                            "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0, **kw})
    return transformers.Gemma3TextConfig(**{**base, "query_pre_attn_scalar": 20, "sliding_window": 64,
                                            "rope_parameters": {
                                                "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                   "rope_theta": 1e6},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                                            "sliding_window_pattern": 3, **kw})


def _hf_model(mtype: str, **kw):
    torch.manual_seed(0)
    cls = {"gemma": transformers.GemmaForCausalLM, "gemma2": transformers.Gemma2ForCausalLM,
           "gemma3_text": transformers.Gemma3ForCausalLM}[mtype]
    hf = cls(_hf_config(mtype, **kw)).to(torch.float64)
    with torch.no_grad():   # Gemma initialises norms to 0 (scale 1): random ones test the 1 + w
        for n, p in hf.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    hf.config._attn_implementation = "eager"
    return hf.eval()


MTYPES = ["gemma", "gemma2", "gemma3_text"]


@pytest.mark.parametrize("mtype", MTYPES)
def test_hf_checkpoint_loads_to_same_logits_and_grads(tmp_path, mtype):
    hf = _hf_model(mtype)
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(1, VOCAB, (2, 150))   # past the window (64); not pad (0): transformers never
                                                 # trains its embedding row
    model = load_hf(tmp_path, dtype=torch.float64)
    cfg = model.cfg
    assert cfg.hf_model_type() == mtype and cfg.embed_scale and cfg.norm_plus_one and cfg.hidden_act == "gelu_tanh"
    if mtype != "gemma":
        assert cfg.sandwich_norm and cfg.max_seq_len == 256 and cfg.sliding_window == 64
        assert cfg.layer_types == hf.config.layer_types and "sliding_attention" in cfg.layer_types
    # transformers' Gemma norms compute in float32 even in a float64 model, and its loss is float32:
    # the float64 comparison is to float32 precision
    ref = hf(tokens, labels=tokens)
    out = model(tokens)
    assert (out - ref.logits).abs().max().item() < 2e-5
    loss = model.loss(tokens)
    assert abs(loss.item() - ref.loss.item()) < 2e-6
    loss.backward()
    ref.loss.backward()
    grads = dict(hf.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n].grad, atol=1e-5, rtol=1e-4), n

    # float32 on the fused CPU kernels: transformers' float32 logits within 1e-4
    m32 = load_hf(tmp_path, dtype=torch.float32).eval()
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    with torch.no_grad():
        assert (m32(tokens) - hf32(tokens).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("mtype", MTYPES)
def test_packed_documents_equal_separate_runs(tmp_path, mtype):
    """Two documents packed in one row (position_ids restarting) give each document's own logits,
    in float64 and on the float32 kernels; both longer than the window."""
    _hf_model(mtype).save_pretrained(tmp_path)
    a, b = torch.randint(0, VOCAB, (1, 90)), torch.randint(0, VOCAB, (1, 71))
    pos = torch.cat([torch.arange(90), torch.arange(71)])[None]
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        model = load_hf(tmp_path, dtype=dtype)
        with torch.no_grad():
            packed = model(torch.cat([a, b], 1), position_ids=pos)
            assert (packed[:, :90] - model(a)).abs().max().item() < tol
            assert (packed[:, 90:] - model(b)).abs().max().item() < tol


@pytest.mark.parametrize("mtype", MTYPES)
def test_saved_gemma_loads_in_transformers(tmp_path, mtype):
    """A model built from our config (via from_hf of a transformers config) and trained a step
    saves to a checkpoint transformers reads to the same logits; the norms go back to w."""
    hf = _hf_model(mtype)
    hf.save_pretrained(tmp_path / "src")
    model = load_hf(tmp_path / "src", dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tokens = torch.randint(0, VOCAB, (2, 29))
    model.loss(tokens).backward()
    opt.step()
    save_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == mtype and cfg["hidden_activation"] == "gelu_pytorch_tanh"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    norm = dict(back.named_parameters())["model.norm.weight"]
    assert torch.allclose(norm + 1, model.model.norm.weight, atol=1e-6)
    with torch.no_grad():
        assert (model.eval()(tokens) - back(tokens).logits).abs().max().item() < 1e-4
    again = load_hf(tmp_path / "out")
    assert again.cfg == model.cfg


@pytest.mark.parametrize("mtype", MTYPES)
def test_cached_decode_matches_full_forward(tmp_path, mtype):
    """forward_cached (the generate path) token by token equals one full forward."""
    from llmforge.generate.cache import KVCache

    _hf_model(mtype).save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (2, 90))   # past the window (64)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.cfg, 2, 90, dtype=torch.float64)
        cache.set_valid(torch.ones(2, 90, dtype=torch.bool))
        first = model.forward_cached(tokens[:, :50], torch.arange(50).expand(2, 50), cache)
        steps = [model.forward_cached(tokens[:, t:t + 1], torch.full((2, 1), t), cache) for t in range(50, 80)]
        steps.append(model.forward_cached(tokens[:, 80:], torch.arange(80, 90).expand(2, 10), cache))
    got = torch.cat([first, *steps], 1)
    assert (got - full).abs().max().item() < 1e-9


def test_gemma_config_checks():
    base = dict(vocab_size=50, dim=32, n_layers=2, n_heads=2, ffn_dim=40, max_seq_len=64)
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig(**base, hidden_act="relu")
    with pytest.raises(ValueError, match="layer_types"):
        ModelConfig(**base, layer_types=["full_attention"])
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig(**base, layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(ValueError, match="attn_softcap"):
        ModelConfig(**base, attn_softcap=-1.0)
    with pytest.raises(ValueError, match="saves as Gemma"):
        ModelConfig(**base, embed_scale=True).hf_model_type()
    gemma = dict(base, hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True, tie_embeddings=True)
    assert ModelConfig(**gemma).hf_model_type() == "gemma"
    with pytest.raises(ValueError, match="sandwich_norm"):
        ModelConfig(**gemma, attn_softcap=50.0).hf_model_type()
    assert ModelConfig(**gemma, sandwich_norm=True).hf_model_type() == "gemma2"
    assert ModelConfig(**gemma, sandwich_norm=True, qk_norm=True).hf_model_type() == "gemma3_text"


def test_unsupported_gemma_configs_are_refused(tmp_path):
    cfg = _hf_config("gemma2").to_dict()
    for bad, match in (({"use_bidirectional_attention": True}, "bidirectional"),
                       ({"hidden_activation": "relu"}, "hidden_act"),
                       ({"model_type": "gemma3"}, "text_config"),
                       ({"model_type": "gemma4"}, "model_type")):
        d = {**cfg, **bad}
        (tmp_path / "config.json").write_text(json.dumps(d))
        with pytest.raises(ValueError, match=match):
            load_hf(tmp_path)


def test_fresh_gemma_model_trains_and_checkpoints_load_in_transformers(tmp_path):
    """A Gemma-2-style model built from ModelConfig alone (no checkpoint) saves so transformers
    matches it: the defaults of a fresh model (norm scales 1) are w = 0 in the file."""
    cfg = ModelConfig(vocab_size=VOCAB, dim=40, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, ffn_dim=56,
                      max_seq_len=32, hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True,
                      tie_embeddings=True, sandwich_norm=True, attn_scale=12 ** -0.5, attn_softcap=20.0,
                      final_softcap=10.0, sliding_window=32, layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(1)
    model = Transformer(cfg)
    save_hf(model, tmp_path)
    from safetensors.torch import load_file
    state = load_file(tmp_path / "model.safetensors")
    assert state["model.layers.0.pre_feedforward_layernorm.weight"].abs().max() == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    assert hf.config.query_pre_attn_scalar == 12
    tokens = torch.randint(0, VOCAB, (2, 31))
    with torch.no_grad():
        assert (model.eval()(tokens) - hf(tokens).logits).abs().max().item() < 1e-4


def test_multimodal_gemma3_loads_its_language_model(tmp_path):
    """A Gemma 3 image-text checkpoint (Gemma3ForConditionalGeneration: language_model.* weights, a
    SigLIP tower, a text_config that leans on defaults) loads as its language model: text-only
    logits equal transformers' multimodal model's, and it saves as a gemma3_text checkpoint."""
    torch.manual_seed(3)
    text = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=20, max_position_embeddings=256, sliding_window=32,
                query_pre_attn_scalar=20, sliding_window_pattern=2,
                rope_scaling={"rope_type": "linear", "factor": 8.0})
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    hf = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(0.0, 0.3 if n.endswith("norm.weight") else 0.2)
    hf.save_pretrained(tmp_path / "mm")
    cfg = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert cfg["model_type"] == "gemma3" and "vocab_size" in cfg["text_config"]
    # a released-style text_config: only what differs from Gemma3TextConfig's defaults, pattern not layer_types
    cfg["text_config"] = {k: v for k, v in cfg["text_config"].items()
                          if k not in ("pad_token_id", "rms_norm_eps", "tie_word_embeddings", "layer_types")}
    cfg["text_config"]["sliding_window_pattern"] = 2
    (tmp_path / "mm" / "config.json").write_text(json.dumps(cfg))
    model = load_hf(tmp_path / "mm")
    assert model.cfg.hf_model_type() == "gemma3_text" and model.cfg.tie_embeddings
    assert model.cfg.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert model.cfg.local_rope_theta == 10_000.0 and model.cfg.rope_scaling["factor"] == 8.0
    tokens = torch.randint(1, VOCAB - 3, (2, 70))    # text only, past the window
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits
        assert (model(tokens) - ref).abs().max().item() < 1e-4
    save_hf(model, tmp_path / "text")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "text", dtype=torch.float32).eval()
    assert type(back).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        assert (back(tokens).logits - ref).abs().max().item() < 1e-4
