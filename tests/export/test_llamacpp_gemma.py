"""Gemma, Gemma 2 and Gemma 3 (text) exported as llama.cpp's archs gemma / gemma2 / gemma3: llama.cpp
(llama-cpp-python) gives our logits (F32: to its F16 GELU table's rounding; Q8_0 / Q4_0: to its
activation rounding), sliding-window layers included past the window; files import back to the
same model; configs llama.cpp would run differently are refused. The llama.cpp tests are skipped
without llama-cpp-python (`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`).

    pytest tests/export/test_llamacpp_gemma.py
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, import_gguf  # noqa: E402
from llmforge.export.gguf_swa import period_layer_types  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from tests.export.llamacpp_family import (G, HELD, LINEAR, S, llamacpp_logits, needs_llamacpp,  # noqa: E402
                                          rounded_reference, tok)  # tok: the fixture


def _gemma(tok, kind: str, seed: int = 0, **kw) -> Transformer:
    """A tiny random Gemma of odd sizes (dim 44, head_dim 18 != dim / n_heads, ffn 70), every weight
    random, norm scales (1 + w) around 1. Gemma 2 / 3 have sliding layers (window 96, the longest
    sequence of the F32 tests, unless given)."""
    base = dict(vocab_size=tok.vocab_size, dim=44, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=18, ffn_dim=70,
                max_seq_len=96, norm_eps=1e-6, hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True,
                tie_embeddings=True)
    if kind != "gemma":
        base.update(sandwich_norm=True, attn_scale=kw.get("head_dim", 18) ** -0.5, sliding_window=96)
    if kind == "gemma2":
        base.update(attn_softcap=5.0, final_softcap=8.0, layer_types=[S, G, S])
    if kind == "gemma3":
        base.update(qk_norm=True, rope_theta=1e6, local_rope_theta=2e4, layer_types=[S, S, G])
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    return model


def _ggml_geglu(self, x):
    """MLP.forward as ggml's CPU GeGLU computes it: GELU read from a table indexed by F16(x), the
    table holding F16 values; 0 below -10 and x above 10."""
    g = self.gate_proj(x)
    y = F.gelu(g.half().float(), approximate="tanh").half().to(g.dtype)
    y = torch.where(g <= -10, torch.zeros_like(g), torch.where(g >= 10, g, y))
    return self.down_proj(y * self.up_proj(x))


@torch.no_grad()
def _logits(model, ids, ggml_gelu: bool = False) -> np.ndarray:
    """Our logits (T, vocab) for one sequence; ggml_gelu: with ggml's GELU table in every FFN."""
    mlps = [layer.mlp for layer in model.model.layers] if ggml_gelu else []
    for mlp in mlps:
        mlp.forward = types.MethodType(_ggml_geglu, mlp)
    try:
        return model(torch.tensor([ids]))[0].double().numpy()
    finally:
        for mlp in mlps:
            del mlp.forward


# ---- F32: llama.cpp's logits are ours ------------------------------------------------------
# Measured (this llama.cpp, AVX2), CASES below: against our model 1.5e-3..2.0e-3 of logits up to
# ~5, nearly all of it ggml's F16 GELU table; with the table modelled (_ggml_geglu) 2.5e-5..8.7e-4
# (F16 roundings that float32 noise upstream tips the other way). Argmax agrees everywhere.

CASES = {
    "gemma": ("gemma", {}),
    "gemma-linear-rope": ("gemma", dict(rope_scaling=LINEAR, rope_theta=3e4)),
    "gemma2": ("gemma2", {}),
    "gemma2-linear-rope": ("gemma2", dict(rope_scaling=LINEAR, rope_theta=1e5)),
    "gemma3": ("gemma3", {}),
    "gemma3-untied-capped-linear": ("gemma3", dict(tie_embeddings=False, final_softcap=3.0, rope_scaling=LINEAR)),
    "gemma3-global-only": ("gemma3", dict(layer_types=None, sliding_window=None, local_rope_theta=None,
                                          rope_scaling=LINEAR)),
}


@needs_llamacpp
@pytest.mark.parametrize("case", list(CASES))
def test_llamacpp_f32_logits(tmp_path, tok, case):
    """F32 exports: the arch and its tensors, and llama.cpp's logits over 70 tokens equal ours."""
    kind, kw = CASES[case]
    model = _gemma(tok, kind, **kw)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == kind
    names = {t.name for t in r.tensors}
    assert ("blk.0.post_ffw_norm.weight" in names) == (kind != "gemma")
    assert ("blk.0.attn_k_norm.weight" in names) == (kind == "gemma3")
    assert ("output.weight" in names) == (not model.cfg.tie_embeddings)
    ids = tok.encode(HELD[0] + " " + HELD[1])
    assert len(ids) > 64
    lc = llamacpp_logits(path, ids)
    ours, table = _logits(model, ids), _logits(model, ids, ggml_gelu=True)
    assert np.abs(lc - table).max() < 1.5e-3, np.abs(lc - table).max()
    assert np.abs(lc - ours).max() < 5e-3, np.abs(lc - ours).max()
    assert (lc.argmax(-1) == ours.argmax(-1)).all()


@needs_llamacpp
def test_llamacpp_tokenizes_like_us(tmp_path, tok):
    """Our byte-level BPE in a gemma3 file: llama.cpp splits text into the same ids."""
    model = _gemma(tok, "gemma3")
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, n_threads=torch.get_num_threads())
    for text in HELD:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(text), text


@needs_llamacpp
@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_sliding_layers_past_the_window(tmp_path, tok, kind):
    """Window 16 over 70 tokens: the per-layer pattern in the file (not llama.cpp's period 2 / 6) is
    what llama.cpp runs; moving a sliding layer moves the logits by O(1)."""
    lt = [S, G, S, S, G]
    model = _gemma(tok, kind, n_layers=5, layer_types=lt, sliding_window=16)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    ids = tok.encode(HELD[0] + " " + HELD[1])
    lc = llamacpp_logits(path, ids)
    table = _logits(model, ids, ggml_gelu=True)
    other = _gemma(tok, kind, n_layers=5, layer_types=[S, G, S, G, S], sliding_window=16)
    other.load_state_dict(model.state_dict())
    diff, moved = np.abs(lc - table).max(), np.abs(_logits(other, ids, ggml_gelu=True) - table).max()
    assert diff < 1.5e-3 and moved > 0.3, (diff, moved)


@needs_llamacpp
def test_gemma3_file_without_pattern_keys_imports_as_llamacpp_runs_it(tmp_path, tok):
    """A gemma3 file without sliding_window_pattern and rope.freq_base_swa (as convert_hf_to_gguf
    writes them) runs in llama.cpp with period 6 and base 10000; import_gguf reads it the same way."""
    model = _gemma(tok, "gemma3", n_layers=7, layer_types=period_layer_types(6, 7), sliding_window=16,
                   local_rope_theta=1e4)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    data = path.read_bytes()
    for key in (b"gemma3.attention.sliding_window_pattern", b"gemma3.rope.freq_base_swa"):
        data = data.replace(key, key[:-1] + b"!", 1)     # same length: the file stays valid, the key unknown
    path.write_bytes(data)
    again, _ = import_gguf(str(path))
    assert again.cfg.layer_types == model.cfg.layer_types and again.cfg.local_rope_theta == 1e4
    ids = tok.encode(HELD[0] + " " + HELD[1])
    assert np.abs(llamacpp_logits(path, ids) - _logits(again, ids, ggml_gelu=True)).max() < 1.5e-3


@needs_llamacpp
@pytest.mark.slow   # 46 layers: 2..17 s here, most of it llama.cpp's first evaluation
def test_27b_attention_scale(tmp_path, tok):
    """At 46 layers llama.cpp's gemma2 takes the model for the 27B and scales queries by
    1/sqrt(dim // n_heads), whatever head_dim is: such a model exports and matches; one scaled by
    1/sqrt(head_dim) is refused."""
    lt = [S, G] * 23
    model = _gemma(tok, "gemma2", n_layers=46, layer_types=lt, attn_scale=(44 // 4) ** -0.5)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    ids = tok.encode(HELD[0])
    lc = llamacpp_logits(path, ids)
    assert np.abs(lc - _logits(model, ids, ggml_gelu=True)).max() < 3e-3
    for scale in (18 ** -0.5, None):   # None: our default, 1/sqrt(head_dim)
        with pytest.raises(ValueError, match=r"1/sqrt\(11\)"):
            export_gguf(_gemma(tok, "gemma2", n_layers=46, layer_types=lt, attn_scale=scale), tok,
                        str(tmp_path / "x.gguf"), "f32")


# ---- Q8_0 / Q4_0 ---------------------------------------------------------------------------
# llama.cpp rounds a quantised matmul's input to Q8_0 (blocks of 32, d = amax / 127 stored as
# F16); the reference is the dequantised import with those roundings (the tied output head's
# input too) and the GELU table. What is left (measured up to 0.09 of logits up to ~5.6, against
# 0.12..0.19 for the weights alone; exactly 0 for some files on one thread) is roundings that
# float noise tips the other way, as in test_llamacpp.py; wrong blocks would move logits by O(1).



@needs_llamacpp
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3"])
def test_llamacpp_quantised_logits(tmp_path, tok, kind, qtype):
    """Q8_0 / Q4_0 exports (norms F32): llama.cpp's logits against the rounded reference; top-1
    against the F32 model (Q8_0); for Q4_0 also load_gguf_int4, our int4 matmul on the file's bits."""
    from llmforge.export.gguf_int4 import load_gguf_int4

    model = _gemma(tok, kind, dim=64, head_dim=24, ffn_dim=96)     # every row a multiple of 32
    path = tmp_path / f"m-{qtype}.gguf"
    types_ = export_gguf(model, tok, str(path), qtype)
    assert types_["blk.0.post_ffw_norm.weight" if kind != "gemma" else "blk.0.ffn_norm.weight"] == "f32"
    assert types_["token_embd.weight"] == types_["blk.1.ffn_down.weight"] == qtype
    ids = tok.encode(HELD[0] + " " + HELD[1])
    lc = llamacpp_logits(path, ids)
    deq, _ = import_gguf(str(path))
    ref = rounded_reference(deq, types_, ids, _ggml_geglu)
    weight_only = _logits(deq, ids)
    diff, shift = np.abs(lc - ref).max(), np.abs(ref - weight_only).max()
    assert diff < 3 * shift + 1e-4 and shift > 1e-2, (diff, shift)
    assert (lc.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    if qtype == "q8_0":
        assert (lc.argmax(-1) == _logits(model, ids).argmax(-1)).mean() >= 0.9
    else:   # our int4 matmul on the file's own Q4_0 bits (inputs rounded to Q8_0 as llama.cpp does)
        q4, _ = load_gguf_int4(str(path))
        with torch.no_grad():
            for layer in q4.model.layers:
                layer.mlp.forward = types.MethodType(_ggml_geglu, layer.mlp)
            int4 = q4(torch.tensor([ids]))[0].double().numpy()
        assert np.abs(int4 - ref).max() < 1e-3 and np.abs(lc - int4).max() < 3 * shift + 1e-4


# ---- without llama.cpp: round trip, refusals -------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_export_import_round_trip(tmp_path, tok, case, qtype):
    """import_gguf gives back the config, and (F32) every weight and the logits exactly; Q8_0 the
    norms exactly and every matrix within about half a quantisation step (amax / 127 per 32)."""
    kind, kw = CASES[case]
    model = _gemma(tok, kind, **({**kw, **dict(dim=64, head_dim=24, ffn_dim=96)} if qtype == "q8_0" else kw))
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), qtype)
    again, tok2 = import_gguf(str(path))
    assert again.cfg == model.cfg
    assert tok2.encode(HELD[2]) == tok.encode(HELD[2])
    ids = tok.encode(HELD[0] + " " + HELD[1])
    if qtype == "f32":
        for k, v in model.state_dict().items():
            assert torch.equal(again.state_dict()[k], v), k
        assert np.array_equal(_logits(again, ids), _logits(model, ids))
    else:
        for k, v in model.state_dict().items():
            got = again.state_dict()[k]
            if v.dim() == 1:
                assert torch.equal(got, v), k
            else:   # (the F16 scale adds a little to half a step)
                blocks, err = v.reshape(v.shape[0], -1, 32), (got - v).reshape(v.shape[0], -1, 32)
                assert (err.abs() <= 0.6 * blocks.abs().amax(-1, keepdim=True) / 127).all(), k


@pytest.mark.parametrize("kind,kw,match", [
    ("gemma2", dict(attn_scale=24 ** -0.5), r"attn_scale .*1/sqrt\(18\)"),      # query_pre_attn_scalar 24
    ("gemma2", dict(attn_softcap=None), "always soft-caps"),
    ("gemma2", dict(final_softcap=None), "always soft-caps"),
    ("gemma2", dict(layer_types=None), "sliding-window layer"),
    ("gemma2", dict(tie_embeddings=False), "untied"),
    ("gemma", dict(tie_embeddings=False), "untied"),
    ("gemma3", dict(attn_softcap=2.0), "does not soft-cap attention"),
    ("gemma3", dict(local_rope_theta=None, rope_scaling=LINEAR), "sliding layers without rope scaling"),
    ("gemma3", dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 48}),
     "rope scaling 'yarn'"),
])
def test_unsupported_gemma_configs_raise(tmp_path, tok, kind, kw, match):
    """What llama.cpp would run differently raises ValueError naming it, and no file is written."""
    model = _gemma(tok, kind, **kw)
    path = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=match):
        export_gguf(model, tok, str(path), "f32")
    assert not list(tmp_path.iterdir())
