"""Generation throughput: continuous batching of 16 requests vs the same requests one by one
(the cases timed a run each in turn, so that drifts of the machine reach all of them alike).

    python -m bench engine [--record]

~11M-parameter model (random weights: throughput does not depend on them), prompts of
16-48 tokens, 64 new tokens each, greedy; tokens/s counts generated tokens. The engine runs on the
native decode step (one C++ call per step for the whole batch, over the paged pools); the Python
path (torch ops + paged-KV ops, Engine(native=False)) is timed too. The same model with int4
projections multiplying Q8_0-rounded activations (as a Q4_0 GGUF runs) shows the native step's
int8 dot-product path: at batch 1 it halves the weight bytes, batched it is compute-bound.
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fns_interleaved
from llmforge.generate.sampling import SamplingParams
from llmforge.generate.serving_engine import Engine
from llmforge.model import ModelConfig, Transformer


def model_11m() -> Transformer:
    """The ~11M-parameter float32 model of the generation benches (random weights, seed 0)."""
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=4096, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                                   tie_embeddings=True, max_seq_len=256)).eval()


PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def model_11m_int4() -> Transformer:
    """model_11m with its projections int4 (group 32, symmetric) multiplying Q8_0-rounded
    activations, as a Q4_0 GGUF runs: the decode step's int8 dot-product path."""
    from llmforge.quant.linear import Int4Linear, swap_linears

    m = model_11m()
    swap_linears(m, Int4Linear, targets=PROJ, group_size=32, symmetric=True)
    for mod in m.modules():
        if isinstance(mod, Int4Linear):
            mod.act_round = "q8_0"
    return m


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    rows = _run(model_11m(), "11M model", quick)
    rows += _run(model_11m_int4(), "11M model, int4 (Q4_0-style) projections", quick, python_path=False)
    return finish(rows, baseline="one by one")


def _run(model, label, quick, python_path=True):
    g = torch.Generator().manual_seed(0)
    n_req, new = 16, 32 if quick else 64
    prompts = [torch.randint(0, 4096, (int(torch.randint(16, 49, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n_req)]
    greedy = SamplingParams(temperature=0)
    rows = []
    cases = (("one by one", 1, True), ("continuous batching (max 16)", 16, True),
             ("one by one, Python path", 1, False), ("continuous batching (max 16), Python path", 16, False))
    cases = cases[:2] if quick or not python_path else cases

    def runner(max_batch, native):
        def go():
            eng = Engine(model, num_blocks=512, block_size=16, max_batch=max_batch, native=native)
            for p in prompts:
                eng.submit(p, new, greedy)
            eng.run()
        return go

    # one run of each case in turn: the VM's speed drifts, and the ratio must see the same drift
    times = time_fns_interleaved([runner(mb, nat) for _, mb, nat in cases], warmup=1, iters=3 if quick else 5)
    for (name, _, _), t in zip(cases, times):
        rows.append(row(f"{n_req} requests x {new} new tokens, {label}", name, t,
                        tokens_per_s=f"{n_req * new / (t[0] * 1e-3):,.0f}"))
    return rows
