"""The native decode step (generate/native.py, csrc/cpu/decode_model.cpp) against float64 references:
the Python model in float64 for float weights, and for int4 weights the same model with every int4
projection's input rounded as Q8_0 (what the kernel and llama.cpp do); llama.cpp itself on a Q4_0
GGUF (marked llamacpp)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmforge import _C
from llmforge.generate.engine import generate
from llmforge.generate.native import NativeDecoder, NotSupported, native_decoder
from llmforge.generate.sampling import SamplingParams
from tests.generate.native_checks import PROJ, paged_prompts, random_model
from tests.generate.native_checks import run_steps as _run
from llmforge.quant.linear import Int4Linear, swap_linears



def _model(seed=0, std=0.15, **kw):
    return random_model(dict(vocab_size=301, dim=96, n_heads=6, head_dim=None, ffn_dim=160, max_seq_len=64,
                             tie_embeddings=True), seed=seed, std=std, **kw)



def q8_round(x: torch.Tensor) -> torch.Tensor:
    """Q8_0 in float32 as ggml: per 32 values d = amax/127 (kept as float16), q = round-half-even(x * 127/amax)."""
    x32 = x.float()
    b = x32.reshape(*x32.shape[:-1], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    q = torch.round(b * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    return (q * (amax / 127).half().float()).reshape(x.shape).to(x.dtype)


def _reference_int4(model):
    """float64 copy: int4 projections dequantised; inputs Q8_0-rounded where act_round asks."""
    r = copy.deepcopy(model)
    for mod in list(r.modules()):
        for name, ch in list(mod.named_children()):
            if isinstance(ch, Int4Linear):
                lin = nn.Linear(ch.in_features, ch.out_features, bias=ch.bias is not None)
                lin.weight.data = ch.dequantized_weight()
                if ch.bias is not None:
                    lin.bias.data = ch.bias.data.clone()
                if ch.act_round == "q8_0":
                    lin.register_forward_pre_hook(lambda _m, a: (q8_round(a[0]),))
                setattr(mod, name, lin)
    return r.double()


def _agree(got, ref, plain=None, loose=0.02):
    """Int8 rounding decisions can flip between two float orders (a value within ~1e-7 of a .5
    boundary), and a flip in a cached key/value shifts every later position a little: so the bound is
    `loose` of the logit scale, and, given the reference without rounding (`plain`), the kernel must
    sit far closer to the rounding reference than to it (it does round as Q8_0)."""
    scale = ref.abs().max()
    err = (got.double() - ref).abs().amax(-1) / scale
    assert float(err.max()) < loose, err
    assert float(err.min()) < 1e-5, err          # before the first flip the two agree to float precision
    if plain is not None:
        far = (got.double() - plain.double()).abs().amax(-1) / scale
        assert float(err.mean()) < 0.3 * float(far.mean()), (err, far)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, attention_bias=True, n_kv_heads=3),
                                dict(dim=72, n_heads=4, n_kv_heads=1, ffn_dim=100, rope_theta=500.0,
                                     rope_scaling={"rope_type": "linear", "factor": 2.0}),
                                dict(qk_norm=True, head_dim=32, tie_embeddings=False)])   # Qwen3
def test_float_model_matches_float64_forward(kw):
    m = _model(**kw)
    ids = torch.randint(0, m.cfg.vocab_size, (23,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    got = _run(NativeDecoder(m, max_len=40), ids.tolist(), 9)
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)


def _int4(m, group_size=32, symmetric=True, act_round=None, targets=PROJ):
    swap_linears(m, Int4Linear, targets=targets, group_size=group_size, symmetric=symmetric)
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = act_round
    return m


@pytest.mark.parametrize("group_size,symmetric,dim", [(32, True, 96), (64, False, 128), (32, False, 160)])
def test_int4_model_matches_float64(group_size, symmetric, dim):
    m = _int4(_model(dim=dim, n_heads=4, n_kv_heads=2, ffn_dim=192 if group_size == 64 else 224, std=0.08),
              group_size, symmetric)
    ids = torch.randint(0, m.cfg.vocab_size, (24,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _reference_int4(m)(ids[None])[0]        # no rounding hooks: act_round is None
    got = _run(NativeDecoder(m, max_len=32), ids.tolist(), 7)
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("group_size,symmetric,dim", [(32, True, 96), (64, False, 128), (32, False, 160)])
def test_int4_q8_model_matches_q8_reference(group_size, symmetric, dim):
    m = _int4(_model(dim=dim, n_heads=4, n_kv_heads=2, ffn_dim=192 if group_size == 64 else 224, std=0.08),
              group_size, symmetric, act_round="q8_0")
    ids = torch.randint(0, m.cfg.vocab_size, (24,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _reference_int4(m)(ids[None])[0]
        plain = _reference_int4(_int4(copy.deepcopy(m)))(ids[None])[0]   # same weights, no rounding
        python = m(ids[None])[0]                                           # the Python int4 path
    got = _run(NativeDecoder(m, max_len=32), ids.tolist(), 7)
    _agree(got, ref, plain)
    _agree(python, ref, plain)
    # the int8 dot products are exact with or without AVX512-VNNI: bit-identical logits
    before = _C.cpu_vnni()
    try:
        _C.set_cpu_vnni(not before)
    except ValueError:   # no VNNI on this CPU: only the maddubs path exists
        return
    try:
        other = _run(NativeDecoder(m, max_len=32), ids.tolist(), 7)
    finally:
        _C.set_cpu_vnni(before)
    assert torch.equal(got, other)


def test_long_prompts_go_through_in_token_tiles():
    """A 150-token prefill crosses the kernel's 64-token tiles: float weights still match the float64
    forward, and int4 weights (per-token sums in a fixed order) give exactly the step-by-step logits."""
    ids = torch.randint(0, 301, (150,), generator=torch.Generator().manual_seed(6))
    m = _model(max_seq_len=160, std=0.1)
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    got = NativeDecoder(m, max_len=160).forward(ids.tolist(), all_logits=True)
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)
    for act_round in (None, "q8_0"):
        q = _int4(_model(max_seq_len=160, std=0.08, tie_embeddings=False), act_round=act_round,
                  targets=PROJ + ("lm_head",))     # an int4 head too: every sum is per token
        whole = NativeDecoder(q, max_len=160).forward(ids.tolist(), all_logits=True)
        step = NativeDecoder(q, max_len=160)
        assert torch.equal(whole, torch.stack([step.forward([t]) for t in ids.tolist()]))


def test_int4_output_head_and_scalar_path_agree():
    m = _int4(_model(std=0.08, tie_embeddings=False), act_round="q8_0", targets=PROJ + ("lm_head",))
    assert isinstance(m.lm_head, Int4Linear)
    ids = torch.randint(0, 301, (18,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        ref = _reference_int4(m)(torch.tensor([ids]))[0]
        plain = _reference_int4(_int4(copy.deepcopy(m), targets=PROJ + ("lm_head",)))(torch.tensor([ids]))[0]
    best = _C.cpu_isa()
    try:
        for isa in dict.fromkeys(["scalar", best]):
            _C.set_cpu_isa(isa)
            _agree(_run(NativeDecoder(m, max_len=20), ids, 5), ref, plain)
    finally:
        _C.set_cpu_isa(best)


def test_cache_reset_truncate_and_single_thread():
    m = _model()
    ids = torch.randint(0, 301, (20,), generator=torch.Generator().manual_seed(4)).tolist()
    dec = NativeDecoder(m, max_len=30, threads=1)
    full = dec.forward(ids, all_logits=True)
    assert dec.length == 20
    dec.reset(12)                       # keep the first 12 positions, redo the rest one by one
    again = torch.stack([dec.forward([t]) for t in ids[12:]])
    torch.testing.assert_close(again, full[12:], atol=1e-4, rtol=0)
    dec.reset()
    torch.testing.assert_close(dec.forward(ids[:5]), full[4], atol=1e-4, rtol=0)
    two = NativeDecoder(m, max_len=30, threads=2).forward(ids, all_logits=True)
    torch.testing.assert_close(two, full, atol=1e-4, rtol=0)


def test_bad_input_raises():
    m = _model()
    dec = NativeDecoder(m, max_len=8)
    with pytest.raises(ValueError, match="outside"):
        dec.forward([3, 301])
    with pytest.raises(ValueError, match="outside"):
        dec.forward([-1])
    assert dec.length == 0               # a rejected call appends nothing
    with pytest.raises(ValueError, match="exceed max_len"):
        dec.forward(list(range(9)))
    with pytest.raises(ValueError, match="at least one"):
        dec.forward([])
    with pytest.raises(TypeError):
        dec.forward([1.5])
    with pytest.raises(ValueError, match="truncate"):
        dec.reset(3)
    with pytest.raises(ValueError, match="max_len"):
        NativeDecoder(m, max_len=65)
    with pytest.raises(NotSupported, match="float32"):
        NativeDecoder(copy.deepcopy(m).to(torch.bfloat16))
    mixed = _int4(copy.deepcopy(m), targets=("q_proj", "k_proj"))
    mixed.model.layers[0].self_attn.q_proj.act_round = "q8_0"
    with pytest.raises(NotSupported, match="mix"):
        NativeDecoder(mixed)
    bad = _int4(copy.deepcopy(m), targets=("q_proj",))
    bad.model.layers[1].self_attn.q_proj.scales[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        NativeDecoder(bad)
    moe = _model(n_experts=2, moe_top_k=1)
    moe.model.layers[1].mlp.router.to(torch.bfloat16)
    with pytest.raises(NotSupported, match="router"):
        NativeDecoder(moe)


def test_generate_uses_native_and_matches_python_path():
    m = _model(std=0.3)
    prompt = [5, 17, 42, 8]
    fast = generate(m, [prompt], 20, SamplingParams(temperature=0))
    assert native_decoder(m, 30) is not None
    copy.deepcopy(m)                    # the cached native decoder does not travel with the model
    slow = generate(m, [prompt], 20, SamplingParams(temperature=0), native=False)
    assert fast.tokens == slow.tokens
    p = SamplingParams(temperature=0.9, top_k=20, repetition_penalty=1.2)
    a = generate(m, [prompt], 15, p, seed=3).tokens
    assert a == generate(m, [prompt], 15, p, seed=3).tokens
    assert a == generate(m, [prompt], 15, p, seed=3, native=False).tokens
    with pytest.raises(ValueError, match="native=True"):
        generate(m, [prompt, prompt], 3, native=True)


def test_generate_sees_weight_edits():
    m = _model(std=0.3)
    prompt = [1, 2, 3]
    generate(m, [prompt], 4)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight.mul_(-1.0)          # in place
        m.model.layers[1].self_attn.o_proj.weight.data.mul_(3.0)  # through .data (no version bump)
    with torch.no_grad():
        ref = m(torch.tensor([prompt]))[0, -1]
    dec = native_decoder(m, 10)
    torch.testing.assert_close(dec.forward(prompt), ref, atol=1e-4, rtol=0)
    assert native_decoder(m, 10) is dec                           # unchanged weights: the same decoder
    assert generate(m, [prompt], 4).tokens == generate(m, [prompt], 4, native=False).tokens
    copy.deepcopy(m)                                              # nothing native sticks to the model


@pytest.mark.llamacpp
@pytest.mark.parametrize("kw", [
    dict(),                                                            # llama, tied Q4_0 embeddings
    dict(qk_norm=True, head_dim=32),                                   # qwen3: q/k rows as they are (NEOX)
    dict(n_experts=4, moe_top_k=2, ffn_dim=128),                       # llama with experts (Mixtral layout)
    dict(n_experts=4, moe_top_k=2, ffn_dim=128, attention_bias=True, moe_shared_ffn_dim=160, moe_norm_topk=False,
         tie_embeddings=False),                                        # qwen2moe
])
def test_q4_0_gguf_logits_match_llamacpp(tmp_path, kw):
    llama_cpp = pytest.importorskip("llama_cpp")
    from llmforge.export.gguf_export import export_gguf
    from llmforge.export.gguf_int4 import load_gguf_int4
    from llmforge.export.llamacpp_check import GGML_TYPE_F32, _quiet_stderr
    from llmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 50], vocab_size=290)
    m = _model(vocab_size=tok.vocab_size, dim=128, n_heads=4, n_kv_heads=2, **{"ffn_dim": 352, **kw}, std=0.05)
    path = str(tmp_path / "m-q4_0.gguf")
    export_gguf(m, tok, path, "q4_0")
    ours, _ = load_gguf_int4(path)
    assert isinstance(ours.lm_head, Int4Linear) and ours.lm_head.act_round == "q8_0"   # the output matrix in Q4_0
    if m.cfg.n_experts:
        assert isinstance(ours.model.layers[1].mlp.experts[3].up_proj, Int4Linear)
    ids = torch.randint(0, tok.vocab_size, (30,), generator=torch.Generator().manual_seed(5)).tolist()
    with _quiet_stderr():
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                              type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[: len(ids)], dtype=torch.float64)
    got = _run(NativeDecoder(ours, max_len=40), ids, 10)
    _agree(got, theirs)
    assert float((got.argmax(-1) == theirs.argmax(-1)).double().mean()) >= 0.9


def test_paged_batched_step_matches_contiguous_and_python_engine():
    from llmforge.generate.paged_cache import PagedKVCache

    m = _model(std=0.2)
    c = m.cfg
    dec = NativeDecoder(m, max_len=1)           # its own cache unused: the pools hold the keys/values
    cache = PagedKVCache(24, c.n_kv_heads, c.head_dim, c.n_layers, block_size=5)
    g = torch.Generator().manual_seed(6)
    seqs = {name: torch.randint(0, 301, (n,), generator=g).tolist() for name, n in (("a", 13), ("b", 7), ("c", 1))}
    paged_prompts(dec, cache, seqs)              # each prompt but its last token
    names = list(seqs)
    step = cache.prepare(names, 1)               # then one batched row per sequence
    pos = step.seq_lens.tolist()
    out = dec.forward_paged([seqs[n][-1] for n in names], pos, list(range(3)), step.block_table, cache.k_pools,
                            cache.v_pools)
    for i, n in enumerate(names):
        with torch.no_grad():
            ref = m.double()(torch.tensor([seqs[n]]))[0, -1]
        m.float()
        torch.testing.assert_close(out[i].double(), ref, atol=2e-5 * float(ref.abs().max()), rtol=0)
    # the Engine on the native step gives the Python engine's tokens
    assert_engines_agree(m, [seqs["a"], seqs["b"], seqs["c"], seqs["a"][:4]], 9)


def assert_engines_agree(m, prompts, new_tokens):
    """The serving Engine on the native step (batched paged steps) gives the Python engine's tokens."""
    from llmforge.generate.serving_engine import Engine

    runs = []
    for native in (True, False):
        eng = Engine(m, num_blocks=40, block_size=4, max_batch=3, native=native)
        assert (eng.native is not None) == native
        rids = [eng.submit(p, new_tokens, SamplingParams(temperature=0)) for p in prompts]
        res = eng.run()
        runs.append([res[r].tokens for r in rids])
    assert runs[0] == runs[1]


def test_paged_step_rejects_bad_tables_and_orders():
    m = _model()
    c = m.cfg
    dec = NativeDecoder(m, max_len=1)
    pools = [torch.zeros(c.n_layers, 4, 2, c.n_kv_heads, c.head_dim) for _ in range(2)]
    table = torch.tensor([[0, 1], [2, -1]], dtype=torch.int32)
    dec.forward_paged([1, 2], [0, 1], [0, 0], table, *pools)
    with pytest.raises(ValueError, match="not a block"):
        dec.forward_paged([1], [2], [1], table, *pools)        # position 2 of seq 1 is in block -1
    with pytest.raises(ValueError, match="outside"):
        dec.forward_paged([1], [4], [0], table, *pools)        # past the table
    with pytest.raises(ValueError, match="increase"):
        dec.forward_paged([1, 2], [1, 1], [0, 0], table, *pools)
    with pytest.raises(ValueError, match="rows"):
        dec.forward_paged([1], [0], [2], table, *pools)
    with pytest.raises(TypeError):
        dec.forward_paged([1], [0], [0], table.long(), *pools)
    with pytest.raises(ValueError, match="k_pools"):
        dec.forward_paged([1], [0], [0], table, pools[0][:, :, :, :1].contiguous(), pools[1])


@pytest.mark.parametrize("kw", [dict(), dict(n_experts=4, moe_top_k=2, attention_bias=True, moe_shared_ffn_dim=96,
                                             moe_norm_topk=False)])
def test_python_prefill_hands_its_cache_to_the_step(kw):
    """prefill() (the Python forward's keys/values loaded into the step's cache) continues exactly
    like a native prefill; generate() (which takes it for long prompts of dense float32 models)
    gives the Python path's greedy tokens."""
    from llmforge.generate.engine import PYTHON_PREFILL_MIN

    m = _model(std=0.2, max_seq_len=PYTHON_PREFILL_MIN + 40, **kw)
    ids = torch.randint(0, 301, (PYTHON_PREFILL_MIN + 5,), generator=torch.Generator().manual_seed(9)).tolist()
    a, b = NativeDecoder(m, max_len=PYTHON_PREFILL_MIN + 20), NativeDecoder(m, max_len=PYTHON_PREFILL_MIN + 20)
    la, lb = a.forward(ids[:-4]), b.prefill(m, ids[:-4])
    assert a.length == b.length == len(ids) - 4
    scale = float(la.abs().max())
    torch.testing.assert_close(lb, la, atol=2e-5 * scale, rtol=0)
    for t in ids[-4:]:
        torch.testing.assert_close(b.forward([t]), a.forward([t]), atol=2e-5 * scale, rtol=0)
    fast = generate(m, [ids], 12, SamplingParams(temperature=0)).tokens
    assert fast == generate(m, [ids], 12, SamplingParams(temperature=0), native=False).tokens


def test_load_cache_checks_its_input():
    m = _model()
    dec = NativeDecoder(m, max_len=8)
    c = m.cfg
    good = torch.randn(c.n_layers, c.n_kv_heads, 5, c.head_dim)
    dec._m.load_cache(good, good.clone())
    assert dec.length == 5
    for k in (torch.randn(c.n_layers, c.n_kv_heads, 9, c.head_dim),            # longer than max_len
              torch.randn(c.n_layers + 1, c.n_kv_heads, 5, c.head_dim),        # layers
              good.double(), good.transpose(1, 2), torch.randn(5)):
        with pytest.raises((ValueError, TypeError)):
            dec._m.load_cache(k, k)
    with pytest.raises(ValueError):
        dec._m.load_cache(good, good[:, :, :4].contiguous())                  # v unlike k
    with pytest.raises(ValueError, match="prompt"):
        dec.prefill(m, [])
