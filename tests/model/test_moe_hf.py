"""MoE models in the Hugging Face layouts: Mixtral, Qwen3-MoE and Qwen2-MoE, against transformers (logits,
the load-balancing loss and its gradients), both ways."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.model import ModelConfig, Transformer, load_hf, save_hf

transformers = pytest.importorskip("transformers")


def _cfg(**kw):
    base = dict(vocab_size=173, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=40, max_seq_len=128,
                n_experts=5, moe_top_k=2, moe_aux_coef=0.02)
    base.update(kw)
    return ModelConfig(**base)


def _perturb_1d(named):
    with torch.no_grad():
        for n, p in named:
            if p.dim() == 1:
                p.normal_(1.0, 0.1)


def _hf_out(path, tokens):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                      experts_implementation="eager").eval()
    return hf, hf(tokens, labels=tokens, output_router_logits=True)


def _grads_by_our_names(hf, cfg):
    """transformers' gradients under our parameter names. transformers 5 holds each layer's experts
    fused (experts.gate_up_proj (E, 2F, D) = [gate; up], experts.down_proj (E, D, F)) and calls
    the router mlp.gate; checkpoints, and transformers 4, keep one tensor per expert (see hf_key)."""
    from llmforge.model.hf import hf_key

    with torch.device("meta"):
        ours = {hf_key(cfg, n): n for n, _ in Transformer(cfg).named_parameters()}   # per-expert names
    out = {}
    for n, p in hf.named_parameters():
        g = p.grad
        if n.endswith("mlp.experts.gate_up_proj"):
            pre, f = n[: -len("gate_up_proj")], cfg.ffn_dim
            for e in range(cfg.n_experts):
                out[f"{pre}{e}.gate_proj.weight"] = None if g is None else g[e, :f]
                out[f"{pre}{e}.up_proj.weight"] = None if g is None else g[e, f:]
        elif n.endswith("mlp.experts.down_proj"):
            for e in range(cfg.n_experts):
                out[f"{n[: -len('down_proj')]}{e}.down_proj.weight"] = None if g is None else g[e]
        else:
            out[ours.get(n, n.replace("mlp.gate.", "mlp.router."))] = g
    return out


@pytest.mark.parametrize("kw,mtype", [
    ({}, "mixtral"),
    ({"tie_embeddings": True, "moe_top_k": 1}, "mixtral"),
    ({"qk_norm": True, "head_dim": 24, "rope_theta": 1e6}, "qwen3_moe"),
    ({"qk_norm": True, "moe_norm_topk": False, "moe_top_k": 3}, "qwen3_moe"),
    ({"attention_bias": True, "moe_shared_ffn_dim": 56, "moe_norm_topk": False}, "qwen2_moe"),   # Qwen1.5-MoE
    ({"attention_bias": True, "moe_shared_ffn_dim": 24, "moe_top_k": 3, "tie_embeddings": True}, "qwen2_moe"),
])
def test_saved_moe_matches_transformers(tmp_path, kw, mtype):
    """save_hf writes a checkpoint transformers loads: same logits, the same training loss with its
    load-balancing term, and the same gradients for every weight."""
    torch.manual_seed(0)
    model = Transformer(_cfg(**kw))
    _perturb_1d(model.named_parameters())
    save_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == mtype
    tokens = torch.randint(0, 173, (3, 41))
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (model.eval()(tokens) - hf32(tokens).logits).abs().max().item() < 1e-4

    model64 = load_hf(tmp_path, dtype=torch.float64)
    hf, out = _hf_out(tmp_path, tokens)
    ours = model64.loss(tokens)
    # transformers computes its losses in float32 even for a float64 model: float32 tolerances
    assert abs(model64.aux_loss().item() - model64.cfg.moe_aux_coef * out.aux_loss.item()) < 1e-8
    assert abs(ours.item() - out.loss.item()) < 1e-6
    ours.backward()
    out.loss.backward()
    theirs = _grads_by_our_names(hf, model64.cfg)
    for n, p in model64.named_parameters():
        g = theirs[n]
        if g is None or p.grad is None:   # an expert no token chose: no gradient on either side
            assert "experts" in n, n
            assert (p.grad is None or not p.grad.any()) and (g is None or not g.any()), n
            continue
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8, msg=n)


@pytest.mark.parametrize("which", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_loads_what_transformers_saves(tmp_path, which):
    torch.manual_seed(1)
    if which == "mixtral":
        conf = transformers.MixtralConfig(vocab_size=173, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, num_local_experts=6,
                                          num_experts_per_tok=2, max_position_embeddings=128, rope_theta=1e6)
    elif which == "qwen2_moe":
        conf = transformers.Qwen2MoeConfig(vocab_size=173, hidden_size=64, intermediate_size=96,
                                           moe_intermediate_size=40, shared_expert_intermediate_size=72,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           num_experts=6, num_experts_per_tok=3, max_position_embeddings=128)
    else:
        conf = transformers.Qwen3MoeConfig(vocab_size=173, hidden_size=64, intermediate_size=96,
                                           moe_intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, head_dim=16, num_experts=6, num_experts_per_tok=3,
                                           norm_topk_prob=True, max_position_embeddings=128,
                                           tie_word_embeddings=True)
    hf = transformers.AutoModelForCausalLM.from_config(conf).eval()
    _perturb_1d(hf.named_parameters())
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path).eval()
    assert ours.cfg.n_experts == 6 and ours.cfg.moe_top_k == (2 if which == "mixtral" else 3)
    assert ours.cfg.ffn_dim == 40
    assert ours.cfg.moe_shared_ffn_dim == (72 if which == "qwen2_moe" else 0)
    assert ours.cfg.attention_bias == (which == "qwen2_moe")
    tokens = torch.randint(0, 173, (2, 57))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
    # and back: our save of it is the checkpoint transformers wrote, tensor for tensor
    from safetensors.torch import load_file
    save_hf(ours, tmp_path / "again")
    a, b = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_moe_configs_refused(tmp_path):
    with pytest.raises(ValueError, match="biases"):
        _cfg(attention_bias=True).to_hf()           # Qwen2-MoE has a shared expert too
    with pytest.raises(ValueError, match="shared expert"):
        _cfg(moe_shared_ffn_dim=32).to_hf()         # ... and q/k/v biases
    with pytest.raises(ValueError, match="needs n_experts"):
        ModelConfig(moe_shared_ffn_dim=32)
    with pytest.raises(ValueError, match="moe_shared_ffn_dim"):
        _cfg(moe_shared_ffn_dim=-1)
    with pytest.raises(ValueError, match="renormalises"):
        _cfg(moe_norm_topk=False).to_hf()
    conf = _cfg(qk_norm=True).to_hf()
    conf["mlp_only_layers"] = [1]
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="dense layers"):
        load_hf(tmp_path)


def test_mixtral_sliding_window_is_modelled(tmp_path):
    """Mixtral has no use_sliding_window switch: transformers applies any sliding_window it is
    given, on every layer; so do we, past the window, and the window saves back."""
    torch.manual_seed(2)
    conf = transformers.MixtralConfig(vocab_size=173, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=2, max_position_embeddings=128, sliding_window=48)
    hf = transformers.AutoModelForCausalLM.from_config(conf).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path).eval()
    assert ours.cfg.max_seq_len == 128 and ours.cfg.sliding_window == 48
    tokens = torch.randint(0, 173, (2, 100))
    with torch.no_grad():
        ref = hf(tokens).logits
        assert (ours(tokens) - ref).abs().max().item() < 1e-4
    save_hf(ours, tmp_path / "saved")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert back.config.sliding_window == 48
    with torch.no_grad():
        assert (back(tokens).logits - ref).abs().max().item() < 1e-4
