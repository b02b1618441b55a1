"""Evaluation results as JSON (everything, per-item detail included) and Markdown (the headline
numbers and small tables).

    paths = write_results(results, "runs/tiny/eval")   # {"json": ".../eval.json", "markdown": ".../eval.md"}

`results` is evaluate_all's dict: {"tasks": {name: result}, "meta": {...}}.
"""
from __future__ import annotations

import json
import math
import os

# The metric(s) shown for each task in the summary table (humaneval: every pass@k;
# contamination: one row per benchmark).
HEADLINE = {
    "perplexity": ("bits_per_byte", "perplexity"),
    "mmlu": ("acc", "acc_norm"),
    "champ": ("exact_match",),
    "judge": ("mean_score", "win_rate"),
}


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def to_markdown(results: dict) -> str:
    tasks = results.get("tasks", {})
    meta = results.get("meta", {})
    lines = ["# Evaluation", ""]
    if meta:
        lines += [", ".join(f"{k}: {_fmt(v)}" for k, v in meta.items()), ""]
    lines += ["| task | metric | value | n | seconds |", "|---|---|---|---|---|"]
    for name, r in tasks.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped | {r['skipped']} | - | - |")
            continue
        secs = _fmt(r.get("seconds"))
        if name == "contamination":
            for b, st in r.get("benchmarks", {}).items():
                lines.append(f"| contamination ({r['n']}-gram) | {b} contaminated | {st['contaminated']} / {st['items']} "
                             f"| {r['training_docs']} docs | {secs} |")
            continue
        keys = tuple(k for k in r if k.startswith("pass@")) if name == "humaneval" else HEADLINE.get(name, ())
        n = r.get("n_problems", r.get("tokens", r.get("n", "-")))
        for k in keys:
            if k in r:
                lines.append(f"| {name} | {k} | {_fmt(r[k])} | {n} | {secs} |")
    mm = tasks.get("mmlu")
    if mm and mm.get("subjects"):
        lines += ["", "## MMLU by subject", "", "| subject | n | acc | acc_norm |", "|---|---|---|---|"]
        for s, v in mm["subjects"].items():
            lines.append(f"| {s} | {v['n']} | {_fmt(v['acc'])} | {_fmt(v['acc_norm'])} |")
    he = tasks.get("humaneval")
    if he and he.get("problems"):
        lines += ["", "## HumanEval samples", "", "| task | results |", "|---|---|"]
        for p in he["problems"]:
            lines.append(f"| {p['task_id']} | {', '.join(p['results'])} |")
    ch = tasks.get("champ")
    if ch and ch.get("items"):
        lines += ["", "## champ answers (first 10)", "", "| id | reference | completion | correct |", "|---|---|---|---|"]
        for it in ch["items"][:10]:
            comp = it["completion"].replace("|", "\\|").replace("\n", " ")[:60]
            lines.append(f"| {it['id']} | {it['answer']} | {comp} | {'yes' if it['correct'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str, name: str = "eval") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "markdown": os.path.join(out_dir, f"{name}.md")}
    for key, text in (("json", json.dumps(results, indent=2, default=_json_default)), ("markdown", to_markdown(results))):
        tmp = paths[key] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, paths[key])
    return paths
