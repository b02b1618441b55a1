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
