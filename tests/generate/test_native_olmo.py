"""The native decode step (generate/native.py, csrc/cpu/decode_model.cpp) on OLMo 2 and OLMo 3 models:
no RMSNorm in front of attention and the FFN (the sublayers read the residual stream), RMSNorms on
their outputs, query / key norms over the whole projection before RoPE, OLMo 3's sliding layers with
their own RoPE. Against the Python forward in float64 (own cache, prefill then single steps; Hugging
Face checkpoints too), the serving engine's Python path (paged batched steps), int4 weights; bad
inputs raise."""
from __future__ import annotations

import copy
import types

import pytest
import torch

from llmforge import _C
from llmforge.generate import native
from llmforge.generate.engine import PYTHON_PREFILL_MIN
from llmforge.generate.native import NativeDecoder, NotSupported
from tests.generate.native_checks import (PROJ, VOCAB, check_checkpoint, check_every_cpu_path, check_float_model,
                                          check_int4, check_paged, check_python_prefill, random_model, to_int4)

OLMO2 = dict(pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_full=True)
KINDS = {
    "olmo2": OLMO2,
    # OLMo 3: 3 sliding layers of 4 with their own RoPE; the full layers' RoPE scaled
    "olmo3": dict(OLMO2, rope_theta=5e5, rope_scaling={"rope_type": "linear", "factor": 2.0}, local_rope_theta=1e4,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    # one RoPE for every layer, one key head (k_norm then head_dim wide)
    "olmo3_mqa": dict(OLMO2, n_kv_heads=1, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    # not a published layout, but the Python model runs it: MoE feed-forwards without a norm in front
    "olmo2_moe": dict(OLMO2, n_experts=3, moe_top_k=2, moe_shared_ffn_dim=24),
}


def _model(kind, **kw):
    return random_model(KINDS[kind], **kw)


CASES = [("olmo2", None), ("olmo3", 7), ("olmo3", None), ("olmo3_mqa", 5), ("olmo2_moe", None)]
IDS = [f"{k}-window{w}" if w else k for k, w in CASES]


def test_the_model_has_no_pre_norms():
    m = _model("olmo3", window=7)
    blk = m.model.layers[0]
    assert blk.attn_norm is None and blk.mlp_norm is None
    assert blk.self_attn.q_norm.weight.shape == (4 * 18,) and blk.self_attn.k_norm.weight.shape == (2 * 18,)
    assert blk.local_rope and not m.model.layers[2].local_rope
    assert NativeDecoder.why_not(m) is None


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_float_model_matches_float64_forward(kind, window):
    check_float_model(_model(kind, window=window))


def test_every_cpu_path_matches():
    check_every_cpu_path(_model("olmo3", window=6))


@pytest.mark.parametrize("mtype", ["olmo2", "olmo3"])
def test_hf_checkpoint_matches_python_forward(tmp_path, mtype):
    """Checkpoints transformers wrote load to models the step runs (OLMo 3: windows shorter than the
    sequence, a scaled RoPE on the full layers and another on the sliding ones)."""
    transformers = pytest.importorskip("transformers")

    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, pad_token_id=0,
                bos_token_id=None, eos_token_id=1)
    if mtype == "olmo2":
        cfg = transformers.Olmo2Config(**base, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
        cls = transformers.Olmo2ForCausalLM
    else:
        cfg = transformers.Olmo3Config(**base, sliding_window=9, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
        cls = transformers.Olmo3ForCausalLM
    torch.manual_seed(0)
    hf = cls(cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(1.0, 0.3) if n.endswith("norm.weight") else p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    m = check_checkpoint(tmp_path)
    assert m.cfg.hf_model_type() == mtype and not m.cfg.pre_norm and m.cfg.qk_norm_full


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_paged_steps_match_float64_and_python_engine(kind, window):
    check_paged(_model(kind, window=window, std=0.3))


@pytest.mark.parametrize("kind", ["olmo2", "olmo3", "olmo2_moe"])
def test_int4_model_matches_python_forward(kind):
    """The sublayers read the residual stream itself, whose int4 form (block sums; Q8_0 codes) the
    step prepares as it does for normed rows. head_dim 32: the attention items prepare the o
    projection's input blocks themselves."""
    shared = {"moe_shared_ffn_dim": 64} if kind == "olmo2_moe" else {}
    check_int4(to_int4(_model(kind, dim=64, head_dim=32, ffn_dim=96, std=0.1, window=9, **shared),
                       targets=PROJ + ("lm_head",)))


@pytest.mark.parametrize("kind", ["olmo2", "olmo3"])
def test_python_prefill_hands_its_cache_to_the_step(kind):
    check_python_prefill(_model(kind, std=0.3, max_seq_len=PYTHON_PREFILL_MIN + 40, window=11))


def test_bad_inputs_raise(monkeypatch):
    m = _model("olmo3", window=7)
    nan_norm = copy.deepcopy(m)
    with torch.no_grad():
        nan_norm.model.layers[1].post_attention_layernorm.weight[5] = float("nan")
    with pytest.raises(ValueError, match="post_attn_norm has a non-finite"):
        NativeDecoder(nan_norm, max_len=8)
    with pytest.raises(NotSupported, match="RMSNorm"):
        bf = copy.deepcopy(m)
        bf.model.layers[0].self_attn.q_norm.to(torch.bfloat16)
        NativeDecoder(bf, max_len=8)

    # what only a direct caller of _C.DecodeModel can pass
    real = _C.DecodeModel

    def build(edit):
        def patched(cfg, embed, cos, sin, final_norm, output, layers, threads, *local):
            edit(cfg, layers)
            return real(cfg, embed, cos, sin, final_norm, output, layers, threads, *local)
        monkeypatch.setattr(native, "_C", types.SimpleNamespace(DecodeModel=patched))
        try:
            return NativeDecoder(m, max_len=8)
        finally:
            monkeypatch.setattr(native, "_C", _C)

    assert build(lambda cfg, layers: None).forward([1, 2]).shape == (VOCAB,)
    q_full = torch.ones(4 * 18)
    cases = [
        (lambda c, ls: ls[0].update(q_norm=torch.ones(7)), ValueError, r"q_norm must have shape \(head_dim = 18,\) "
         r"or \(n_heads \* head_dim = 72,\), got \(7,\)"),
        (lambda c, ls: ls[0].update(q_norm=torch.ones(4, 18)), ValueError, "q_norm must have shape"),
        (lambda c, ls: ls[0].update(k_norm=torch.ones(18)), ValueError, r"k_norm has shape \(18,\), expected \(36,\)"),
        (lambda c, ls: ls[0].update(q_norm=torch.ones(18)), ValueError, r"k_norm has shape \(36,\), expected \(18,\)"),
        (lambda c, ls: ls[1].update(k_norm=None), ValueError, "q_norm and k_norm come together"),
        (lambda c, ls: ls[2].update(q_norm=q_full.double()), TypeError, "q_norm"),
        (lambda c, ls: ls[2].update(k_norm=torch.ones(72)[::2]), ValueError, "k_norm must be contiguous"),
        (lambda c, ls: ls[0].update(attn_norm=torch.ones(39)), ValueError, "attn_norm"),
        (lambda c, ls: ls[1].update(mlp_norm=torch.ones(40, dtype=torch.float64)), TypeError, "mlp_norm"),
        (lambda c, ls: ls[1].update(post_ffn_norm=torch.ones(41)), ValueError, "post_ffn_norm"),
    ]
    for edit, exc, match in cases:
        with pytest.raises(exc, match=match):
            build(edit)
