"""`llmforge pipeline recipes/tiny.toml`: a model's whole life in one command, on a CPU.

    data -> tokenizer -> pretrain -> sft (LoRA) -> dpo -> eval -> quantize -> export (GGUF) -> generate
         -> report (runs/<name>/report.md, PNG curves, the quant ladder)

Every stage writes its results to runs/<name>/<stage>/stage.json last (atomically), so a re-run
skips finished stages and a killed run resumes at the stage it was in (pretraining and SFT also
resume from their own checkpoints). A stage's cache key is a hash of its recipe section and of
the keys of the stages it reads: editing a section re-runs that stage and everything after it.

The recipe's sections are the stages' names; see recipes/tiny.toml for every key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

STAGES = ("data", "tokenizer", "pretrain", "sft", "dpo", "eval", "quantize", "export", "generate")


@dataclass
class Stage:
    name: str
    run: Callable[["Context"], dict]
    needs: tuple = ()


@dataclass
class Context:
    recipe: dict
    root: str
    results: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)

    def dir(self, stage: str) -> str:
        return os.path.join(self.root, stage)

    def section(self, stage: str) -> dict:
        return dict(self.recipe.get(stage, {}))


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _log(msg: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- stages ----------------------------------------------------------------------------------

def _chunk_paragraphs(text: str, doc_chars: int) -> list[str]:
    """Group consecutive paragraphs of a play into documents of about doc_chars characters."""
    docs, cur, n = [], [], 0
    for p in (p.strip("\n") for p in text.split("\n\n")):
        if not p.strip():
            continue
        cur.append(p)
        n += len(p)
        if n >= doc_chars:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def stage_data(ctx: Context) -> dict:
    from .data import corpora
    from .data.clean import QualityConfig, clean_documents
    from .data.decontam import NgramIndex, decontaminate
    from .data.dedup import exact_dedup, near_dedup
    from .data.io import read_text

    s = ctx.section("data")
    doc_chars = int(s.pop("doc_chars", 2000))
    heldout = float(s.pop("heldout", 0.05))
    max_documents = s.pop("max_documents", None)  # a quick run on the first N documents
    corpus = s.pop("corpus", "shakespeare")
    files = s.pop("files", None)
    quality = QualityConfig(**s.pop("quality", {}))
    if s:
        raise ValueError(f"[data] unknown keys {sorted(s)}")
    if files:
        sources = [(f, read_text(f)) for f in files]
    elif corpus == "shakespeare":
        sources = [(d.name, d.text) for d in corpora.shakespeare()]
    else:
        raise ValueError(f"[data] corpus must be 'shakespeare' or give files = [...], got {corpus!r}")
    raw = [doc for _, text in sources for doc in _chunk_paragraphs(text, doc_chars)]
    if max_documents:
        raw = raw[: int(max_documents)]
    kept, clean_report = clean_documents(raw, quality)
    keep = exact_dedup(kept)
    exact_removed = len(kept) - len(keep)
    docs = [kept[i] for i in keep]
    keep = near_dedup(docs)
    near_removed = len(docs) - len(keep)
    docs = [docs[i] for i in keep]
    # Benchmarks the eval stage scores must not leak into training text (13-gram overlap).
    index = NgramIndex(13)
    try:
        index.add_all("mmlu", [q["question"] for q in corpora.mmlu()])
        index.add_all("champ", [p["problem"] for p in corpora.champ_problems()])
    except corpora.CorpusMissing as e:  # the eval corpora are optional extras
        _log(f"decontamination skipped for a missing corpus: {e}")
    docs, decon = decontaminate(docs, index)
    n_held = max(1, int(round(len(docs) * heldout)))
    train, held = docs[:-n_held], docs[-n_held:]
    out = ctx.dir("data")
    for name, part in (("train", train), ("heldout", held)):
        with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for d in part:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return {"raw_documents": len(raw), "raw_chars": sum(map(len, raw)), "clean": clean_report.as_dict(),
            "exact_duplicates_removed": exact_removed, "near_duplicates_removed": near_removed,
            "decontamination": decon.as_dict(), "train_documents": len(train), "heldout_documents": len(held),
            "train_chars": sum(map(len, train)), "heldout_chars": sum(map(len, held))}


def _docs(ctx: Context, name: str) -> list[str]:
    with open(os.path.join(ctx.dir("data"), f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def stage_tokenizer(ctx: Context) -> dict:
    from .tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer

    s = ctx.section("tokenizer")
    t0 = time.perf_counter()
    tok = Tokenizer.train_from_iterator(_docs(ctx, "train"), vocab_size=int(s.get("vocab_size", 2048)),
                                        special_tokens=tuple(DEFAULT_SPECIAL_TOKENS))
    secs = time.perf_counter() - t0
    path = os.path.join(ctx.dir("tokenizer"), "tokenizer.json")
    tok.save(path)
    held = "\n\n".join(_docs(ctx, "heldout"))
    ids = tok.encode(held)
    return {"vocab_size": tok.vocab_size, "train_s": round(secs, 2), "path": path,
            "heldout_bytes_per_token": round(len(held.encode("utf-8")) / max(1, len(ids)), 3),
            "roundtrip_ok": tok.decode(ids) == held}


def _model_dir(ctx: Context, stage: str) -> str:
    return os.path.join(ctx.dir(stage), "model")


def stage_pretrain(ctx: Context) -> dict:
    from .recipes import pretrain_from_docs

    s = ctx.section("pretrain")
    recipe = {"data": {"seq_len": s.pop("seq_len", 256), "doc_mask": s.pop("doc_mask", False)},
              "tokenizer": {"path": ctx.results["tokenizer"]["path"]},
              "model": s.pop("model", {}), "train": {**s, "out_dir": ctx.dir("pretrain")}}
    res = pretrain_from_docs(recipe, _docs(ctx, "train"), _docs(ctx, "heldout"))
    res["curves"] = os.path.join(ctx.dir("pretrain"), "curves.png")
    return res


def stage_sft(ctx: Context) -> dict:
    from .recipes import run_sft

    s = ctx.section("sft")
    train = s.pop("train", {})
    res = run_sft({"sft": {**s, "base": _model_dir(ctx, "pretrain")}, "train": {**train, "out_dir": ctx.dir("sft")}})
    res["curves"] = os.path.join(ctx.dir("sft"), "curves.png")
    return res


def stage_dpo(ctx: Context) -> dict:
    from .recipes import run_align

    s = ctx.section("dpo")
    config = s.pop("config", {})
    res = run_align({"align": {**s, "method": "dpo", "base": _model_dir(ctx, "sft")},
                     "config": {**config, "out_dir": ctx.dir("dpo")}})
    res["curves"] = os.path.join(ctx.dir("dpo"), "curves.png")
    return res


def _final(ctx: Context):
    from .model import load_hf
    from .tokenizer import Tokenizer

    d = _model_dir(ctx, "dpo")
    return load_hf(d), Tokenizer.load(os.path.join(d, "llmforge_tokenizer.json"))


def _token_batches(ctx: Context, tok, part: str, seq_len: int, n: int, batch: int = 4):
    """Up to n rows of seq_len tokens from the start of the train or heldout text, in batches."""
    import torch

    ids, docs = [], _docs(ctx, part)
    for d in docs:
        if len(ids) >= n * seq_len:
            break
        ids += tok.encode(d + "\n\n")
    rows = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:n]
    if not rows:
        raise ValueError(f"the {part} text is shorter than one sequence of {seq_len} tokens")
    return [torch.tensor(rows[i:i + batch]) for i in range(0, len(rows), batch)]


def stage_eval(ctx: Context) -> dict:
    from .eval import EvalConfig, evaluate_all

    s = ctx.section("eval")
    model, tok = _final(ctx)
    cfg = EvalConfig(**s)
    return evaluate_all(model, tok, cfg, ctx.dir("eval"), heldout_texts=_docs(ctx, "heldout"),
                        train_texts=_docs(ctx, "train"), progress=False)


def stage_quantize(ctx: Context) -> dict:
    """The quant ladder on the final model: int8 (absmax, zero-point), W8A8 (+SmoothQuant), int4/int3
    RTN, GPTQ, AWQ and GGUF types, each judged against the float model on held-out text."""
    from .quant.ladder import DEFAULT_METHODS, quant_ladder

    s = ctx.section("quantize")
    model, tok = _final(ctx)
    model.eval()
    seq_len = min(int(s.get("seq_len", 128)), model.cfg.max_seq_len)
    calib = _token_batches(ctx, tok, "train", seq_len, int(s.get("calib_sequences", 32)))
    held = _token_batches(ctx, tok, "heldout", seq_len, int(s.get("eval_sequences", 32)))
    res = quant_ladder(model, tok, calib, held, methods=s.get("methods", DEFAULT_METHODS), out_dir=ctx.dir("quantize"),
                       title=f"Quant ladder: {ctx.recipe.get('name', 'pipeline')} model")
    return {"rows": res["rows"], "ppl_fp": res["ppl_fp"], "heldout_tokens": res["heldout_tokens"]}


def stage_export(ctx: Context) -> dict:
    from .export.gguf_export import export_gguf, verify_gguf
    from .export.gguf_int4 import load_gguf_int4
    from .export.llamacpp_check import compare_with_llamacpp

    s = ctx.section("export")
    model, tok = _final(ctx)
    texts = [d[:600] for d in _docs(ctx, "heldout")[:4]] + ["Ünïcödé, numbers 12345 and <|im_start|> specials."]
    res = {}
    for qtype in s.get("qtypes", ["f32", "q8_0", "q4_0"]):
        path = os.path.join(ctx.dir("export"), f"{ctx.recipe.get('name', 'model')}-{qtype}.gguf")
        info = export_gguf(model, tok, path, qtype)
        r = {"path": path, "bytes": os.path.getsize(path), "verify": verify_gguf(model, tok, path, texts, max_tokens=model.cfg.max_seq_len)}
        r["llama_cpp"] = compare_with_llamacpp(path, model, tok, texts)
        if qtype == "q4_0" and r["llama_cpp"] is not None:
            # the file's own bits on our int4 engine, activations rounded as llama.cpp rounds them
            r["llama_cpp_int4"] = compare_with_llamacpp(path, load_gguf_int4(path)[0], tok, texts)
        if isinstance(info, dict) and info.get("fallbacks"):
            r["fallbacks"] = info["fallbacks"]
        res[qtype] = r
    return res


def stage_generate(ctx: Context) -> dict:
    from .data.chat import render_chat
    from .export.gguf_export import import_gguf
    from .export.gguf_int4 import load_gguf_int4
    from .generate.engine import generate
    from .generate.sampling import SamplingParams

    s = ctx.section("generate")
    model, tok = _final(ctx)
    prompt = s.get("prompt", "Hello! How are you today?")
    text = render_chat([{"role": "user", "content": prompt}], "chatml", add_generation_prompt=True)
    ids = tok.encode(text)
    stop = {tok.token_to_id("<|im_end|>"), tok.eos_id} - {None}
    params = SamplingParams(temperature=float(s.get("temperature", 0.0)), top_p=float(s.get("top_p", 1.0)))
    n = int(s.get("max_new_tokens", 48))
    res = {"prompt": prompt}
    out = generate(model, [ids], n, params, stop_ids=stop, seed=0, pad_id=tok.pad_id or 0)
    res["answer_fp32"] = tok.decode([t for t in out.tokens[0] if t not in stop])
    gguf = ctx.results.get("export", {}).get(s.get("gguf", "q4_0"), {}).get("path")
    if gguf and os.path.exists(gguf):
        # a Q4_0 file runs on its own bits (int4 engine, native decode step); others dequantised
        m2 = load_gguf_int4(gguf)[0] if gguf.endswith("-q4_0.gguf") else import_gguf(gguf)[0]
        out = generate(m2, [ids], n, params, stop_ids=stop, seed=0, pad_id=tok.pad_id or 0)
        res["answer_gguf"] = tok.decode([t for t in out.tokens[0] if t not in stop])
        res["gguf"] = os.path.basename(gguf)
    return res


PIPELINE = (
    Stage("data", stage_data),
    Stage("tokenizer", stage_tokenizer, ("data",)),
    Stage("pretrain", stage_pretrain, ("tokenizer",)),
    Stage("sft", stage_sft, ("pretrain",)),
    Stage("dpo", stage_dpo, ("sft",)),
    Stage("eval", stage_eval, ("dpo",)),
    Stage("quantize", stage_quantize, ("dpo",)),
    Stage("export", stage_export, ("dpo",)),
    Stage("generate", stage_generate, ("dpo", "export")),
)


def _key(ctx: Context, st: Stage) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(ctx.recipe.get(st.name, {}), sort_keys=True, default=str).encode())
    h.update(json.dumps({"seed": ctx.recipe.get("seed", 0)}).encode())
    for dep in st.needs:
        h.update(ctx.keys[dep].encode())
    return h.hexdigest()[:16]


def _run_stage(ctx: Context, st: Stage) -> dict:
    """Serve the stage from its cache when its key matches, else run it; returns its timing."""
    import torch

    key = _key(ctx, st)
    ctx.keys[st.name] = key
    d = ctx.dir(st.name)
    done = os.path.join(d, "stage.json")
    if os.path.exists(done):
        with open(done) as f:
            prev = json.load(f)
        if prev.get("key") == key:
            ctx.results[st.name] = prev["results"]
            _log(f"{st.name}: cached ({prev['seconds']:.0f} s when it ran)")
            return {"seconds": prev["seconds"], "cached": True}
        _log(f"{st.name}: recipe changed since the cached run; running it again")
        shutil.rmtree(d)
    elif os.path.isdir(d) and st.name not in ("pretrain", "sft"):
        shutil.rmtree(d)  # a half-finished stage without its own checkpoints starts over
    os.makedirs(d, exist_ok=True)
    _log(f"{st.name}: running")
    t0 = time.perf_counter()
    torch.manual_seed(int(ctx.recipe.get("seed", 0)))
    res = st.run(ctx)
    secs = time.perf_counter() - t0
    _write_json(done, {"key": key, "seconds": secs, "results": res})
    ctx.results[st.name] = json.loads(json.dumps(res, default=str))
    _log(f"{st.name}: done in {secs:.0f} s")
    return {"seconds": secs, "cached": False}


def run_pipeline(recipe: dict, out_dir: str | None = None, until: str | None = None) -> dict:
    """Run (or resume) the stages in order, all of them or up to and including `until`; returns
    {stage: results} and writes the report (of the stages run so far)."""
    import torch

    name = recipe.get("name", "pipeline")
    root = out_dir or recipe.get("out_dir") or os.path.join("runs", name)
    unknown = sorted(set(recipe) - set(STAGES) - {"name", "out_dir", "seed", "threads"})
    if unknown:
        raise ValueError(f"recipe: unknown sections {unknown}; stages are {list(STAGES)}")
    if until is not None and until not in STAGES:
        raise ValueError(f"until must be one of {list(STAGES)}, got {until!r}")
    if recipe.get("threads"):
        torch.set_num_threads(int(recipe["threads"]))
    os.makedirs(root, exist_ok=True)
    ctx = Context(recipe, root)
    t_all = time.perf_counter()
    timings = {}
    for st in PIPELINE:
        timings[st.name] = _run_stage(ctx, st)
        if st.name == until:
            break
    from .pipeline_report import write_report

    report = write_report(ctx.root, recipe, ctx.results, timings, time.perf_counter() - t_all)
    _log(f"report: {report}")
    return {"results": ctx.results, "timings": timings, "report": report}
