"""The native decode step with MoE feed-forwards (csrc/cpu/decode_model.cpp moe_ffn): routing,
the chosen experts, the shared expert, over prefill, decode and batched paged steps, against
the Python model in float64 (int4 experts: dequantised), and the engines' tokens both ways."""
from __future__ import annotations

import copy

import pytest
import torch

from llmforge.generate.engine import generate
from llmforge.generate.native import NativeDecoder, native_decoder
from llmforge.generate.sampling import SamplingParams

from .test_native_decode import _int4, _model, _reference_int4, _run, assert_engines_agree

KINDS = {
    "mixtral": dict(n_experts=5, moe_top_k=2),
    "qwen3moe": dict(n_experts=6, moe_top_k=3, moe_norm_topk=False, qk_norm=True, head_dim=32),
    "qwen2moe": dict(n_experts=4, moe_top_k=2, moe_norm_topk=False, attention_bias=True, moe_shared_ffn_dim=200,
                     tie_embeddings=False),
    "top1": dict(n_experts=3, moe_top_k=1, ffn_dim=96),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_float_moe_matches_float64_forward(kind):
    m = _model(**KINDS[kind])
    ids = torch.randint(0, m.cfg.vocab_size, (29,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    got = _run(NativeDecoder(m, max_len=40), ids.tolist(), 11)   # an 11-row prefill, then 18 single steps
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2moe"])
def test_int4_experts_match_float64(kind):
    """Every projection int4 (experts and shared expert too; the router stays float32)."""
    kw = {**KINDS[kind], "ffn_dim": 192, **({"moe_shared_ffn_dim": 224} if kind == "qwen2moe" else {})}
    m = _int4(_model(std=0.08, **kw), group_size=32, symmetric=False)
    assert type(m.model.layers[0].mlp.experts[1].down_proj).__name__ == "Int4Linear"
    ids = torch.randint(0, m.cfg.vocab_size, (21,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = _reference_int4(m)(ids[None])[0]
    got = _run(NativeDecoder(m, max_len=32), ids.tolist(), 6)
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)


def test_generate_and_engine_take_the_native_moe_step():
    m = _model(std=0.3, **KINDS["qwen2moe"])
    assert native_decoder(m, 30) is not None
    prompt = [5, 17, 42, 8, 99]
    fast = generate(m, [prompt], 16, SamplingParams(temperature=0))
    slow = generate(copy.deepcopy(m), [prompt], 16, SamplingParams(temperature=0), native=False)
    assert fast.tokens == slow.tokens
    g = torch.Generator().manual_seed(8)   # batched paged steps: rows of several sequences share each expert
    assert_engines_agree(m, [torch.randint(0, 301, (n,), generator=g).tolist() for n in (9, 4, 1, 13)], 8)


def test_nan_activations_reach_the_output_without_a_crash():
    """A NaN reaching the router must not pick an invalid expert (it once could index out of
    range): the step runs and the NaN shows in the logits; a NaN router weight is refused."""
    m = _model(**KINDS["qwen2moe"])
    with torch.no_grad():
        m.model.embed_tokens.weight[7] = float("nan")
    dec = NativeDecoder(m, max_len=8)
    out = dec.forward([3, 7, 4], all_logits=True)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1:]).all()
    bad = _model(**KINDS["mixtral"])
    with torch.no_grad():
        bad.model.layers[1].mlp.router.weight[2, 5] = float("nan")
    with pytest.raises(ValueError, match="router has a non-finite"):
        NativeDecoder(bad)
