"""The quant ladder: every quantiser applied to (a copy of) one model, judged on held-out text.

    res = quant_ladder(model, tokenizer, calib_batches, heldout_batches, out_dir="runs/ladder")
    res["rows"]       # one dict per method: ppl, kl_per_token, top1_agreement, sqnr_mean_db, ...
    # writes out_dir/quant_ladder.{md,png,json}

Batches are LongTensors (B, T). Each method quantises its own deep copy; the caller's model is
never touched. Metrics, all against the float model on the held-out batches:
- ppl: perplexity of the next token; kl_per_token: KL(fp || q) of the next-token
  distribution, averaged over tokens; top1_agreement: share of tokens whose argmax agrees.
- sqnr_mean_db / sqnr_min_db: SQNR of each transformer block's output (the residual stream
  after block i, quantisation error accumulated up to there), mean and worst over blocks.
- bits_per_weight: stored bits per weight of the block linears, scales and zeros included
  (fp16 scale + `bits`-bit zero per group for RTN/GPTQ/AWQ, fp32 per-row scale for int8,
  the GGUF block size for GGUF types); model_bytes: the whole model as stored (embeddings
  and norms fp32 except for GGUF, where embeddings are quantised as llama.cpp stores them).

Methods (names for `methods=`): fp32, int8, int8_zp, w8a8, w8a8_smoothquant, int4_g64,
int4_g128, int3_g128, gptq4_g128, awq4_g128, gptq3_g128, gguf_q8_0, gguf_q4_0. Weight-only
methods run as dequantised weights in fp32 linears (the same numbers the int4/int8 kernels
compute with); int8 runs on Int8Linear and w8a8* on W8A8Linear (per-token int8 activations at
run time). Any `gguf_<type>` runs export_gguf(qtype=<type>) then import_gguf, so GGUF types
added to the exporter plug in by name. Add others with @register("name").
Group sizes larger than a layer's width are clipped to gcd(group, widths).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from typing import Callable

import torch
from torch import nn

from .quality import compare_models

DEFAULT_METHODS = ("fp32", "int8", "int8_zp", "w8a8", "w8a8_smoothquant", "int4_g64", "int4_g128", "int3_g128",
                   "gptq4_g128", "awq4_g128", "gptq3_g128", "gguf_q8_0", "gguf_q4_0")

METHODS: dict[str, Callable] = {}


def register(name: str):
    """Add a method: fn(model_copy, ctx) -> (quantised model, {"bits_per_weight", "model_bytes"})."""
    def deco(fn):
        METHODS[name] = fn
        return fn
    return deco


def _linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")
            and not n.endswith((".router", ".shared_expert_gate"))]


def _quant_weights(model) -> int:
    return sum(m.weight.numel() for _, m in _linears(model))


def _fp_bytes(model, exclude_linears: bool) -> int:
    skip = {n + ".weight" for n, _ in _linears(model)} if exclude_linears else set()
    return sum(p.numel() * 4 for n, p in model.state_dict().items() if n not in skip)


def _group(model, group: int) -> int:
    g = group
    for _, m in _linears(model):
        g = math.gcd(g, m.in_features)
    return g


def _weight_only(model, bits: int, group: int, meta_bits_per_group: float):
    """bits_per_weight / model_bytes for a weight-only format over the block linears."""
    n = _quant_weights(model)
    bpw = bits + meta_bits_per_group / group
    return {"bits_per_weight": bpw, "model_bytes": int(_fp_bytes(model, True) + n * bpw / 8)}


@register("fp32")
def _fp32(model, ctx):
    return model, {"bits_per_weight": 32.0, "model_bytes": _fp_bytes(model, False)}


@register("int8")
def _int8(model, ctx):
    from .linear import Int8Linear, swap_linears

    info = _w8a8_info(model)  # same storage: int8 codes + fp32 scale per output row
    swap_linears(model.model.layers, Int8Linear, targets=None)
    return model, info


def _rtn_model(model, bits, group, symmetric=False):
    from .rtn import rtn

    for _, m in _linears(model):
        g = group if group > 0 else m.in_features
        m.weight.data.copy_(rtn(m.weight.data, bits, g, symmetric))


@register("int8_zp")
def _int8_zp(model, ctx):
    """int8 with a zero point: asymmetric per output channel (min/max), RTN."""
    n = _quant_weights(model)
    meta = sum(m.out_features * (16 + 8) for _, m in _linears(model))
    info = {"bits_per_weight": 8 + meta / n, "model_bytes": int(_fp_bytes(model, True) + n + meta / 8)}
    _rtn_model(model, 8, 0)
    return model, info


def _w8a8_info(model):
    n = _quant_weights(model)
    meta = sum(m.out_features * 32 for _, m in _linears(model))
    return {"bits_per_weight": 8 + meta / n, "model_bytes": int(_fp_bytes(model, True) + n + meta / 8)}


@register("w8a8")
def _w8a8(model, ctx):
    from .smoothquant import quantize_w8a8

    info = _w8a8_info(model)
    quantize_w8a8(model)
    return model, info


@register("w8a8_smoothquant")
def _w8a8_sq(model, ctx):
    from .smoothquant import smoothquant

    info = _w8a8_info(model)
    smoothquant(model, ctx["calib"], alpha=ctx.get("smoothquant_alpha", 0.5))
    return model, info


def _weight_only_method(bits, group, quantize):
    """A weight-only method at `bits` / `group`: quantize(model, ctx, bits, g) edits the weights in place."""
    def fn(model, ctx):
        g = _group(model, group)
        info = _weight_only(model, bits, g, 16 + bits)
        quantize(model, ctx, bits, g)
        return model, info
    return fn


def _rtn(model, ctx, bits, g):
    _rtn_model(model, bits, g)


def _gptq(model, ctx, bits, g):
    from .gptq import quantize_model_gptq

    quantize_model_gptq(model, ctx["calib"], bits, g, **ctx.get("gptq", {}))


def _awq(model, ctx, bits, g):
    from .awq import quantize_model_awq

    quantize_model_awq(model, ctx["calib"], bits, g, **ctx.get("awq", {}))


for _b, _g in ((4, 64), (4, 128), (3, 128)):
    register(f"int{_b}_g{_g}")(_weight_only_method(_b, _g, _rtn))
for _b in (4, 3):
    register(f"gptq{_b}_g128")(_weight_only_method(_b, 128, _gptq))
    register(f"awq{_b}_g128")(_weight_only_method(_b, 128, _awq))


class _NoVocab:
    """Stands in for a tokenizer when the ladder runs without one (GGUF round trip only)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def gguf_metadata(self) -> dict:
        return {"tokenizer.ggml.model": "no_vocab"}


def _gguf(qtype: str):
    def fn(model, ctx):
        import gguf

        from ..export.gguf_export import export_gguf, import_gguf

        tok = ctx.get("tokenizer") or _NoVocab(model.cfg.vocab_size)
        path = os.path.join(ctx["tmp"], f"model-{qtype}.gguf")
        export_gguf(model, tok, path, qtype=qtype)
        r = gguf.GGUFReader(path)
        lin = [t for t in r.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
        bpw = 8 * sum(int(t.n_bytes) for t in lin) / sum(int(t.n_elements) for t in lin)
        info = {"bits_per_weight": bpw, "model_bytes": os.path.getsize(path)}
        del r
        q, _ = import_gguf(path)
        os.remove(path)
        return q, info
    return fn


def method(name: str) -> Callable:
    if name in METHODS:
        return METHODS[name]
    if name.startswith("gguf_"):
        return _gguf(name[len("gguf_"):])
    raise ValueError(f"unknown quantisation method {name!r}; known: {sorted(METHODS)} and gguf_<type>")


@torch.no_grad()
def block_outputs(model, batches) -> list[torch.Tensor]:
    """The residual stream after each transformer block, all batches concatenated (float64)."""
    outs = [[] for _ in model.model.layers]
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: outs[k].append(o.detach().double().reshape(-1, o.shape[-1])))
             for k, blk in enumerate(model.model.layers)]
    try:
        for t in batches:
            model(t)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def _sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    noise = float((ref - x).pow(2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float(ref.pow(2).sum()) / noise)


def _check_batches(batches, what, vocab):
    batches = list(batches) if batches is not None else []
    if not batches:
        raise ValueError(f"quant_ladder needs {what} batches")
    for t in batches:
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{what} batches must be (batch, seq) int64 token tensors")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
            raise ValueError(f"{what} batches hold token ids outside [0, {vocab})")
    return batches


def quant_ladder(model, tokenizer, calib_batches, heldout_batches, methods=DEFAULT_METHODS,
                 out_dir: str = ".", title: str = "Quantisation ladder", notes: str = "", options: dict | None = None,
                 progress: bool = False) -> dict:
    """Evaluate each method (see the module docstring) on a copy of `model`; write
    out_dir/quant_ladder.md, .png and .json. options: {"smoothquant_alpha": 0.5,
    "gptq": {act_order, percdamp}, "awq": {grid}} passed to the quantisers."""
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty")
    fns = {m: method(m) for m in methods}  # unknown names fail before any work
    vocab = model.cfg.vocab_size
    calib = _check_batches(calib_batches, "calibration", vocab)
    held = _check_batches(heldout_batches, "held-out", vocab)
    fp = copy.deepcopy(model).float().eval()
    ref_blocks = block_outputs(fp, held)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"calib": calib, "tokenizer": tokenizer, "tmp": tmp, **(options or {})}
        for name in methods:
            t0 = time.perf_counter()
            row = {"method": name}
            try:
                q, info = fns[name](copy.deepcopy(fp), ctx)
                q.eval()
                row.update(info)
                row.update(compare_models(fp, q, held))
                s = [_sqnr(r, x) for r, x in zip(ref_blocks, block_outputs(q, held))]
                row["sqnr_db"] = s
                row["sqnr_mean_db"] = sum(s) / len(s)
                row["sqnr_min_db"] = min(s)
            except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if progress:
                print(f"  {name:>18}: " + (row["error"] if "error" in row else
                      f"ppl {row['ppl']:.4f}  KL {row['kl_per_token']:.5f}  top-1 {row['top1_agreement']:.4f}"
                      f"  ({row['seconds']:.1f} s)"), flush=True)
    ok = [r for r in rows if "error" not in r]
    ppl_fp = ok[0]["ppl_fp"] if ok else float("nan")
    for r in ok:
        r["ppl_delta_pct"] = 100 * (r["ppl"] / r["ppl_fp"] - 1)
    result = {"title": title, "notes": notes, "ppl_fp": ppl_fp, "heldout_tokens": ok[0]["tokens"] if ok else 0,
              "calib_tokens": int(sum(t.numel() for t in calib)), "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"quant_ladder.{k}") for k in ("md", "png", "json")}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(paths["md"], "w") as f:
        f.write(markdown(result))
    plot(result, paths["png"])
    result["paths"] = paths
    return result


def _f(v, spec):
    return "inf" if isinstance(v, float) and math.isinf(v) else format(v, spec)


def markdown(result: dict) -> str:
    lines = [f"# {result['title']}", ""]
    if result.get("notes"):
        lines += [result["notes"].rstrip(), ""]
    lines += [f"Held-out: {result['heldout_tokens']} next-token predictions; calibration: {result['calib_tokens']} "
              f"tokens. fp32 perplexity {result['ppl_fp']:.4f}. KL = KL(fp || quantised) per token; SQNR of each "
              "block's output (residual stream), mean and worst block; bits/weight over the block linears, "
              "scales included.", "",
              "| method | bits/weight | model MB | ppl | Δppl % | KL/token | top-1 agree | SQNR mean dB | SQNR min dB | s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | — | — | — | — | — | — | — | — | {r['seconds']:.1f} |")
            continue
        lines.append(f"| {r['method']} | {r['bits_per_weight']:.2f} | {r['model_bytes'] / 1e6:.2f} | {r['ppl']:.4f} | "
                     f"{r['ppl_delta_pct']:+.2f} | {r['kl_per_token']:.2e} | {r['top1_agreement']:.4f} | "
                     f"{_f(r['sqnr_mean_db'], '.1f')} | {_f(r['sqnr_min_db'], '.1f')} | {r['seconds']:.1f} |")
    errs = [r for r in result["rows"] if "error" in r]
    if errs:
        lines += [""] + [f"- {r['method']} failed: {r['error']}" for r in errs]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["rows"] if "error" not in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in ok:
        x = r["bits_per_weight"]
        a1.scatter(x, r["ppl"], s=18)
        a1.annotate(r["method"], (x, r["ppl"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        if r["kl_per_token"] > 0:
            a2.scatter(x, r["kl_per_token"], s=18)
            a2.annotate(r["method"], (x, r["kl_per_token"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    a1.axhline(result["ppl_fp"], color="gray", lw=0.8, ls="--", label="fp32")
    a1.set(xlabel="bits per weight (block linears)", ylabel="held-out perplexity", xscale="log")
    a1.legend(fontsize=8)
    a2.set(xlabel="bits per weight (block linears)", ylabel="KL(fp || q) per token", xscale="log", yscale="log")
    ticks = [t for t in (2, 3, 4, 5, 6, 8, 12, 16, 32) if any(abs(r["bits_per_weight"] / t - 1) < 0.6 for r in ok)]
    for a in (a1, a2):
        a.grid(alpha=0.3, which="both")
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(result["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
