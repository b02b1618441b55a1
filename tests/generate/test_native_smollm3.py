"""The native decode step (generate/native.py, csrc/cpu/decode_model.cpp) on SmolLM3 models: layers
without RoPE (NoPE, rope_layers 0), whose queries and keys the step leaves unrotated, per head and on
the full-width query / key norm path (OLMo's layout with a NoPE layer). Against the Python forward in
float64 (own cache, prefill then single steps; a checkpoint transformers wrote too), the serving
engine's Python path (paged batched steps), int4 weights, the Python prefill hand-over; a bad flag raises."""
from __future__ import annotations

import types

import pytest
import torch

from llmforge import _C
from llmforge.generate import native
from llmforge.generate.engine import PYTHON_PREFILL_MIN
from llmforge.generate.native import NativeDecoder
from tests.generate.native_checks import (PROJ, check_checkpoint, check_float_model, check_int4, check_paged,
                                          check_python_prefill, close, random_model, to_int4)

SMOLLM3 = dict(rope_layers=[1, 0, 1])
KINDS = {
    "smollm3": SMOLLM3,
    # NoPE first, and a single key head
    "smollm3_mqa": dict(rope_layers=[0, 1, 1], n_kv_heads=1),
    # not a published layout, but the Python model runs it: the full-width q / k norms (OLMo 2) with a NoPE layer
    "olmo2_nope": dict(SMOLLM3, pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_full=True),
    # per-head q / k norms (Qwen3's) with a NoPE layer
    "qwen3_nope": dict(SMOLLM3, qk_norm=True),
}


def _model(kind, **kw):
    return random_model(KINDS[kind], **kw)


def _layers(m):
    """The layer dicts NativeDecoder hands to _C.DecodeModel."""
    seen = []
    real = _C.DecodeModel
    native._C = types.SimpleNamespace(DecodeModel=lambda *a: seen.append(a) or real(*a))
    try:
        NativeDecoder(m, max_len=8)
    finally:
        native._C = _C
    return seen[0][6]


def test_the_flag_is_passed_only_for_layers_without_rope():
    m = _model("smollm3")
    assert [blk.self_attn.use_rope for blk in m.model.layers] == [True, False, True]
    assert NativeDecoder.why_not(m) is None
    assert ["rope" in d for d in _layers(m)] == [False, True, False]
    assert _layers(m)[1]["rope"] is False
    assert all("rope" not in d for d in _layers(random_model({})))   # RoPE everywhere: no key at all


def test_the_nope_layer_changes_the_logits():
    """The same weights with RoPE on every layer give other logits: the flag is not a no-op."""
    m = _model("smollm3")
    rope = random_model(dict(rope_layers=[1, 1, 1]))
    ids = list(range(5, 25))
    a = NativeDecoder(m, max_len=24).forward(ids)
    b = NativeDecoder(rope, max_len=24).forward(ids)
    assert float((a - b).abs().max()) > 1e-3 * float(a.abs().max())


@pytest.mark.parametrize("kind", list(KINDS))
def test_float_model_matches_float64_forward(kind):
    check_float_model(_model(kind))


@pytest.mark.parametrize("kind", ["smollm3", "olmo2_nope"])
def test_paged_steps_match_float64_and_python_engine(kind):
    check_paged(_model(kind, std=0.3))


def test_int4_model_matches_python_forward():
    m = _model("smollm3", dim=64, head_dim=32, ffn_dim=96, std=0.1)
    assert m.lm_head is not None   # untied: the int4 output head too
    check_int4(to_int4(m, targets=PROJ + ("lm_head",)))


def test_python_prefill_hands_its_cache_to_the_step():
    check_python_prefill(_model("smollm3", std=0.3, max_seq_len=PYTHON_PREFILL_MIN + 40))


def test_hf_checkpoint_matches_python_forward(tmp_path):
    """A checkpoint transformers wrote (every 4th layer NoPE) runs natively to the float64 forward's logits."""
    pytest.importorskip("transformers")
    from tests.model.test_smollm3_hf import _hf_model

    _hf_model().save_pretrained(tmp_path)
    m = check_checkpoint(tmp_path, n=37, split=13, low=3)
    assert m.cfg.hf_model_type() == "smollm3" and m.cfg.rope_layers == [1, 1, 1, 0, 1]


def test_bad_flag_raises():
    m = _model("smollm3")
    real = _C.DecodeModel

    def build(value):
        def patched(cfg, embed, cos, sin, final_norm, output, layers, threads, *local):
            layers[1]["rope"] = value
            return real(cfg, embed, cos, sin, final_norm, output, layers, threads, *local)
        native._C = types.SimpleNamespace(DecodeModel=patched)
        try:
            return NativeDecoder(m, max_len=8)
        finally:
            native._C = _C

    ids = [3, 4, 5]
    with torch.no_grad():
        ref = m.double()(torch.tensor([ids]))[0, -1]
    m.float()
    close(build(False).forward(ids), ref)
    assert float((build(True).forward(ids) - ref).abs().max()) > 1e-4   # True: RoPE as usual, not this model
    for bad in (0, 1, None, "no", torch.tensor(False)):
        with pytest.raises(TypeError, match="rope must be a bool"):
            build(bad)
