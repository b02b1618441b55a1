"""Checks of the native decode step shared by the per-family test files (test_native_gemma.py,
test_native_olmo.py): each builds random models of its family and runs them through these, against
the Python forward in float64 (own cache: prefill then single steps; every CPU build), the serving
engine's Python path (paged batched steps), int4 weights, and the Python prefill hand-over."""
from __future__ import annotations

import copy

import torch

from llmforge import _C
from llmforge.generate.engine import PYTHON_PREFILL_MIN, generate
from llmforge.generate.native import NativeDecoder, native_decoder
from llmforge.generate.sampling import SamplingParams
from llmforge.model import ModelConfig, Transformer
from llmforge.quant.linear import Int4Linear, swap_linears

VOCAB = 211
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_model(family: dict, seed=0, std=0.2, window=None, **kw) -> Transformer:
    """A random model with the config fields `family` (odd sizes; norm scales random, not ones).
    window: the sliding layers' window (default: max_seq_len, where sliding is plain causal attention)."""
    args = dict(vocab_size=VOCAB, dim=40, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=18, ffn_dim=56, max_seq_len=48)
    args.update(family)
    args.update(kw)
    if "layer_types" in args:
        args["sliding_window"] = window or args["max_seq_len"]
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**args)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return m


def run_steps(dec, ids, split):
    """Prefill ids[:split] (all logits), then one token at a time."""
    a = dec.forward(ids[:split], all_logits=True)
    rest = [dec.forward([t]) for t in ids[split:]]
    return torch.cat([a, torch.stack(rest)]) if rest else a


def close(got, ref, tol=2e-5):
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref.double(), atol=tol * scale, rtol=0)


def check_float_model(m):
    """Prefill then single steps, and on one thread a whole prompt in one call past the 8-row blocks."""
    ids = torch.randint(0, VOCAB, (31,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.double()(ids[None])[0]
    m.float()
    if m.cfg.final_softcap:
        assert float(ref.abs().max()) < m.cfg.final_softcap
    close(run_steps(NativeDecoder(m, max_len=40), ids.tolist(), 11), ref)
    close(NativeDecoder(m, max_len=40, threads=1).forward(ids.tolist(), all_logits=True), ref)


def check_every_cpu_path(m):
    """The scalar build and the vector ones this CPU has."""
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
            close(run_steps(NativeDecoder(m, max_len=32), ids.tolist(), 6), ref)
    finally:
        _C.set_cpu_isa(best)


def _engine(m, prompts, new_tokens, use_native):
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


def paged_prompts(dec, cache, seqs: dict) -> None:
    """Write each sequence of seqs ({name: ids}) but its last token into cache's pools through
    dec.forward_paged, 3 rows of one sequence at a time (crossing block boundaries mid-step)."""
    for name in seqs:
        cache.add_sequence(name)
    for name, ids in seqs.items():
        for i in range(0, len(ids) - 1, 3):
            part = ids[i:min(i + 3, len(ids) - 1)]
            step = cache.prepare([name], len(part))
            dec.forward_paged(part, list(range(i, i + len(part))), [0] * len(part), step.block_table,
                              cache.k_pools, cache.v_pools)
            cache.commit(step)


def check_checkpoint(path, n: int = 29, split: int = 9, low: int = 0) -> Transformer:
    """A Hugging Face checkpoint in path, loaded in float32, runs natively (a prompt of `split` tokens,
    then single steps to n) to the float64 load's logits; returns the float32 model."""
    from llmforge.model import load_hf

    m = load_hf(path, dtype=torch.float32).eval()
    ids = torch.randint(low, m.cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_hf(path, dtype=torch.float64)(ids[None])[0]
    close(run_steps(NativeDecoder(m, max_len=n + 3), ids.tolist(), split), ref)
    return m


def check_paged(m):
    """forward_paged over a paged cache (prompts 3 rows at a time, crossing blocks, then one batched
    row per sequence) against float64, then the Engine on the native step (its default) against the
    Python engine: the same tokens and logits step by step."""
    from llmforge.generate.paged_cache import PagedKVCache

    c = m.cfg
    dec = NativeDecoder(m, max_len=1)           # its own cache unused: the pools hold the keys/values
    cache = PagedKVCache(24, c.n_kv_heads, c.head_dim, c.n_layers, block_size=5)
    g = torch.Generator().manual_seed(6)
    seqs = {name: torch.randint(0, VOCAB, (n,), generator=g).tolist() for name, n in (("a", 17), ("b", 8), ("c", 1))}
    paged_prompts(dec, cache, seqs)
    names = list(seqs)
    step = cache.prepare(names, 1)
    out = dec.forward_paged([seqs[n][-1] for n in names], step.seq_lens.tolist(), list(range(3)), step.block_table,
                            cache.k_pools, cache.v_pools)
    with torch.no_grad():
        ref = [copy.deepcopy(m).double()(torch.tensor([seqs[n]]))[0, -1] for n in names]
    for i in range(3):
        close(out[i], ref[i])
    prompts = [seqs["a"], seqs["b"], seqs["c"], seqs["a"][:4]]
    fast, fast_logits = _engine(m, prompts, 9, None)
    slow, slow_logits = _engine(m, prompts, 9, False)
    assert fast == slow
    assert len(fast_logits) == len(slow_logits)
    for a, b in zip(fast_logits, slow_logits):
        close(a, b, 1e-4)


def to_int4(m, act_round=None, targets=PROJ):
    swap_linears(m, Int4Linear, targets=targets, group_size=32, symmetric=False)
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = act_round
    return m


def check_int4(m):
    """Int4Linear projections and output head (to_int4 first): the step against the Python int4 forward
    and a float64 copy with the dequantised weights; then with Q8_0-rounded activations (a Q4_0
    GGUF's arithmetic), where rounding decisions can flip between two float orders, so only close to
    the Python int4 path, which rounds the same way."""
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
    got = run_steps(NativeDecoder(m, max_len=32), ids.tolist(), 8)
    close(got, ref)
    close(got, python, 1e-4)
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = "q8_0"
    with torch.no_grad():
        python = m(ids[None])[0]
    got = run_steps(NativeDecoder(m, max_len=32), ids.tolist(), 8)
    err = (got - python).abs().amax(-1) / python.abs().max()
    assert float(err.max()) < 0.02 and float(err.min()) < 1e-5, err


def check_python_prefill(m):
    """prefill() (the Python forward's keys/values loaded into the step's cache) continues like a
    native prefill; generate() (native, Python prefill for long prompts) gives the Python path's
    greedy tokens. m.cfg.max_seq_len must be at least PYTHON_PREFILL_MIN + 40."""
    n = PYTHON_PREFILL_MIN + 40
    ids = torch.randint(0, VOCAB, (PYTHON_PREFILL_MIN + 5,), generator=torch.Generator().manual_seed(9)).tolist()
    a, b = NativeDecoder(m, max_len=n - 20), NativeDecoder(m, max_len=n - 20)
    la, lb = a.forward(ids[:-4]), b.prefill(m, ids[:-4])
    assert a.length == b.length == len(ids) - 4
    close(lb, la)
    for t in ids[-4:]:
        close(b.forward([t]), a.forward([t]))
    assert native_decoder(m, n) is not None
    fast = generate(m, [ids], 12, SamplingParams(temperature=0)).tokens
    assert fast == generate(m, [ids], 12, SamplingParams(temperature=0), native=False).tokens
