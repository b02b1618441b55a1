"""OLMo 2 and OLMo 3 exported as llama.cpp's arch olmo2 (OLMo 3: olmo2 with a sliding window): llama.cpp
(llama-cpp-python) gives our logits (F32: to float rounding; Q8_0 / Q4_0: to its activation rounding),
sliding-window layers included past the window, periodic or not; files import back to the same model,
and files without the optional keys import as llama.cpp runs them; configs llama.cpp would run
differently are refused. The llama.cpp tests are skipped without llama-cpp-python
(`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`).

    pytest tests/export/test_llamacpp_olmo.py
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, import_gguf  # noqa: E402
from llmforge.export.gguf_swa import period_layer_types, sliding_period  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from tests.export.llamacpp_family import (G, HELD, LINEAR, S, llamacpp_logits, needs_llamacpp,  # noqa: E402
                                          rounded_reference, tok)  # tok: the fixture

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24, "attention_factor": 1.3}


def _olmo(tok, kind: str, seed: int = 0, **kw) -> Transformer:
    """A tiny random OLMo of odd sizes (dim 60, 6 heads of 10, 3 KV heads, ffn 70), every weight random,
    norm weights around 1. OLMo 3 has 5 layers, 3 of every 4 sliding (window 16: the F32 tests' 71
    tokens run far past it)."""
    base = dict(vocab_size=tok.vocab_size, dim=60, n_layers=3, n_heads=6, n_kv_heads=3, ffn_dim=70,
                max_seq_len=96, norm_eps=1e-6, rope_theta=5e5, pre_norm=False, sandwich_norm=True, qk_norm=True,
                qk_norm_full=True)
    if kind == "olmo3":
        base.update(n_layers=5, layer_types=[S, S, S, G, S], sliding_window=16)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
    assert model.cfg.hf_model_type() == kind
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    return model


@torch.no_grad()
def _logits(model, ids) -> np.ndarray:
    return model(torch.tensor([ids]))[0].double().numpy()


def _ids(tok):
    ids = tok.encode(HELD[0] + " " + HELD[1])
    assert len(ids) > 64
    return ids


def test_sliding_period():
    """The period llama.cpp reads (layer i slides when i % p < p - 1; 0: all) found back from layer_types."""
    assert period_layer_types(4, 6) == [S, S, S, G, S, S] and period_layer_types(0, 2) == [S, S]
    for n in range(1, 9):
        for p in [0, *range(2, n + 1)]:
            assert period_layer_types(sliding_period(period_layer_types(p, n)), n) == period_layer_types(p, n)
    assert sliding_period([G, S, S, G, G]) is None and sliding_period([S, S, S, G, S]) == 4


# ---- F32: llama.cpp's logits are ours ------------------------------------------------------
# Measured (this llama.cpp, AVX2), CASES below: 3.9e-6..6.6e-6 of logits up to ~5 (float32 summation
# order; ggml's SiLU has no F16 table); argmax agrees everywhere. The same weights without the window
# are 1.7..5.5 away, with the pattern moved by a layer 2.9..4.2.

CASES = {
    "olmo2": ("olmo2", {}),
    "olmo2-yarn": ("olmo2", dict(rope_scaling=YARN)),
    "olmo3": ("olmo3", {}),                                                       # period 4 (as OLMo 3)
    "olmo3-linear": ("olmo3", dict(rope_scaling=LINEAR, local_rope_theta=5e5)),   # sliding layers unscaled
    "olmo3-yarn": ("olmo3", dict(rope_scaling=YARN, local_rope_theta=5e5)),
    "olmo3-no-period": ("olmo3", dict(layer_types=[G, S, S, G, G])),              # written per layer
    "olmo3-all-sliding": ("olmo3", dict(layer_types=[S] * 5, rope_theta=1e4)),    # period 0
}


@needs_llamacpp
@pytest.mark.parametrize("case", list(CASES))
def test_llamacpp_f32_logits(tmp_path, tok, case):
    """F32 exports: arch olmo2 with OLMo's tensors (no pre-norms, full-width q / k norms), the sliding
    keys, and llama.cpp's logits over 71 tokens equal ours; without the window they would not."""
    kind, kw = CASES[case]
    model = _olmo(tok, kind, **kw)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "olmo2"
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    assert not any(n.endswith(("attn_norm.weight", "ffn_norm.weight")) for n in shapes)
    assert shapes["blk.0.attn_q_norm.weight"] == (60,) and shapes["blk.0.attn_k_norm.weight"] == (30,)
    assert "blk.0.post_attention_norm.weight" in shapes and "blk.0.post_ffw_norm.weight" in shapes
    assert "output.weight" in shapes
    cfg = model.cfg
    pattern = r.fields.get("olmo2.attention.sliding_window_pattern")
    if kind == "olmo2":
        assert pattern is None and "olmo2.attention.sliding_window" not in r.fields
    else:
        assert r.fields["olmo2.attention.sliding_window"].contents() == 16
        period = sliding_period(cfg.layer_types)
        assert pattern.contents() == ([t == S for t in cfg.layer_types] if period is None else period)
    ids = _ids(tok)
    lc, ours = llamacpp_logits(path, ids), _logits(model, ids)
    assert np.abs(lc - ours).max() < 2e-4, np.abs(lc - ours).max()
    assert (lc.argmax(-1) == ours.argmax(-1)).all()
    if kind == "olmo3":   # the window and the layers that use it matter
        others = [dict(kw, sliding_window=128)]    # longer than the sequence: no window
        if G in cfg.layer_types:                   # the pattern moved by one layer
            others.append(dict(kw, layer_types=cfg.layer_types[1:] + cfg.layer_types[:1]))
        for other_kw in others:
            other = _olmo(tok, kind, **other_kw)
            other.load_state_dict(model.state_dict())
            assert np.abs(lc - _logits(other, ids)).max() > 0.3, other_kw


@needs_llamacpp
def test_llamacpp_tokenizes_like_us(tmp_path, tok):
    """Our byte-level BPE in an olmo2 file: llama.cpp splits text into the same ids."""
    path = tmp_path / "m.gguf"
    export_gguf(_olmo(tok, "olmo2"), tok, str(path), "f32")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, n_threads=torch.get_num_threads())
    for text in HELD:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(text), text


def _rename_keys(path, *keys):
    """Hide metadata keys from llama.cpp and import_gguf (same length: the file stays valid)."""
    data = path.read_bytes()
    for key in keys:
        assert key in data, key
        data = data.replace(key, key[:-1] + b"!", 1)
    path.write_bytes(data)


@needs_llamacpp
def test_file_without_optional_keys_imports_as_llamacpp_runs_it(tmp_path, tok):
    """An olmo2 file with a window but neither sliding_window_pattern nor rope.freq_base_swa runs in
    llama.cpp with period 4 and unscaled sliding layers at the global base; import_gguf reads it so."""
    model = _olmo(tok, "olmo3", n_layers=6, layer_types=period_layer_types(4, 6), rope_scaling=LINEAR,
                  local_rope_theta=5e5)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    _rename_keys(path, b"olmo2.attention.sliding_window_pattern", b"olmo2.rope.freq_base_swa")
    again, _ = import_gguf(str(path))
    assert again.cfg == model.cfg
    ids = _ids(tok)
    assert np.abs(llamacpp_logits(path, ids) - _logits(again, ids)).max() < 2e-4


@needs_llamacpp
def test_sliding_base_of_its_own_is_not_run(tmp_path, tok):
    """llama.cpp's olmo2 runs the sliding layers at rope.freq_base whatever rope.freq_base_swa says:
    export refuses such a model, and import refuses a file that asks for it."""
    model = _olmo(tok, "olmo3", local_rope_theta=5e5)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    data = bytearray(path.read_bytes())
    key = b"olmo2.rope.freq_base_swa"
    at = data.index(key) + len(key) + 4     # after the key: its type (uint32 FLOAT32), then the value
    assert data[at - 4: at] == np.uint32(gguf.GGUFValueType.FLOAT32).tobytes()
    data[at: at + 4] = np.float32(1e4).tobytes()
    path.write_bytes(bytes(data))
    ids = _ids(tok)
    assert np.abs(llamacpp_logits(path, ids) - _logits(model, ids)).max() < 2e-4   # 1e4 not used
    with pytest.raises(ValueError, match="freq_base_swa 10000.0 differs from rope.freq_base"):
        import_gguf(str(path))
    with pytest.raises(ValueError, match="local_rope_theta 10000.0 != rope_theta"):
        export_gguf(_olmo(tok, "olmo3", local_rope_theta=1e4), tok, str(tmp_path / "x.gguf"), "f32")


# ---- Q8_0 / Q4_0 ---------------------------------------------------------------------------
# llama.cpp rounds a quantised matmul's input to Q8_0 (blocks of 32, d = amax / 127 stored as F16); the
# reference is the dequantised import with those roundings (the output head's input too). Measured
# against it (logits up to ~5.5): Q8_0 1.2e-6 (OLMo 2) and 0.05 (OLMo 3), Q4_0 0.12 and 0.19, where the
# roundings themselves move the logits by 0.12..0.19. The rest comes from attn_output's input: llama.cpp's
# attention output differs from ours by float noise (the F32 tests' ~4e-6), which tips a few of its Q8_0
# roundings by a whole step; with every matrix but attn_output quantised it is under 1e-3 (Q4_0) and
# 1e-5 (Q8_0). Wrong blocks would move logits by O(1).



@needs_llamacpp
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("kind", ["olmo2", "olmo3"])
def test_llamacpp_quantised_logits(tmp_path, tok, kind, qtype):
    """Q8_0 / Q4_0 exports (norms F32): llama.cpp's logits against the rounded reference; top-1
    against the F32 model (Q8_0); for Q4_0 also load_gguf_int4, our int4 matmul on the file's bits."""
    from llmforge.export.gguf_int4 import load_gguf_int4

    model = _olmo(tok, kind, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96)     # every row a multiple of 32
    path = tmp_path / f"m-{qtype}.gguf"
    types_ = export_gguf(model, tok, str(path), qtype)
    assert types_["blk.0.attn_q_norm.weight"] == types_["blk.0.post_ffw_norm.weight"] == "f32"
    assert types_["output.weight"] == types_["blk.1.attn_k.weight"] == qtype
    ids = _ids(tok)
    lc = llamacpp_logits(path, ids)
    deq, _ = import_gguf(str(path))
    ref = rounded_reference(deq, types_, ids)
    weight_only = _logits(deq, ids)
    diff, shift = np.abs(lc - ref).max(), np.abs(ref - weight_only).max()
    assert diff < 3 * shift + 1e-4 and shift > 1e-2, (diff, shift)
    assert (lc.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    if qtype == "q8_0":
        assert (lc.argmax(-1) == _logits(model, ids).argmax(-1)).mean() >= 0.9
    else:   # our int4 matmul on the file's own Q4_0 bits (inputs rounded to Q8_0 as llama.cpp does)
        q4, _ = load_gguf_int4(str(path))
        int4 = _logits(q4, ids)
        assert np.abs(int4 - ref).max() < 1e-3 and np.abs(lc - int4).max() < 3 * shift + 1e-4


# ---- without llama.cpp: round trip, refusals -------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_export_import_round_trip(tmp_path, tok, case, qtype):
    """import_gguf gives back the config, and (F32) every weight and the logits exactly; Q8_0 the
    norms exactly and every matrix within about half a quantisation step (amax / 127 per 32)."""
    kind, kw = CASES[case]
    model = _olmo(tok, kind, **({**kw, **dict(dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96)} if qtype == "q8_0" else kw))
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), qtype)
    again, tok2 = import_gguf(str(path))
    cfg, yarn = again.cfg, (model.cfg.rope_scaling or {}).get("rope_type") == "yarn"
    if yarn:   # YaRN's attention factor travels as a float32 ratio to its default (gguf_rope.py)
        got, want = dict(cfg.rope_scaling), model.cfg.rope_scaling
        assert got.pop("attention_factor") == pytest.approx(want["attention_factor"], rel=1e-7)
        assert got == {k: v for k, v in want.items() if k != "attention_factor"}
        cfg = dataclasses.replace(cfg, rope_scaling=want)
    assert cfg == model.cfg
    assert tok2.encode(HELD[2]) == tok.encode(HELD[2])
    ids = _ids(tok)
    if qtype == "f32":
        for k, v in model.state_dict().items():
            assert torch.equal(again.state_dict()[k], v), k
        if yarn:
            assert np.abs(_logits(again, ids) - _logits(model, ids)).max() < 1e-5
        else:
            assert np.array_equal(_logits(again, ids), _logits(model, ids))
    else:
        for k, v in model.state_dict().items():
            got = again.state_dict()[k]
            if v.dim() == 1:
                assert torch.equal(got, v), k
            else:   # (the F16 scale adds a little to half a step)
                blocks, err = v.reshape(v.shape[0], -1, 32), (got - v).reshape(v.shape[0], -1, 32)
                assert (err.abs() <= 0.6 * blocks.abs().amax(-1, keepdim=True) / 127).all(), k


def test_import_refuses_a_file_without_output_weight(tmp_path, tok):
    """llama.cpp's olmo2 does not load a file without output.weight (tied embeddings): neither do we."""
    path = tmp_path / "m.gguf"
    export_gguf(_olmo(tok, "olmo2"), tok, str(path), "f32")
    data = path.read_bytes()
    name = np.uint64(13).tobytes() + b"output.weight"    # the tensor's name, length first
    assert data.count(name) == 1
    path.write_bytes(data.replace(name, np.uint64(13).tobytes() + b"output.weighT"))
    with pytest.raises(ValueError, match="needs output.weight"):
        import_gguf(str(path))


@pytest.mark.parametrize("kind,kw,match", [
    ("olmo2", dict(tie_embeddings=True), "needs an output.weight"),
    ("olmo3", dict(tie_embeddings=True), "needs an output.weight"),
    ("olmo2", dict(head_dim=12), r"dim // n_heads \(10\): head_dim 12"),
    ("olmo3", dict(local_rope_theta=1e4), r"local_rope_theta 10000.0 != rope_theta 500000.0"),
    ("olmo3", dict(rope_scaling=LINEAR), "sliding layers without rope scaling"),
    ("olmo3", dict(rope_scaling=YARN), "sliding layers without rope scaling"),
    ("olmo2", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
     "llama3 rope scaling is exported for arch llama only"),
    ("olmo2", dict(rope_scaling={**YARN, "beta_fast": 16.0}), "beta_fast=16.0"),
])
def test_unsupported_olmo_configs_raise(tmp_path, tok, kind, kw, match):
    """What llama.cpp would run differently (or not load) raises ValueError naming it; no file is written."""
    model = _olmo(tok, kind, **kw)
    path = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=match):
        export_gguf(model, tok, str(path), "f32")
    assert not list(tmp_path.iterdir())
