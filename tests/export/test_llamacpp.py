"""llama.cpp (llama-cpp-python) loads our GGUF exports: same tokenization, and logits within 1e-3 (F32)
of ours; Q8_0 within its quantisation error. Skipped unless llama-cpp-python is installed
(`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`, about 5 minutes to build)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402

pytestmark = pytest.mark.llamacpp

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ") * 20
HELD = ["Now are our brows bound with victorious wreaths;", "Grim-visaged war hath smooth'd his wrinkled front;",
        "Über Straßen, 12345 and ünïcödé — what?"]


@pytest.fixture(scope="module")
def model_and_tok():
    tok = Tokenizer.train([TEXT], vocab_size=340)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=128, max_seq_len=128, norm_eps=1e-5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    return model, tok


def _llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2,
                           type_k=0, type_v=0)  # GGML_TYPE_F32 caches: no F16 rounding in the comparison


@pytest.mark.parametrize("qtype,tol", [("f32", 1e-3), ("q8_0", None)])
def test_llamacpp_matches(tmp_path, model_and_tok, qtype, tol):
    model, tok = model_and_tok
    path = tmp_path / f"m-{qtype}.gguf"
    export_gguf(model, tok, str(path), qtype)
    llm = _llama(path)
    for text in HELD:
        ours = tok.encode(text)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert theirs == ours, (text, ours, theirs)
    ids = tok.encode(HELD[0] + " " + HELD[1])
    llm.reset()
    llm.eval(ids)
    lc = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].double().numpy()
    diff = np.abs(lc - ref).max()
    if tol is not None:
        assert diff < tol, diff
    else:  # Q8_0: llama.cpp also rounds activations to Q8_0; argmax agreement and a loose bound
        assert (lc.argmax(-1) == ref.argmax(-1)).mean() > 0.9 and diff < 0.5, diff
