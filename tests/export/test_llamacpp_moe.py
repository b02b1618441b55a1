"""MoE GGUF exports against llama.cpp itself: its logits for our llama-arch (Mixtral layout),
qwen3moe and qwen2moe files, and its own quantiser (llama_model_quantize) choosing the same *_K_M types, with
the same bytes, as export_gguf, for dense and 8-expert models."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, import_gguf  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402

pytestmark = pytest.mark.llamacpp

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ") * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=310)


def _model(tok, seed, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128,
                norm_eps=1e-5)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    return model


@pytest.mark.parametrize("kw,arch", [
    (dict(n_experts=5, moe_top_k=2), "llama"),
    (dict(n_experts=4, moe_top_k=1, tie_embeddings=True), "llama"),
    (dict(n_experts=6, moe_top_k=3, qk_norm=True, head_dim=32, rope_theta=1e6), "qwen3moe"),
    (dict(n_experts=6, moe_top_k=2, attention_bias=True, moe_shared_ffn_dim=72, moe_norm_topk=False, rope_theta=1e6),
     "qwen2moe"),
])
def test_llamacpp_runs_moe(tmp_path, tok, kw, arch):
    model = _model(tok, 1, **kw)
    path = tmp_path / "moe.gguf"
    export_gguf(model, tok, str(path), "f32")
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == arch
    again, _ = import_gguf(str(path))
    assert again.cfg == model.cfg
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    ids = tok.encode(TEXT[:230])
    llm.eval(ids)
    lc = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(lc - ref).max() < 1e-3, np.abs(lc - ref).max()


_LLAMA_FTYPE = {"q4_k_m": 15, "q5_k_m": 17}   # llama.h: LLAMA_FTYPE_MOSTLY_Q4_K_M, _Q5_K_M


@pytest.mark.parametrize("qtype", ["q4_k_m", "q5_k_m"])
@pytest.mark.parametrize("kw", [dict(n_layers=8), dict(n_layers=3, n_experts=8, moe_top_k=2),
                                dict(n_layers=3, n_experts=8, moe_top_k=2, attention_bias=True, moe_shared_ffn_dim=512,
                                     moe_norm_topk=False)])   # qwen2moe: the shared expert's tensors too
def test_mix_and_bytes_match_llama_quantize(tmp_path, tok, qtype, kw):
    """llama.cpp's quantiser, given our F32 file, picks for every tensor the type export_gguf
    picked (use_more_bits layers, the 8-expert Q8_0 attn_k / attn_v and Q5_K attn_output, the
    F32 router) and writes the same bytes."""
    model = _model(tok, 2, dim=256, ffn_dim=256, max_seq_len=64, **kw)
    f32, ours_path, theirs_path = (str(tmp_path / n) for n in ("f32.gguf", "ours.gguf", "theirs.gguf"))
    export_gguf(model, tok, f32, "f32")
    ours = export_gguf(model, tok, ours_path, qtype)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = _LLAMA_FTYPE[qtype], 2
    assert llama_cpp.llama_model_quantize(f32.encode(), theirs_path.encode(), ctypes.byref(params)) == 0
    theirs = {t.name: t for t in gguf.GGUFReader(theirs_path).tensors}
    assert {k: t.tensor_type.name.lower() for k, t in theirs.items()} == ours
    assert len(set(ours.values())) >= 3, ours         # the mix is exercised, not one type
    mine = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
    for name, t in theirs.items():
        assert np.array_equal(np.asarray(t.data), np.asarray(mine[name].data)), name
