"""The pipeline's final report: runs/<name>/report.md (+ report.json and training_curves.png).

Every figure in it is read from the stages' results (runs/<name>/<stage>/stage.json); nothing is
recomputed here, so the report of a cached re-run is the same as the first one's.
"""
from __future__ import annotations

import json
import os
import time


def _f(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def _rel(root, path):
    return os.path.relpath(path, root) if path and os.path.exists(path) else None


def _embedded(md: str) -> list[str]:
    """A stage's own Markdown report as lines of this one: its title dropped, its sections one level down."""
    if not os.path.exists(md):
        return []
    body = open(md, encoding="utf-8").read().strip().split("\n")
    if body and body[0].startswith("# "):
        body = body[1:]
    while body and not body[0].strip():
        body = body[1:]
    return [""] + ["#" + x if x.startswith("## ") else x for x in body]


def training_curves(root: str) -> str | None:
    """One PNG with the loss curves of pretraining, SFT and DPO side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for stage, keys in (("pretrain", ("loss", "eval_loss")), ("sft", ("loss", "eval_loss")),
                        ("dpo", ("loss", "accuracy"))):
        path = os.path.join(root, stage, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        rows = [json.loads(line) for line in open(path) if line.strip()]
        panels.append((stage, keys, rows))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (stage, keys, rows) in zip(axes[0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r and r[k] is not None]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if k != "loss" else None)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(root, "training_curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(root: str, recipe: dict, results: dict, timings: dict, total_s: float) -> str:
    L = [f"# llmforge pipeline report: {recipe.get('name', 'pipeline')}", "",
         f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}; this run took {total_s:.0f} s "
         f"(stages run now: {sum(t['seconds'] for t in timings.values() if not t['cached']):.0f} s).", "",
         "| stage | seconds | cached |", "|---|---:|---|"]
    for name, t in timings.items():
        L.append(f"| {name} | {t['seconds']:.1f} | {'yes' if t['cached'] else 'no'} |")
    curves = training_curves(root)
    if curves:
        L += ["", f"![training curves]({_rel(root, curves)})"]

    d = results.get("data")
    if d:
        L += ["", "## Data", "",
              f"{d['raw_documents']} raw documents ({d['raw_chars']:,} characters); cleaning kept "
              f"{d['clean']['kept']} (dropped: {d['clean']['dropped'] or 'none'}; PII scrubbed: {d['clean']['pii'] or 'none'}); "
              f"{d['exact_duplicates_removed']} exact and {d['near_duplicates_removed']} near duplicates removed; "
              f"decontamination against the eval sets: {d['decontamination']}. "
              f"Train {d['train_documents']} documents ({d['train_chars']:,} chars), held out {d['heldout_documents']} "
              f"({d['heldout_chars']:,} chars)."]
    t = results.get("tokenizer")
    if t:
        L += ["", "## Tokenizer", "",
              f"Byte-level BPE, vocabulary {t['vocab_size']}, trained in {t['train_s']} s; "
              f"{t['heldout_bytes_per_token']} held-out bytes per token; exact round trip: {t['roundtrip_ok']}."]
    p = results.get("pretrain")
    if p:
        h = p.get("heldout", {})
        L += ["", "## Pretraining", "",
              f"{p['params']:,} parameters, {p['steps']} steps, {p['train_tokens']:,} tokens in {p['train_s']} s. "
              f"Held-out: **{_f(h.get('bits_per_byte'))} bits per byte** ({_f(h.get('nats_per_token'))} nats/token)."]
    s = results.get("sft")
    if s:
        L += ["", "## SFT (LoRA, chitchat conversations)", "",
              f"{s.get('step')} steps; held-out assistant-token loss {_f(s.get('eval_loss_before'))} -> "
              f"**{_f(s.get('eval_loss'))}**."]
    a = results.get("dpo")
    if a and a.get("before"):
        b, af = a["before"], a["after"]
        L += ["", "## DPO (cached reference log-probs)", "",
              "Implicit reward r = beta * (log pi - log pi_ref) of each held-out reply; before training the "
              "policy is the reference, so every r is 0 and the accuracy (share with r(chosen) > r(rejected)) is 0.", "",
              "| held-out | before | after |", "|---|---:|---:|",
              f"| preference accuracy | {_f(b['accuracy'])} | **{_f(af['accuracy'])}** |",
              f"| reward margin | {_f(b['reward_margin'])} | **{_f(af['reward_margin'])}** |"]
    e = results.get("eval")
    if e:
        L += ["", "## Evaluation (final model)"]
        L += _embedded(os.path.join(root, "eval", "eval.md"))
    q = results.get("quantize")
    if q:
        L += ["", "## Quantization"]
        L += _embedded(os.path.join(root, "quantize", "quant_ladder.md"))
        png = os.path.join(root, "quantize", "quant_ladder.png")
        if os.path.exists(png):
            L += ["", f"![quant ladder]({_rel(root, png)})"]
    x = results.get("export")
    if x:
        L += ["", "## GGUF export, verified", "",
              "| type | MiB | KL / token (reload) | top-1 | tokenizer | llama.cpp tokens | llama.cpp max |logit diff| | llama.cpp top-1 |",
              "|---|---:|---:|---:|---|---|---:|---:|"]
        for qt, r in x.items():
            v, lc = r["verify"], r.get("llama_cpp") or {}
            L.append(f"| {qt} | {r['bytes'] / 2**20:.2f} | {_f(v['kl_per_token'], 6)} | {_f(v['top1_agreement'])} | "
                     f"{v.get('tokenizer_identical', '-')} | {lc.get('tokenization_identical', 'not installed')} | "
                     f"{_f(lc.get('max_abs_logit_diff'), 6)} | {_f(lc.get('top1_agreement'))} |")
        for qt, r in x.items():
            li = r.get("llama_cpp_int4")
            if li:
                L += ["", f"{qt} on our int4 engine (the file's bits, activations rounded to Q8_0 as llama.cpp does) "
                      f"vs llama.cpp: max |logit diff| {_f(li['max_abs_logit_diff'], 6)}, top-1 agreement "
                      f"{_f(li['top1_agreement'])} (the float model above: {_f(r['llama_cpp']['max_abs_logit_diff'], 6)})."]
    g = results.get("generate")
    if g:
        L += ["", "## Sample", "", f"**user:** {g['prompt']}", "", f"**assistant (fp32):** {g['answer_fp32']}"]
        if "answer_gguf" in g:
            L += ["", f"**assistant ({g['gguf']}, reloaded):** {g['answer_gguf']}"]
    path = os.path.join(root, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    os.replace(path + ".tmp", path)
    with open(os.path.join(root, "report.json"), "w") as f:
        json.dump({"results": results, "timings": timings, "total_s": total_s}, f, indent=2, default=str)
    return path
