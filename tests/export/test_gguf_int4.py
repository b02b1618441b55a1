"""A Q4_0 GGUF runs on our int4 matmul with the file's own bits: same weights as the dequantised
import, bit for bit, and the same logits up to float summation order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge.export.gguf_export import export_gguf, import_gguf  # noqa: E402
from llmforge.export.gguf_int4 import load_gguf_int4, q4_0_to_int4  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.ops import dequantize_int4  # noqa: E402
from llmforge.quant.linear import Int4Linear  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402


def test_q4_0_blocks_are_our_int4_codes():
    rng = np.random.default_rng(0)
    w = (rng.standard_t(4, size=(7, 96)) * 0.05).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).reshape(7, 96)
    ours = dequantize_int4(q4_0_to_int4(raw, 7, 96)).numpy()
    assert np.array_equal(ours, ref)
    with pytest.raises(ValueError, match="bytes"):
        q4_0_to_int4(raw.reshape(-1)[:-1], 7, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        q4_0_to_int4(raw, 7, 95)


def test_q4_0_model_runs_in_int4(tmp_path):
    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 50], vocab_size=290)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=96, max_seq_len=64)).eval()
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tok, path, "q4_0")
    deq, _ = import_gguf(path)
    q, tok2 = load_gguf_int4(path)
    n_int4 = sum(isinstance(m, Int4Linear) for m in q.modules())
    assert n_int4 == 2 * 7 + 1            # and the output head: tied embeddings stored in Q4_0
    for (name, m) in q.named_modules():
        if isinstance(m, Int4Linear):
            ref = deq.model.embed_tokens.weight if name == "lm_head" and deq.lm_head is None else \
                deq.get_submodule(name).weight
            assert torch.equal(m.dequantized_weight(), ref)
            assert m.act_round == "q8_0"      # llama.cpp rounds the activations of a Q4_0 matmul
    ids = torch.tensor([tok.encode("the lazy fox jumps over the quick dog")])
    with torch.no_grad():
        rounded, b = q(ids).double(), deq(ids).double()
        for m in q.modules():
            if isinstance(m, Int4Linear):
                m.act_round = None
        a = q(ids).double()
    assert (a - b).abs().max() < 1e-4 * b.abs().max()
    assert 1e-4 * b.abs().max() < (rounded - b).abs().max() < 0.05 * b.abs().max()
