"""The native decode step (generate/native.py, csrc/cpu/decode_model.cpp) on OLMo 2 and OLMo 3 models:
no RMSNorm in front of attention and the FFN (the sublayers read the residual stream), RMSNorms on
their outputs, query / key norms over the whole projection before RoPE, OLMo 3's sliding layers with
their own RoPE. Against the Python forward in float64 (own cache, prefill then single steps; Hugging
Face checkpoints too), the serving engine's Python path (paged batched steps), int4 weights; bad
inputs raise."""
from __future__ import annotations

import copy
import time
import types

import pytest
import torch

from llmforge import _C
from llmforge.generate import native
from llmforge.generate.engine import PYTHON_PREFILL_MIN, generate
from llmforge.generate.native import NativeDecoder, NotSupported, native_decoder
from llmforge.generate.sampling import SamplingParams
from llmforge.model import ModelConfig, Transformer
from llmforge.quant.linear import Int4Linear, swap_linears

VOCAB = 211
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
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _model(kind, seed=0, std=0.2, window=None, **kw):
    """A random model of `kind` (odd sizes; norm scales random, not ones). window: the sliding layers'
    window (default: max_seq_len, where sliding is plain causal attention)."""
    args = dict(vocab_size=VOCAB, dim=40, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=18, ffn_dim=56, max_seq_len=48)
    args.update(KINDS[kind])
    args.update(kw)
    if "layer_types" in args:
        args["sliding_window"] = window or args["max_seq_len"]
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**args)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return m


def _run(dec, ids, split):
    """Prefill ids[:split] (all logits), then one token at a time."""
    a = dec.forward(ids[:split], all_logits=True)
    rest = [dec.forward([t]) for t in ids[split:]]
    return torch.cat([a, torch.stack(rest)]) if rest else a


def _close(got, ref, tol=2e-5):
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref.double(), atol=tol * scale, rtol=0)


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
    m = _model(kind, window=window)
    ids = torch.randint(0, VOCAB, (31,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    _close(_run(NativeDecoder(m, max_len=40), ids.tolist(), 11), ref)
    # the same on one thread, and a whole prompt in one call past the 8-row blocks
    _close(NativeDecoder(m, max_len=40, threads=1).forward(ids.tolist(), all_logits=True), ref)


def test_every_cpu_path_matches():
    """The scalar build and the vector ones."""
    m = _model("olmo3", window=6)
    ids = torch.randint(0, VOCAB, (23,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    best = _C.cpu_isa()
    try:
        for isa in dict.fromkeys(["scalar", "avx2", best]):
            try:
                _C.set_cpu_isa(isa)
            except ValueError:   # a path this CPU lacks
                continue
            _close(_run(NativeDecoder(m, max_len=32), ids.tolist(), 6), ref)
    finally:
        _C.set_cpu_isa(best)


@pytest.mark.parametrize("mtype", ["olmo2", "olmo3"])
def test_hf_checkpoint_matches_python_forward(tmp_path, mtype):
    """Checkpoints transformers wrote load to models the step runs (OLMo 3: windows shorter than the
    sequence, a scaled RoPE on the full layers and another on the sliding ones)."""
    transformers = pytest.importorskip("transformers")
    from llmforge.model import load_hf

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
    m = load_hf(tmp_path, dtype=torch.float32).eval()
    assert m.cfg.hf_model_type() == mtype and not m.cfg.pre_norm and m.cfg.qk_norm_full
    ids = torch.randint(0, VOCAB, (29,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_hf(tmp_path, dtype=torch.float64)(ids[None])[0]
    _close(_run(NativeDecoder(m, max_len=32), ids.tolist(), 9), ref)


def _engine(m, prompts, new_tokens, use_native):
    """Greedy tokens of the serving Engine and the logits of each of its steps."""
    from llmforge.generate.serving_engine import Engine

    eng = Engine(m, num_blocks=40, block_size=4, max_batch=3, native=use_native)
    assert (eng.native is not None) == (use_native is not False)
    steps = []
    emit = eng._emit_all

    def record(reqs, logits):
        steps.append(logits.clone())
        emit(reqs, logits)

    eng._emit_all = record
    rids = [eng.submit(p, new_tokens, SamplingParams(temperature=0)) for p in prompts]
    res = eng.run()
    return [res[r].tokens for r in rids], steps


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_paged_steps_match_float64_and_python_engine(kind, window):
    from llmforge.generate.paged_cache import PagedKVCache

    m = _model(kind, window=window, std=0.3)
    c = m.cfg
    dec = NativeDecoder(m, max_len=1)           # its own cache unused: the pools hold the keys/values
    cache = PagedKVCache(24, c.n_kv_heads, c.head_dim, c.n_layers, block_size=5)
    g = torch.Generator().manual_seed(6)
    seqs = {name: torch.randint(0, VOCAB, (n,), generator=g).tolist() for name, n in (("a", 17), ("b", 8), ("c", 1))}
    for name in seqs:
        cache.add_sequence(name)
    for name, ids in seqs.items():              # each prompt but its last token, 3 rows at a time (crossing blocks)
        for i in range(0, len(ids) - 1, 3):
            part = ids[i:min(i + 3, len(ids) - 1)]
            step = cache.prepare([name], len(part))
            dec.forward_paged(part, list(range(i, i + len(part))), [0] * len(part), step.block_table,
                              cache.k_pools, cache.v_pools)
            cache.commit(step)
    names = list(seqs)
    step = cache.prepare(names, 1)              # then one batched row per sequence
    out = dec.forward_paged([seqs[n][-1] for n in names], step.seq_lens.tolist(), list(range(3)), step.block_table,
                            cache.k_pools, cache.v_pools)
    with torch.no_grad():
        ref = [copy.deepcopy(m).double()(torch.tensor([seqs[n]]))[0, -1] for n in names]
    for i in range(3):
        _close(out[i], ref[i])
    # the Engine on the native step (its default for these models): the Python engine's tokens, and
    # its logits step by step
    prompts = [seqs["a"], seqs["b"], seqs["c"], seqs["a"][:4]]
    fast, fast_logits = _engine(m, prompts, 9, None)
    slow, slow_logits = _engine(m, prompts, 9, False)
    assert fast == slow
    assert len(fast_logits) == len(slow_logits)
    for a, b in zip(fast_logits, slow_logits):
        _close(a, b, 1e-4)


def _int4(m, act_round=None, targets=PROJ):
    swap_linears(m, Int4Linear, targets=targets, group_size=32, symmetric=False)
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = act_round
    return m


@pytest.mark.parametrize("kind", ["olmo2", "olmo3", "olmo2_moe"])
def test_int4_model_matches_python_forward(kind):
    """Int4Linear projections (and output head): the native step against the Python int4 forward and
    a float64 copy with the dequantised weights. The sublayers read the residual stream itself, whose
    int4 form (block sums; Q8_0 codes) the step prepares as it does for normed rows. head_dim 32:
    the attention items prepare the o projection's input blocks themselves."""
    shared = {"moe_shared_ffn_dim": 64} if kind == "olmo2_moe" else {}
    m = _int4(_model(kind, dim=64, head_dim=32, ffn_dim=96, std=0.1, window=9, **shared), targets=PROJ + ("lm_head",))
    ids = torch.randint(0, VOCAB, (26,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        python = m(ids[None])[0]
        ref = copy.deepcopy(m)
        for mod in list(ref.modules()):
            for name, ch in list(mod.named_children()):
                if isinstance(ch, Int4Linear):
                    lin = torch.nn.Linear(ch.in_features, ch.out_features, bias=False)
                    lin.weight.data = ch.dequantized_weight()
                    setattr(mod, name, lin)
        ref = ref.double()(ids[None])[0]
    got = _run(NativeDecoder(m, max_len=32), ids.tolist(), 8)
    _close(got, ref)
    _close(got, python, 1e-4)
    # Q8_0-rounded activations (a Q4_0 GGUF's arithmetic): rounding decisions can flip between two
    # float orders, so only close to the Python int4 path, which rounds the same way
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = "q8_0"
    with torch.no_grad():
        python = m(ids[None])[0]
    got = _run(NativeDecoder(m, max_len=32), ids.tolist(), 8)
    err = (got - python).abs().amax(-1) / python.abs().max()
    assert float(err.max()) < 0.02 and float(err.min()) < 1e-5, err


@pytest.mark.parametrize("kind", ["olmo2", "olmo3"])
def test_python_prefill_hands_its_cache_to_the_step(kind):
    """prefill() (the Python forward's keys/values loaded into the step's cache) continues like a
    native prefill; generate() (native, Python prefill for long prompts) gives the Python path's
    greedy tokens."""
    n = PYTHON_PREFILL_MIN + 40
    m = _model(kind, std=0.3, max_seq_len=n, window=11)
    ids = torch.randint(0, VOCAB, (PYTHON_PREFILL_MIN + 5,), generator=torch.Generator().manual_seed(9)).tolist()
    a, b = NativeDecoder(m, max_len=n - 20), NativeDecoder(m, max_len=n - 20)
    la, lb = a.forward(ids[:-4]), b.prefill(m, ids[:-4])
    assert a.length == b.length == len(ids) - 4
    _close(lb, la)
    for t in ids[-4:]:
        _close(b.forward([t]), a.forward([t]))
    assert native_decoder(m, n) is not None
    fast = generate(m, [ids], 12, SamplingParams(temperature=0)).tokens
    assert fast == generate(m, [ids], 12, SamplingParams(temperature=0), native=False).tokens


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


def test_decode_speed_against_python_engine(capsys):
    """Not a benchmark: one tiny OLMo 3, a ms/token figure for each path (printed with -s)."""
    m = _model("olmo3", window=16, dim=128, n_heads=4, head_dim=32, ffn_dim=256, n_layers=4, max_seq_len=96,
               layer_types=["sliding_attention"] * 3 + ["full_attention"])
    ids = torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(5)).tolist()
    res = {}
    for use in (True, False):
        generate(m, [ids], 4, SamplingParams(temperature=0), native=use)     # warm-up
        t0 = time.perf_counter()
        out = generate(m, [ids], 64, SamplingParams(temperature=0), native=use)
        res[use] = ((time.perf_counter() - t0) / 64 * 1e3, out.tokens)
    assert res[True][1] == res[False][1]
    with capsys.disabled():
        print(f"\ntiny OLMo 3 decode: native {res[True][0]:.3f} ms/token, Python {res[False][0]:.3f} ms/token")
