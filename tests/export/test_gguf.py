"""GGUF export: quantiser bytes equal gguf-py's reference, files reload to the same model and
tokenizer, corrupt files raise."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, import_gguf, permute_rope, unpermute_rope, verify_gguf  # noqa: E402
from llmforge.export.ggml_quants import dequantize_q4_0, dequantize_q8_0, quantize_q4_0, quantize_q8_0  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402

from ..damage import spoilt  # noqa: E402


@pytest.mark.parametrize("name,ours,deq", [("Q8_0", quantize_q8_0, dequantize_q8_0),
                                           ("Q4_0", quantize_q4_0, dequantize_q4_0)])
def test_quant_bytes_match_gguf_reference(name, ours, deq):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((37, 256)) * rng.uniform(0.01, 3, (37, 1))).astype(np.float32)
    w[3, :32] = 0          # an all-zero block
    w[5, 7] = 40.0         # an outlier
    qt = getattr(gguf.GGMLQuantizationType, name)
    ref = gguf.quants.quantize(w, qt)
    got = ours(w)
    assert got.shape == ref.shape and np.array_equal(got, ref)
    np.testing.assert_array_equal(deq(got, 256), gguf.quants.dequantize(ref, qt).reshape(37, 256))
    err = np.abs(deq(got, 256) - w).reshape(37, -1, 32).max(-1)
    amax = np.abs(w).reshape(37, -1, 32).max(-1)
    bound = amax / (127 if name == "Q8_0" else 8) * (0.5 if name == "Q8_0" else 1.0) + 1e-6
    assert (err <= bound * 1.01 + amax * 1e-3).all()


def test_quantizers_reject_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.ones((2, 33), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        quantize_q4_0(np.full((1, 32), np.nan, np.float32))


def test_rope_permutation_roundtrip():
    w = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)
    assert np.array_equal(unpermute_rope(permute_rope(w, 4), 4), w)
    assert not np.array_equal(permute_rope(w, 4), w)


@pytest.fixture(scope="module")
def model_and_tok():
    text = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
            "the slings and arrows of outrageous fortune. ") * 30
    tok = Tokenizer.train([text], vocab_size=320)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=128, max_seq_len=128)).eval()
    for p in model.parameters():
        if p.dim() == 1:
            p.data.normal_(1.0, 0.1)
    return model, tok


@pytest.mark.parametrize("qtype,max_kl,min_top1", [("f32", 1e-9, 1.0), ("f16", 1e-5, 0.97), ("bf16", 1e-3, 0.9),
                                                   ("q8_0", 1e-3, 0.9), ("q4_0", 0.2, 0.5)])
def test_export_reload_verify(tmp_path, model_and_tok, qtype, max_kl, min_top1):
    model, tok = model_and_tok
    path = str(tmp_path / f"m-{qtype}.gguf")
    export_gguf(model, tok, path, qtype)
    texts = ["Whether 'tis nobler in the mind", "the question: to be or not", "Outrageous slings!"]
    rep = verify_gguf(model, tok, path, texts)
    assert rep["kl_per_token"] <= max_kl and rep["top1_agreement"] >= min_top1, rep
    assert rep["tokenizer_identical"]
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


@pytest.mark.parametrize("kw,arch", [
    (dict(attention_bias=True, rope_theta=1e6), "qwen2"),
    (dict(qk_norm=True, head_dim=32, tie_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
     "qwen3"),
])
def test_qwen_archs_export_and_import(tmp_path, model_and_tok, kw, arch):
    """Qwen2 (q/k/v biases) and Qwen3 (query/key norms, head_dim != dim / n_heads) export as
    llama.cpp's qwen2 / qwen3 archs, rows unpermuted (NEOX RoPE), and import back to the same
    model: config, every tensor, and the logits (verify_gguf)."""
    _, tok = model_and_tok
    if arch == "qwen3":   # the same vocabulary with Qwen's pre-tokenizer (tokenizer.ggml.pre qwen2)
        tok = Tokenizer.from_dict({**tok.to_dict(), "pattern": "qwen2"})
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=128, max_seq_len=128, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1)
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tok, path, "f32")
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == arch
    names = {t.name for t in r.tensors}
    assert ("blk.1.attn_k_norm.weight" in names) == (arch == "qwen3")
    assert ("blk.1.attn_v.bias" in names) == (arch == "qwen2")
    again, tok2 = import_gguf(path)
    assert again.cfg == model.cfg
    text = "Whether 'tis 12345 nobler\n\n  in the mind"
    assert tok2.pattern == tok.pattern and tok2.encode(text) == tok.encode(text)
    assert tok2.add_bos_token == tok.add_bos_token   # tokenizer.ggml.add_bos_token round trip
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    rep = verify_gguf(model, tok, path, ["Whether 'tis nobler in the mind", "Outrageous slings!"])
    assert rep["kl_per_token"] <= 1e-9 and rep["top1_agreement"] == 1.0


def test_corrupt_gguf_raises(tmp_path, model_and_tok):
    model, tok = model_and_tok
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "q8_0")
    data = path.read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError):
        import_gguf(str(tmp_path / "trunc.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 50)
    with pytest.raises(ValueError):
        import_gguf(str(tmp_path / "junk.gguf"))
    with pytest.raises(ValueError, match="qtype"):
        export_gguf(model, tok, str(tmp_path / "x.gguf"), "q3_k")


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_damaged_gguf_raises_valueerror_or_loads(tmp_path, model_and_tok, qtype):
    """A damaged file raises ValueError naming it (never KeyError/TypeError/a crash/a huge
    allocation) or, where only weight or token bytes changed, loads."""
    from llmforge.export.gguf_int4 import load_gguf_int4

    model, tok = model_and_tok
    good = tmp_path / "good.gguf"
    export_gguf(model, tok, str(good), qtype)
    data, rng, bad = good.read_bytes(), np.random.default_rng(11), tmp_path / "bad.gguf"
    load = load_gguf_int4 if qtype == "q4_0" else import_gguf
    raised = 0
    for _ in range(60):
        bad.write_bytes(spoilt(data, rng))
        try:
            load(str(bad))
        except ValueError as e:
            assert str(bad) in str(e)
            raised += 1
    assert raised >= 20  # every cut-short file, and most header damage


def test_gguf_missing_or_zero_metadata_raises(tmp_path, model_and_tok):
    model, tok = model_and_tok
    good = tmp_path / "good.gguf"
    export_gguf(model, tok, str(good), "f32")
    data = good.read_bytes()
    key = b"llama.block_count"
    (tmp_path / "nokey.gguf").write_bytes(data.replace(key, b"llama.block_coun!", 1))
    with pytest.raises(ValueError, match="llama.block_count is missing"):
        import_gguf(str(tmp_path / "nokey.gguf"))
    # the head count's value (uint32 after the key, its length and type) set to 0
    at = data.index(b"llama.attention.head_count") + len(b"llama.attention.head_count") + 4
    zero = data[:at] + b"\0\0\0\0" + data[at + 4:]
    (tmp_path / "zero.gguf").write_bytes(zero)
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        import_gguf(str(tmp_path / "zero.gguf"))


# ---- k-quants and the *_K_M mixes ------------------------------------------------------

def test_k_m_mix_plan():
    """use_more_bits as llama.cpp: first and last eighth of the layers and every third between."""
    from llmforge.export.gguf_export import tensor_type, use_more_bits

    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(2) if use_more_bits(i, 2)] == [1]
    t = lambda name, shape=(256, 256), q="q4_k_m", tied=False: tensor_type(name, shape, q, 16, tied)
    assert t("output.weight") == "q6_k" and t("token_embd.weight") == "q4_k"
    assert t("token_embd.weight", tied=True) == "q6_k"
    assert t("blk.4.attn_v.weight") == "q6_k" and t("blk.5.attn_v.weight") == "q4_k"
    assert t("blk.13.ffn_down.weight") == "q6_k" and t("blk.12.ffn_down.weight") == "q4_k"
    assert t("blk.4.attn_q.weight") == "q4_k" and t("blk.4.attn_norm.weight", (256,)) == "f32"
    assert t("blk.5.attn_v.weight", q="q5_k_m") == "q5_k" and t("blk.5.attn_v.weight", q="q6_k") == "q6_k"


def test_kquant_fallback_warns(tmp_path, model_and_tok):
    model, tok = model_and_tok  # dim 64, ffn 128: no row is a multiple of 256
    path = str(tmp_path / "m.gguf")
    with pytest.warns(UserWarning, match=r"blk\.0\.attn_q\.weight \(64, 64\): q4_k -> q5_0") as rec:
        types = export_gguf(model, tok, path, "q4_k_m")
    msg = str(rec[0].message)
    assert "output.weight" not in msg or "q6_k -> q8_0" in msg
    assert types["blk.0.attn_q.weight"] == "q5_0" and types["blk.0.ffn_down.weight"] == "q5_0"
    assert types["blk.1.ffn_down.weight"] == "q8_0"  # a use_more_bits layer: Q6_K -> Q8_0
    assert types["blk.0.attn_norm.weight"] == "f32"
    r = gguf.GGUFReader(path)
    stored = {t.name: t.tensor_type.name.lower() for t in r.tensors}
    assert stored == types
    rep = verify_gguf(model, tok, path, ["Whether 'tis nobler in the mind"])
    assert rep["kl_per_token"] < 0.05 and rep["tokenizer_identical"], rep


@pytest.fixture(scope="module")
def model256():
    text = "The quality of mercy is not strain'd; it droppeth as the gentle rain from heaven. " * 20
    tok = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(2)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=256, n_layers=1, n_heads=4, n_kv_heads=2,
                                    ffn_dim=512, max_seq_len=64, tie_embeddings=False)).eval()
    return model, tok


@pytest.mark.parametrize("qtype,max_kl", [("q4_k_m", 0.05), ("q6_k", 0.005), ("q5_1", 0.02)])
def test_kquant_export_reload(tmp_path, model256, qtype, max_kl):
    from llmforge.export.ggml_quants import dequantize, quantize

    model, tok = model256
    path = str(tmp_path / f"m-{qtype}.gguf")
    types = export_gguf(model, tok, path, qtype)
    model2, _ = import_gguf(path)
    # Import gives back exactly our dequantised blocks (attn_q / attn_k after undoing the rope permutation).
    w = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    t = types["blk.0.ffn_up.weight"]
    assert t == {"q4_k_m": "q4_k"}.get(qtype, qtype)
    np.testing.assert_array_equal(model2.model.layers[0].mlp.up_proj.weight.detach().numpy(),
                                  dequantize(quantize(w, t), t, w.shape[1]))
    rep = verify_gguf(model, tok, path, ["The quality of mercy", "droppeth as the gentle rain"])
    assert rep["kl_per_token"] < max_kl, rep
    data = open(path, "rb").read()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError):
        import_gguf(str(tmp_path / "trunc.gguf"))


def _scaled(tok, scaling, **kw):
    torch.manual_seed(5)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   max_seq_len=128, rope_scaling=scaling, **kw)).eval()


@pytest.mark.parametrize("orig", [8192, 64])
def test_llama3_rope_freqs_import_without_our_metadata(tmp_path, model_and_tok, monkeypatch, orig):
    """A Llama 3 file from another converter (rope_freqs.weight, no llmforge.rope_scaling key)
    imports with parameters that give the same frequencies: the standard ones (Llama 3.1's
    orig 8192) or, for others, a fit; factors no Llama 3 scaling gives raise."""
    import llmforge.export.gguf_rope as gguf_rope
    from llmforge.ops import rope_frequencies

    _, tok = model_and_tok
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": orig}
    model = _scaled(tok, sc, rope_theta=5e5)
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tok, path, "f32")
    assert import_gguf(path)[0].cfg == model.cfg            # our own key: the very same config
    monkeypatch.setattr(gguf_rope, "OURS", "other.rope_scaling")
    export_gguf(model, tok, path, "f32")
    monkeypatch.undo()
    r = gguf.GGUFReader(path)
    assert "llmforge.rope_scaling" not in r.fields
    ff = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    plain, _ = rope_frequencies(16, 5e5)
    scaled, _ = rope_frequencies(16, 5e5, sc)
    np.testing.assert_allclose(np.asarray(ff.data, np.float64), (plain / scaled).numpy(), rtol=1e-6)
    again, _ = import_gguf(path)
    torch.testing.assert_close(rope_frequencies(16, 5e5, again.cfg.rope_scaling)[0], scaled, rtol=1e-6, atol=0)
    if orig == 8192:
        assert again.cfg.rope_scaling["original_max_position_embeddings"] == 8192
    del r, ff
    r = gguf.GGUFReader(path, "r+")
    t = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    t.data[:] = np.linspace(1.0, 3.0, t.data.size)[::-1]    # factors falling with wavelength: no Llama 3
    del r, t
    with pytest.raises(ValueError, match="rope_freqs"):
        import_gguf(path)


def test_rope_scaling_export_refusals(tmp_path, model_and_tok):
    """What llama.cpp would run differently is refused, not written."""
    _, tok = model_and_tok
    bad = [({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 16.0}, {},
            "beta_fast"),
           ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "truncate": False}, {},
            "truncate"),
           ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 64}, {"attention_bias": True}, "arch llama only")]
    for sc, kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            export_gguf(_scaled(tok, sc, **kw), tok, str(tmp_path / "x.gguf"), "f32")
        assert not (tmp_path / "x.gguf").exists()


def test_unknown_tensors_refused(tmp_path, model_and_tok):
    """A tensor the model would not use (here a qwen3 query norm in a llama file) raises
    instead of being dropped."""
    model, tok = model_and_tok
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tok, path, "f32")
    r = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(str(tmp_path / "extra.gguf"), "llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))))
    w.add_tensor("blk.0.attn_q_norm.weight", np.ones(16, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="attn_q_norm"):
        import_gguf(str(tmp_path / "extra.gguf"))


def test_mistral_window_caps_the_llama_arch_context(tmp_path, model_and_tok):
    """A Mistral-style model (every layer a 24-token window) exports as arch llama, which has no
    window: context_length is capped at the window, where the two agree, and imports back so."""
    model, tok = model_and_tok
    cfg = ModelConfig(**{**model.cfg.to_dict(), "sliding_window": 24,
                         "layer_types": ["sliding_attention"] * model.cfg.n_layers})
    windowed = Transformer(cfg).eval()
    windowed.load_state_dict(model.state_dict())
    assert cfg.hf_model_type() == "mistral"
    path = str(tmp_path / "m.gguf")
    export_gguf(windowed, tok, path, "f32")
    back, _ = import_gguf(path)
    assert back.cfg.max_seq_len == 24 and back.cfg.layer_types is None
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        assert torch.allclose(back(ids), windowed(ids), atol=1e-5)
        longer = torch.randint(0, cfg.vocab_size, (1, 40))
        assert not torch.allclose(model(longer), windowed(longer), atol=1e-3)   # the window matters past 24
