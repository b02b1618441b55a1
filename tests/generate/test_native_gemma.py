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
from llmforge.generate.engine import PYTHON_PREFILL_MIN, generate
from llmforge.generate.native import NativeDecoder, NotSupported, native_decoder
from llmforge.generate.sampling import SamplingParams
from llmforge.model import ModelConfig, Transformer
from llmforge.quant.linear import Int4Linear, swap_linears

VOCAB = 211
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


CASES = [("gemma", None), ("gemma2", None), ("gemma3", None), ("gemma2_moe", None), ("gemma2", 7), ("gemma3", 5)]
IDS = [f"{k}-window{w}" if w else k for k, w in CASES]


@pytest.mark.parametrize("kind,window", CASES, ids=IDS)
def test_float_model_matches_float64_forward(kind, window):
    m = _model(kind, window=window)
    ids = torch.randint(0, VOCAB, (31,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    if m.cfg.final_softcap:
        assert float(ref.abs().max()) < m.cfg.final_softcap
    _close(_run(NativeDecoder(m, max_len=40), ids.tolist(), 11), ref)
    # the same steps on one thread, and a whole prompt in one call past the 8-row blocks
    _close(NativeDecoder(m, max_len=40, threads=1).forward(ids.tolist(), all_logits=True), ref)


@pytest.mark.parametrize("kind,window", [("gemma2", 7), ("gemma3", None)])
def test_every_cpu_path_matches(kind, window):
    """The scalar build (std::tanh, scalar GeGLU) and the vector one (polynomial tanh, vector GeGLU)."""
    m = _model(kind, window=window)
    ids = torch.randint(0, VOCAB, (27,), generator=torch.Generator().manual_seed(4))
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
            _close(_run(NativeDecoder(m, max_len=40), ids.tolist(), 6), ref)
    finally:
        _C.set_cpu_isa(best)


@pytest.mark.parametrize("mtype", ["gemma", "gemma2", "gemma3_text"])
def test_hf_checkpoint_matches_python_forward(tmp_path, mtype):
    """Checkpoints transformers wrote (norms stored as w for 1 + w) load to models the step runs."""
    transformers = pytest.importorskip("transformers")
    from llmforge.model import load_hf

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
    m = load_hf(tmp_path, dtype=torch.float32).eval()
    assert m.cfg.hf_model_type() == mtype
    ids = torch.randint(0, VOCAB, (29,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_hf(tmp_path, dtype=torch.float64)(ids[None])[0]
    _close(_run(NativeDecoder(m, max_len=32), ids.tolist(), 9), ref)


def _engine(m, prompts, new_tokens, use_native):
    """Greedy tokens of the serving Engine and the logits of each of its steps."""
    from llmforge.generate.serving_engine import Engine

    eng = Engine(m, num_blocks=40, block_size=4, max_batch=3, native=use_native)
    assert (eng.native is not None) == use_native
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
    # the Engine on the native step: the Python engine's tokens, and its logits step by step
    prompts = [seqs["a"], seqs["b"], seqs["c"], seqs["a"][:4]]
    fast, fast_logits = _engine(m, prompts, 9, True)
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


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3"])
def test_int4_model_matches_python_forward(kind):
    """Int4Linear projections (and output head): the native step against the Python int4 forward
    and a float64 copy with the dequantised weights. head_dim 32: the attention items prepare the
    o projection's int4 input blocks themselves (18 above: one thread after them)."""
    m = _int4(_model(kind, dim=64, head_dim=32, ffn_dim=96, std=0.1, tie_embeddings=False),
              targets=PROJ + ("lm_head",))
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


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_python_prefill_hands_its_cache_to_the_step(kind):
    """prefill() (the Python forward's keys/values loaded into the step's cache) continues like a
    native prefill; generate() (native, Python prefill for long prompts) gives the Python path's
    greedy tokens."""
    n = PYTHON_PREFILL_MIN + 40
    m = _model(kind, std=0.3, max_seq_len=n)
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
