"""The native decode step (generate/native.py, csrc/cpu/decode_model.cpp) on Gemma, Gemma 2 and Gemma 3
(text) models: GeGLU, embeddings x sqrt(dim), sandwich norms, the attention scale, attention and logit
soft-caps, the sliding layers' own RoPE and windows. Against the Python forward in float64 (own cache,
prefill then single steps; Hugging Face checkpoints too), the serving engine's Python path (paged
batched steps), int4 weights; options that cannot be run raise."""
from __future__ import annotations

import copy
import math
import types

import pytest
import torch

from llmforge import _C
from llmforge.generate import native
from llmforge.generate.engine import PYTHON_PREFILL_MIN
from llmforge.generate.native import NativeDecoder, NotSupported
from llmforge.model import ModelConfig
from tests.generate.native_checks import (PROJ, VOCAB, check_checkpoint, check_every_cpu_path, check_float_model,
                                          check_int4, check_paged, check_python_prefill, random_model, to_int4)

GEMMA = dict(hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True, tie_embeddings=True)
KINDS = {
    "gemma": GEMMA,
    "gemma2": dict(GEMMA, sandwich_norm=True, attn_scale=24 ** -0.5, attn_softcap=2.0, final_softcap=3.0,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "gemma3": dict(GEMMA, sandwich_norm=True, qk_norm=True, attn_scale=20 ** -0.5, rope_theta=1e6,
                   rope_scaling={"rope_type": "linear", "factor": 4.0}, local_rope_theta=1e4,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    # not a published layout, but the Python model runs it: GeGLU experts, sandwich norms, soft-caps
    "gemma2_moe": dict(GEMMA, sandwich_norm=True, attn_softcap=5.0, final_softcap=4.0, n_experts=3, moe_top_k=2,
                       tie_embeddings=False),
}


def _model(kind, **kw):
    return random_model(KINDS[kind], **kw)


CASES = [("gemma", None), ("gemma2", None), ("gemma3", None), ("gemma2_moe", None), ("gemma2", 7), ("gemma3", 5)]
IDS = [f"{k}-window{w}" if w else k for k, w in CASES]


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_float_model_matches_float64_forward(kind, window):
    check_float_model(_model(kind, window=window))


@pytest.mark.parametrize("kind,window", [("gemma2", 7), ("gemma3", None)])
def test_every_cpu_path_matches(kind, window):
    """The scalar build (std::tanh, scalar GeGLU) and the vector one (polynomial tanh, vector GeGLU)."""
    check_every_cpu_path(_model(kind, window=window))


@pytest.mark.parametrize("mtype", ["gemma", "gemma2", "gemma3_text"])
def test_hf_checkpoint_matches_python_forward(tmp_path, mtype):
    """Checkpoints transformers wrote (norms stored as w for 1 + w) load to models the step runs."""
    transformers = pytest.importorskip("transformers")

    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=20, max_position_embeddings=64, rms_norm_eps=1e-6)
    extra = {"gemma": dict(hidden_act="gelu_pytorch_tanh"),
             "gemma2": dict(query_pre_attn_scalar=24, sliding_window=64, attn_logit_softcapping=2.0,
                            final_logit_softcapping=3.0),
             "gemma3_text": dict(query_pre_attn_scalar=20, sliding_window=64, sliding_window_pattern=2,
                                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})}
    cls = {"gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
           "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
           "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM)}[mtype]
    torch.manual_seed(0)
    hf = cls[1](cls[0](**base, **extra[mtype]))
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(0.0, 0.3 if n.endswith("norm.weight") else 0.2 if p.dim() > 1 else 0.1)
    hf.save_pretrained(tmp_path)
    assert check_checkpoint(tmp_path).cfg.hf_model_type() == mtype


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_paged_steps_match_float64_and_python_engine(kind, window):
    check_paged(_model(kind, window=window, std=0.3))


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3"])
def test_int4_model_matches_python_forward(kind):
    """head_dim 32: the attention items prepare the o projection's int4 input blocks themselves (18
    above: one thread after them)."""
    check_int4(to_int4(_model(kind, dim=64, head_dim=32, ffn_dim=96, std=0.1, tie_embeddings=False),
                       targets=PROJ + ("lm_head",)))


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_python_prefill_hands_its_cache_to_the_step(kind):
    check_python_prefill(_model(kind, std=0.3, max_seq_len=PYTHON_PREFILL_MIN + 40))


def _with_cfg(m, **kw):
    """A copy of m whose config was edited after construction (nothing checks it then)."""
    m = copy.deepcopy(m)
    for k, v in kw.items():
        setattr(m.cfg, k, v)
    return m


def test_bad_options_raise(monkeypatch):
    m = _model("gemma3")
    with pytest.raises(ValueError, match="attn_softcap"):
        ModelConfig(**{**KINDS["gemma2"], "sliding_window": 64, "n_layers": 3, "attn_softcap": math.nan})
    # a config edited after its checks: the step's own checks refuse what it cannot run
    for name, bad in (("attn_softcap", math.nan), ("attn_softcap", math.inf), ("attn_softcap", -2.0),
                      ("attn_softcap", 1e-300), ("final_softcap", math.nan), ("final_softcap", -1.0),
                      ("attn_scale", -0.5), ("attn_scale", math.inf)):
        with pytest.raises(ValueError, match=name):
            NativeDecoder(_with_cfg(m, **{name: bad}), max_len=8)
    with pytest.raises(ValueError, match="attn_scale / attn_softcap"):   # the product overflows float32
        NativeDecoder(_with_cfg(m, attn_scale=1e30, attn_softcap=1e-30), max_len=8)
    with pytest.raises(NotSupported, match="hidden_act"):
        NativeDecoder(_with_cfg(m, hidden_act="relu"), max_len=8)
    odd = copy.deepcopy(m)
    odd.model.layers[1].mlp.act = "silu"         # one FFN unlike the others: the step has one flag
    with pytest.raises(NotSupported, match="activation"):
        NativeDecoder(odd, max_len=8)
    nan_norm = copy.deepcopy(m)
    with torch.no_grad():
        nan_norm.model.layers[2].post_feedforward_layernorm.weight[3] = math.nan
    with pytest.raises(ValueError, match="post_ffn_norm has a non-finite"):
        NativeDecoder(nan_norm, max_len=8)
    with pytest.raises(NotSupported, match="RMSNorm"):
        bf = copy.deepcopy(m)
        bf.model.layers[0].post_attention_layernorm.to(torch.bfloat16)
        NativeDecoder(bf, max_len=8)

    # what only a direct caller of _C.DecodeModel can pass
    real = _C.DecodeModel

    def build(edit):
        def patched(cfg, embed, cos, sin, final_norm, output, layers, threads, *local):
            local = list(local)
            edit(cfg, layers, local)
            return real(cfg, embed, cos, sin, final_norm, output, layers, threads, *local)
        monkeypatch.setattr(native, "_C", types.SimpleNamespace(DecodeModel=patched))
        try:
            return NativeDecoder(m, max_len=8)
        finally:
            monkeypatch.setattr(native, "_C", _C)

    assert build(lambda cfg, layers, local: None).forward([1, 2]).shape == (VOCAB,)
    cases = [
        (lambda c, ls, lo: c.update(embed_scale=math.nan), ValueError, "embed_scale"),
        (lambda c, ls, lo: c.update(embed_scale=-1.0), ValueError, "embed_scale"),
        (lambda c, ls, lo: ls[0].update(post_attn_norm=torch.ones(7)), ValueError, "post_attn_norm"),
        (lambda c, ls, lo: ls[0].update(post_ffn_norm=torch.ones(40, dtype=torch.float64)), TypeError, "post_ffn_norm"),
        (lambda c, ls, lo: ls[1].update(window=-3), ValueError, "window"),
        (lambda c, ls, lo: lo.clear(), ValueError, "local_rope needs"),
        (lambda c, ls, lo: lo.__setitem__(0, lo[0][:5].contiguous()), ValueError, "rope_cos_local"),
        (lambda c, ls, lo: lo.__setitem__(1, torch.full_like(lo[1], math.nan)), ValueError, "rope_sin_local has a non"),
        (lambda c, ls, lo: lo.__setitem__(1, None), ValueError, "come together"),
    ]
    for edit, exc, match in cases:
        with pytest.raises(exc, match=match):
            build(edit)
