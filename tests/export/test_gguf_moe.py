"""MoE models in GGUF (without llama.cpp): experts stacked into ffn_*_exps, the router kept F32,
import back to the same model, quantised exports within their error, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge.export.ggml_quants import dequantize, quantize  # noqa: E402
from llmforge.export.gguf_export import export_gguf, import_gguf, tensor_type, verify_gguf  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402

TEXT = "The quality of mercy is not strain'd; it droppeth as the gentle rain from heaven. " * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=300)


def _model(tok, **kw):
    torch.manual_seed(4)
    base = dict(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64,
                n_experts=5, moe_top_k=2)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1)
    return model


QWEN2MOE = dict(attention_bias=True, moe_shared_ffn_dim=72, moe_norm_topk=False)


@pytest.mark.parametrize("kw,arch", [({}, "llama"), (dict(qk_norm=True, head_dim=32, tie_embeddings=True), "qwen3moe"),
                                     (QWEN2MOE, "qwen2moe")])
def test_moe_export_import_exact(tmp_path, tok, kw, arch):
    model = _model(tok, **kw)
    path = str(tmp_path / "m.gguf")
    types = export_gguf(model, tok, path, "f32")
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == arch
    assert r.fields[f"{arch}.expert_count"].contents() == 5 and r.fields[f"{arch}.expert_used_count"].contents() == 2
    t = {x.name: x for x in r.tensors}
    # experts outermost: GGUF's ne (cols, rows, experts), i.e. (5, 96, 64) for gate/up as numpy
    assert tuple(reversed(t["blk.1.ffn_gate_exps.weight"].shape.tolist())) == (5, 96, 64)
    assert tuple(reversed(t["blk.1.ffn_down_exps.weight"].shape.tolist())) == (5, 64, 96)
    np.testing.assert_array_equal(np.asarray(t["blk.1.ffn_up_exps.weight"].data)[3],
                                  model.model.layers[1].mlp.experts[3].up_proj.weight.detach().numpy())
    assert "blk.0.ffn_gate.weight" not in types and types["blk.0.ffn_gate_inp.weight"] == "f32"
    if arch == "qwen2moe":   # the shared expert: its gate a vector, as llama.cpp loads it
        assert r.fields["qwen2moe.expert_shared_feed_forward_length"].contents() == 72
        assert tuple(t["blk.1.ffn_gate_inp_shexp.weight"].shape.tolist()) == (64,)
        assert tuple(reversed(t["blk.1.ffn_down_shexp.weight"].shape.tolist())) == (64, 72)
        assert "blk.1.attn_v.bias" in t
    again, _ = import_gguf(path)
    assert again.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@pytest.mark.parametrize("qtype,max_kl", [("q8_0", 2e-3), ("q4_0", 0.2)])
def test_moe_quantised_export(tmp_path, tok, qtype, max_kl):
    model = _model(tok)
    path = str(tmp_path / "m.gguf")
    types = export_gguf(model, tok, path, qtype)
    assert types["blk.0.ffn_down_exps.weight"] == qtype and types["blk.0.ffn_gate_inp.weight"] == "f32"
    again, _ = import_gguf(path)
    w = model.model.layers[0].mlp.experts[2].down_proj.weight.detach().numpy()   # each expert's rows, as 2-D
    np.testing.assert_array_equal(again.model.layers[0].mlp.experts[2].down_proj.weight.detach().numpy(),
                                  dequantize(quantize(w, qtype), qtype, w.shape[1]))
    rep = verify_gguf(model, tok, path, ["The quality of mercy", "droppeth as the gentle rain"])
    assert rep["kl_per_token"] < max_kl, rep


def test_moe_mix_plan():
    t = lambda name, n_experts, q="q4_k_m": tensor_type(name, (8, 256, 256), q, 16, False, n_experts)  # noqa: E731
    assert t("blk.13.ffn_down_exps.weight", 4) == "q6_k" and t("blk.12.ffn_down_exps.weight", 4) == "q4_k"
    assert t("blk.12.ffn_up_exps.weight", 8) == "q4_k"
    assert t("blk.5.attn_v.weight", 8) == "q8_0" and t("blk.5.attn_k.weight", 8) == "q8_0"
    assert t("blk.5.attn_v.weight", 4) == "q4_k" and t("blk.5.attn_k.weight", 4) == "q4_k"
    assert t("blk.5.attn_output.weight", 8) == "q5_k" and t("blk.5.attn_output.weight", 8, "q5_k_m") == "q5_k"
    assert t("blk.5.attn_output.weight", 4) == "q4_k"
    assert tensor_type("blk.0.ffn_gate_inp.weight", (8, 256), "q4_k_m", 16, False, 8) == "f32"
    assert tensor_type("blk.0.ffn_gate_inp_shexp.weight", (256,), "q4_k_m", 16, False, 8) == "f32"
    shexp = lambda i: tensor_type(f"blk.{i}.ffn_down_shexp.weight", (256, 512), "q4_k_m", 16, False, 8)  # noqa: E731
    assert shexp(13) == "q6_k" and shexp(12) == "q4_k"


def test_moe_export_refusals(tmp_path, tok):
    with pytest.raises(ValueError, match="renormalise"):
        export_gguf(_model(tok, moe_norm_topk=False), tok, str(tmp_path / "a.gguf"))
    with pytest.raises(ValueError, match="biases"):
        export_gguf(_model(tok, attention_bias=True), tok, str(tmp_path / "b.gguf"))
    with pytest.raises(ValueError, match="does not renormalise"):
        export_gguf(_model(tok, **{**QWEN2MOE, "moe_norm_topk": True}), tok, str(tmp_path / "c.gguf"))
    with pytest.raises(ValueError, match="output.weight"):
        export_gguf(_model(tok, **QWEN2MOE, tie_embeddings=True), tok, str(tmp_path / "d.gguf"))
    assert not list(tmp_path.iterdir())
