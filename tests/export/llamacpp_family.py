"""Pieces shared by the per-family llama.cpp tests (test_llamacpp_gemma.py, test_llamacpp_olmo.py):
the tokenizer they train, the marker of tests that run llama.cpp, llama.cpp's logits over F32 caches,
and ggml's Q8_0 rounding of activations (the reference of quantised files)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmforge.export.llamacpp_check import llamacpp_available
from llmforge.tokenizer import Tokenizer

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ") * 20
HELD = ["Now are our brows bound with victorious wreaths;", "Grim-visaged war hath smooth'd his wrinkled front;",
        "Über Straßen, 12345 and ünïcödé — what?"]
S, G = "sliding_attention", "full_attention"
LINEAR = {"rope_type": "linear", "factor": 4.0}


def needs_llamacpp(f):
    """A test that runs llama.cpp: marked llamacpp, skipped without llama-cpp-python."""
    return pytest.mark.llamacpp(pytest.mark.skipif(not llamacpp_available(), reason="needs llama-cpp-python")(f))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=337)


def llamacpp_logits(path, ids, n_ctx=128) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                          n_threads=torch.get_num_threads(),
                          type_k=0, type_v=0)   # GGML_TYPE_F32 caches: no F16 rounding in the comparison
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x rounded as ggml rounds activations to Q8_0: per 32 values d = amax / 127 (kept as float16)."""
    b = x.detach().float().reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = b.abs().amax(-1, keepdim=True)
    d = (amax / 127).half().float()
    inv = torch.where(amax != 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(b * inv) * d).reshape(x.shape).to(x.dtype)


@torch.no_grad()
def rounded_reference(model, types_: dict, ids, mlp_forward=None) -> np.ndarray:
    """The model's logits with every quantised projection's input (and the output head's) rounded to
    Q8_0 as ggml rounds activations (types_: export_gguf's tensor types). mlp_forward replaces the
    FFNs' forward (Gemma: GELU as ggml's F16 table gives it)."""
    import types

    from llmforge.export.gguf_export import _names

    mods, hooks = dict(model.named_modules()), []
    for hf, gg in _names(model.cfg):
        if types_[gg] in ("q8_0", "q4_0") and hf.endswith("proj.weight"):
            hooks.append(mods[hf[: -len(".weight")]].register_forward_pre_hook(lambda m, a: (round_q8_0(a[0]),)))
    if mlp_forward is not None:
        for layer in model.model.layers:
            layer.mlp.forward = types.MethodType(mlp_forward, layer.mlp)
    try:
        h = model.hidden_states(torch.tensor([ids]))
        head = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        out = torch.nn.functional.linear(round_q8_0(h), head)    # the output matmul rounds its input too
        cap = model.cfg.final_softcap
        out = out if cap is None else torch.tanh(out / cap) * cap
    finally:
        for hook in hooks:
            hook.remove()
        if mlp_forward is not None:
            for layer in model.model.layers:
                del layer.mlp.forward
    return out[0].double().numpy()
