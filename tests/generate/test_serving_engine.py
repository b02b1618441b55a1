"""Continuous batching over the paged cache gives the same tokens as one-at-a-time generation."""
from __future__ import annotations

import pytest
import torch

from llmforge.generate.engine import generate
from llmforge.generate.sampling import SamplingParams
from llmforge.generate.serving_engine import Engine
from llmforge.model import ModelConfig, Transformer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                   max_seq_len=128)).eval()


def test_greedy_matches_single_requests_and_frees_blocks():
    model = _model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 101, (int(n),), generator=g).tolist() for n in (3, 17, 1, 30, 9, 16)]
    lens = [5, 20, 12, 3, 16, 8]
    eng = Engine(model, num_blocks=20, block_size=16, max_batch=3)
    rids = [eng.submit(p, n, SamplingParams(temperature=0)) for p, n in zip(prompts, lens)]
    res = eng.run()
    for rid, p, n in zip(rids, prompts, lens):
        want = generate(model, [p], n, SamplingParams(temperature=0)).tokens[0]
        assert res[rid].tokens == want and res[rid].finish_reason == "length"
    assert eng.cache.num_free_blocks == 20


@pytest.mark.parametrize("native", [True, False])
def test_qwen3_qk_norm_decodes_like_generate(native):
    """Qwen3's per-head query/key norms in the engine's batched step, natively and on the Python
    path over the paged pools: the tokens of one-at-a-time generation."""
    torch.manual_seed(2)
    model = Transformer(ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                                    ffn_dim=128, max_seq_len=128, qk_norm=True)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.3, 3.0)      # the norms matter for the tokens
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 101, (int(n),), generator=g).tolist() for n in (5, 19, 2)]
    eng = Engine(model, num_blocks=12, block_size=16, max_batch=3, native=native)
    assert (eng.native is not None) == native
    rids = [eng.submit(p, 12, SamplingParams(temperature=0)) for p in prompts]
    res = eng.run()
    for rid, p in zip(rids, prompts):
        assert res[rid].tokens == generate(model, [p], 12, SamplingParams(temperature=0)).tokens[0]


def test_stop_and_seeded_sampling_independent_of_batch():
    model = _model()
    p = SamplingParams(temperature=0.8, top_k=30)
    solo = Engine(model, num_blocks=16, max_batch=1)
    a = solo.submit([1, 2, 3], 12, p, seed=5)
    alone = solo.run()[a].tokens
    eng = Engine(model, num_blocks=16, max_batch=4)
    eng.submit([9, 9], 12, p, seed=1)
    b = eng.submit([1, 2, 3], 12, p, seed=5)
    eng.submit([4], 12, p, seed=2)
    assert eng.run()[b].tokens == alone
    stop = alone[3]
    eng = Engine(model, num_blocks=16)
    c = eng.submit([1, 2, 3], 12, p, stop_ids={stop}, seed=5)
    r = eng.run()[c]
    assert r.finish_reason == "stop" and r.tokens == alone[:alone.index(stop) + 1]


def test_rejects_bad_requests():
    eng = Engine(_model(), num_blocks=4, block_size=16)
    with pytest.raises(ValueError):
        eng.submit([], 4)
    with pytest.raises(ValueError, match="vocabulary"):
        eng.submit([500], 4)
    with pytest.raises(ValueError, match="blocks"):
        eng.submit([1] * 60, 60)


# ---- stop strings, quantized models, abort (generation + serving issue) ---------------------------
def _tok_model():
    from llmforge.tokenizer import Tokenizer

    tok = Tokenizer.train_from_iterator(["the fox and the dog ran over the hill to the king. " * 30], vocab_size=280)
    torch.manual_seed(2)
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                max_seq_len=128)).eval()
    m.reset_parameters(std=0.15)
    return tok, m


def test_stop_strings_cut_text_in_engine_and_generate():
    tok, model = _tok_model()
    prompt = tok.encode("the fox")
    full = generate(model, [prompt], 30, SamplingParams(temperature=0)).tokens[0]
    text = tok.decode(full, skip_special=True)
    cut = next(i for i in range(2, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[cut:cut + 2]
    eng = Engine(model, num_blocks=16, tokenizer=tok)
    rid = eng.submit(prompt, 30, SamplingParams(temperature=0), stop=[stop])
    res = eng.run()[rid]
    want = text[:text.find(stop)]
    assert res.finish_reason == "stop" and res.text == want
    assert res.tokens == full[:len(res.tokens)] and stop in tok.decode(res.tokens, skip_special=True)
    assert stop not in tok.decode(res.tokens[:-1], skip_special=True)   # stopped at the token completing it
    g = generate(model, [prompt, tok.encode("the dog")], 30, SamplingParams(temperature=0), stop=[stop], tokenizer=tok)
    assert g.texts[0] == want and g.finished[0] and g.tokens[0] == res.tokens
    deltas = []
    eng.submit(prompt, 30, SamplingParams(temperature=0), stop=[stop],
               on_token=lambda r, t, d, f: deltas.append((d, f)))
    eng.run()
    assert "".join(d for d, _ in deltas) == want and [f for _, f in deltas][-1] == "stop"
    with pytest.raises(ValueError, match="tokenizer"):
        Engine(model, num_blocks=8).submit(prompt, 4, stop=["x"])


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_model_decodes_like_its_recompute(quant):
    from llmforge.generate.load import quantize_for_inference

    model = _model()
    assert quantize_for_inference(model, quant)
    prompts = [[5, 7, 9, 11], [1], [40, 41, 42, 43, 44, 45]]
    eng = Engine(model, num_blocks=20, max_batch=2)
    rids = [eng.submit(p, 10, SamplingParams(temperature=0)) for p in prompts]
    res = eng.run()
    for rid, p in zip(rids, prompts):
        seq = list(p)
        with torch.no_grad():
            for _ in range(10):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert res[rid].tokens == seq[len(p):]
        assert generate(model, [p], 10, SamplingParams(temperature=0)).tokens[0] == seq[len(p):]


def test_abort_frees_blocks():
    eng = Engine(_model(), num_blocks=20, max_batch=1)
    a = eng.submit([1, 2, 3], 40)
    b = eng.submit([4, 5], 40)
    eng.step()
    assert eng.cache.num_used_blocks > 0
    assert eng.abort(a) and eng.abort(b) and not eng.abort(a)
    assert eng.cache.num_free_blocks == 20 and not eng.running and not eng.waiting
    assert eng.done[a].finish_reason == "abort" and eng.done[b].tokens == []
