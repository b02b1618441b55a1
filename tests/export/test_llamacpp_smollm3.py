"""SmolLM3 (a Llama whose every 4th layer has no RoPE) exported as llama.cpp's arch smollm3: llama.cpp
(llama-cpp-python) gives our logits (F32: to float rounding; Q8_0: to its activation rounding) with the
NoPE layers honoured; files import back to the same model; NoPE patterns llama.cpp cannot hold (it
fixes the step at 4, no GGUF key) are refused. The llama.cpp tests are skipped without
llama-cpp-python (`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`).

    pytest tests/export/test_llamacpp_smollm3.py
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, gguf_arch, import_gguf  # noqa: E402
from llmforge.export.gguf_smollm3 import smollm3_rope_layers  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from tests.export.llamacpp_family import (HELD, S, llamacpp_logits, needs_llamacpp,  # noqa: E402
                                          rounded_reference, tok)  # tok: the fixture

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24, "attention_factor": 1.3}


def _smollm3(tok, n_layers: int = 5, seed: int = 0, **kw) -> Transformer:
    """A tiny random SmolLM3 of odd sizes (dim 60, 6 heads of 10, 3 KV heads, ffn 70), every weight
    random, norm weights around 1, tied embeddings (as SmolLM3); layer i has no RoPE when (i + 1) % 4 == 0."""
    base = dict(vocab_size=tok.vocab_size, dim=60, n_layers=n_layers, n_heads=6, n_kv_heads=3, ffn_dim=70,
                max_seq_len=96, norm_eps=1e-6, rope_theta=5e4, tie_embeddings=True,
                rope_layers=smollm3_rope_layers(n_layers))
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
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


# ---- F32: llama.cpp's logits are ours ------------------------------------------------------
# Measured (this llama.cpp, AVX2), CASES below, 71 tokens: 1.0e-5..1.3e-5 of logits up to ~5 (float32
# summation order); argmax agrees everywhere. The same weights with RoPE in every layer are 1.3..2.0 away.

CASES = {
    "tied": (5, {}),                                                        # layer 3 NoPE
    "untied-8-layers": (8, dict(tie_embeddings=False, head_dim=12)),        # layers 3, 7; head_dim != dim / n_heads
    "yarn": (5, dict(rope_scaling=YARN)),
}


@needs_llamacpp
@pytest.mark.parametrize("case", list(CASES))
def test_llamacpp_f32_logits(tmp_path, tok, case):
    """F32 exports: arch smollm3, Llama's tensors, and llama.cpp's logits over 71 tokens equal ours;
    with RoPE in every layer (the NoPE layers ignored) they would not."""
    n, kw = CASES[case]
    model = _smollm3(tok, n, **kw)
    assert model.cfg.hf_model_type() == "smollm3" and gguf_arch(model.cfg) == "smollm3"
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "smollm3"
    assert ("output.weight" in {t.name for t in r.tensors}) == (not model.cfg.tie_embeddings)
    ids = _ids(tok)
    lc, ours = llamacpp_logits(path, ids), _logits(model, ids)
    assert np.abs(lc - ours).max() < 1e-4, np.abs(lc - ours).max()
    assert (lc.argmax(-1) == ours.argmax(-1)).all()
    roped = _smollm3(tok, n, **{**kw, "rope_layers": [1] * n})   # same weights, RoPE everywhere
    roped.load_state_dict(model.state_dict())
    assert np.abs(lc - _logits(roped, ids)).max() > 0.3


# ---- Q8_0 ----------------------------------------------------------------------------------
# llama.cpp rounds a quantised matmul's input to Q8_0; the reference is the dequantised import with
# those roundings (the output head's input too), as in test_llamacpp_olmo.py. Measured: 0.12 against it,
# where the roundings themselves move the logits by 0.77 (tied Q8_0 head); top-1 agrees with F32 on 85%.



@needs_llamacpp
def test_llamacpp_q8_0_logits(tmp_path, tok):
    """A Q8_0 export (norms F32, tied embeddings Q8_0): llama.cpp's logits against the rounded
    reference; top-1 against the F32 model."""
    model = _smollm3(tok, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96)     # every row a multiple of 32
    path = tmp_path / "m.gguf"
    types_ = export_gguf(model, tok, str(path), "q8_0")
    assert types_["output_norm.weight"] == types_["blk.3.ffn_norm.weight"] == "f32"
    assert types_["token_embd.weight"] == types_["blk.3.attn_k.weight"] == "q8_0"
    ids = _ids(tok)
    lc = llamacpp_logits(path, ids)
    deq, _ = import_gguf(str(path))
    ref = rounded_reference(deq, types_, ids)
    diff, shift = np.abs(lc - ref).max(), np.abs(ref - _logits(deq, ids)).max()
    assert diff < 3 * shift + 1e-4 and shift > 1e-3, (diff, shift)
    assert (lc.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert (lc.argmax(-1) == _logits(model, ids).argmax(-1)).mean() >= 0.8


# ---- without llama.cpp: round trip, refusals -------------------------------------------------

@pytest.mark.parametrize("case", ["tied", "untied-8-layers"])
def test_export_import_round_trip(tmp_path, tok, case):
    """import_gguf gives back the config (the NoPE layers from llama.cpp's fixed step), every weight
    (q / k rows permuted back) and the logits exactly."""
    n, kw = CASES[case]
    model = _smollm3(tok, n, **kw)
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    again, tok2 = import_gguf(str(path))
    assert again.cfg == model.cfg
    assert tok2.encode(HELD[2]) == tok.encode(HELD[2])
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    ids = _ids(tok)
    assert np.array_equal(_logits(again, ids), _logits(model, ids))


@pytest.mark.parametrize("n,kw,match", [
    (5, dict(rope_layers=[1, 1, 0, 1, 1]), r"every 4th layer exactly \(\[1, 1, 1, 0, 1\]\): rope_layers \[1, 1, 0, 1, 1\]"),
    (8, dict(rope_layers=[1, 1, 1, 0, 1, 1, 1, 1]), "every 4th layer exactly"),   # a NoPE layer missing
    (3, dict(rope_layers=[1, 0, 1]), r"every 4th layer exactly \(\[1, 1, 1\]\)"),       # too few layers for one
    (5, dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
     "llama3 rope scaling is exported for arch llama only"),
    (5, dict(rope_scaling={**YARN, "beta_fast": 16.0}), "beta_fast=16.0"),
])
def test_unsupported_smollm3_configs_raise(tmp_path, tok, n, kw, match):
    """What llama.cpp's smollm3 would run differently raises ValueError naming it; no file is written."""
    model = _smollm3(tok, n, **kw)
    assert model.cfg.hf_model_type() == "smollm3"
    path = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=match):
        export_gguf(model, tok, str(path), "f32")
    assert not list(tmp_path.iterdir())


def test_sliding_smollm3_is_not_a_config(tok):
    """SmolLM3 has no sliding windows: such a model has no model type to export as."""
    with pytest.raises(ValueError, match="no MoE, q/k/v biases, query/key norms or sliding windows"):
        _smollm3(tok, layer_types=[S] * 5, sliding_window=16).cfg.hf_model_type()
