"""OLMo 2 and OLMo 3 in the Hugging Face layouts, against transformers: no norms in front of attention
and the FFN, norms on their outputs, query / key norms over the whole projection; OLMo 3's sliding
layers (past the window) and per-layer-type RoPE. Checkpoints transformers wrote load to the same
logits, loss and gradients; ours save to checkpoints transformers loads; cached decode and the
serving engine agree; SmoothQuant keeps explicit scales and AWQ refuses (no norm to fold into)."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.model import Transformer, load_hf, save_hf

transformers = pytest.importorskip("transformers")

VOCAB = 203


def _hf_model(mtype: str, **kw):
    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, pad_token_id=0,
                bos_token_id=None, eos_token_id=1)
    if mtype == "olmo2":
        cfg = transformers.Olmo2Config(**{**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
                                          **kw})
    else:
        cfg = transformers.Olmo3Config(**{**base, "sliding_window": 40, "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}, **kw})
    torch.manual_seed(0)
    hf = {"olmo2": transformers.Olmo2ForCausalLM, "olmo3": transformers.Olmo3ForCausalLM}[mtype](cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.2)
    hf.config._attn_implementation = "eager"
    return hf.double().eval()


@pytest.mark.parametrize("mtype", ["olmo2", "olmo3"])
def test_hf_checkpoint_loads_to_same_logits_and_grads(tmp_path, mtype):
    hf = _hf_model(mtype)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype=torch.float64)
    cfg = model.cfg
    assert cfg.hf_model_type() == mtype and not cfg.pre_norm and cfg.sandwich_norm and cfg.qk_norm_full
    assert not hasattr(model.model.layers[0], "input_layernorm")
    if mtype == "olmo3":
        assert cfg.layer_types == hf.config.layer_types and cfg.local_rope_theta == 1e4
        assert cfg.max_seq_len == 256 and cfg.sliding_window == 40
    tokens = torch.randint(2, VOCAB, (2, 90))   # past the window
    ref = hf(tokens, labels=tokens)   # transformers' OLMo norms run in float32 even in a float64 model
    assert (model(tokens) - ref.logits).abs().max().item() < 2e-5
    loss = model.loss(tokens)
    assert abs(loss.item() - ref.loss.item()) < 1e-5   # transformers' loss is float32
    loss.backward()
    ref.loss.backward()
    grads = dict(hf.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n].grad, atol=1e-5, rtol=1e-4), n
    m32 = load_hf(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (m32(tokens) - ref.logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("mtype", ["olmo2", "olmo3"])
def test_saves_to_a_checkpoint_transformers_reads(tmp_path, mtype):
    _hf_model(mtype).save_pretrained(tmp_path / "src")
    model = load_hf(tmp_path / "src")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tokens = torch.randint(2, VOCAB, (2, 61))
    model.loss(tokens).backward()
    opt.step()
    save_hf(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == mtype
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    with torch.no_grad():
        assert (model.eval()(tokens) - back(tokens).logits).abs().max().item() < 1e-4
    assert load_hf(tmp_path / "out").cfg == model.cfg


@pytest.mark.parametrize("mtype", ["olmo2", "olmo3"])
def test_cached_decode_packing_and_serving_match(tmp_path, mtype):
    from llmforge.generate.cache import KVCache
    from llmforge.generate.sampling import SamplingParams
    from llmforge.generate.serving_engine import Engine

    hf = _hf_model(mtype)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype=torch.float64)
    tokens = torch.randint(2, VOCAB, (2, 70))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.cfg, 2, 70, dtype=torch.float64)
        cache.set_valid(torch.ones(2, 70, dtype=torch.bool))
        first = model.forward_cached(tokens[:, :30], torch.arange(30).expand(2, 30), cache)
        steps = [model.forward_cached(tokens[:, t:t + 1], torch.full((2, 1), t), cache) for t in range(30, 70)]
        assert (torch.cat([first, *steps], 1) - full).abs().max().item() < 1e-9
        a, b = tokens[:1, :50], tokens[1:, :45]
        packed = model(torch.cat([a, b], 1), position_ids=torch.cat([torch.arange(50), torch.arange(45)])[None])
        assert (packed[:, :50] - model(a)).abs().max().item() < 1e-9
        assert (packed[:, 50:] - model(b)).abs().max().item() < 1e-9
    m32 = load_hf(tmp_path).eval()
    prompt = tokens[0, :20].tolist()
    eng = Engine(m32, num_blocks=32, block_size=8, max_batch=2)   # the native step (float32 default)
    rid = eng.submit(prompt, max_new_tokens=30, params=SamplingParams(temperature=0))
    ref = hf.float().generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, 20:].tolist()
    assert eng.run()[rid].tokens == ref


def test_quantisers_without_pre_norms(tmp_path):
    from llmforge.quant.awq import quantize_model_awq
    from llmforge.quant.smoothquant import calibrate_act_absmax, smooth_model

    _hf_model("olmo3").save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype=torch.float64)
    calib = [torch.randint(2, VOCAB, (2, 45)) for _ in range(2)]
    explicit = smooth_model(model, calibrate_act_absmax(model, calib), alpha=0.5)
    assert "model.layers.0.self_attn.q_proj" in explicit and "model.layers.0.mlp.gate_proj" in explicit
    with pytest.raises(ValueError, match="AWQ"):
        quantize_model_awq(model, calib)
    assert isinstance(model, Transformer)
