"""All evaluations in one call, sized by default for a tiny model on a 2-core CPU (well under a
minute), and the recipe / CLI front end.

    results = evaluate_all(model, tokenizer, EvalConfig(), "runs/tiny/eval",
                           heldout_texts=None, train_texts=None, reward_model=None)
    # -> {"tasks": {"perplexity": ..., "mmlu": ..., "champ": ..., "humaneval": ..., "judge": ...,
    #               "contamination": ...}, "meta": {...}, "paths": {"json": ..., "markdown": ...}}

    llmforge eval recipe.toml            # [eval] model = "runs/x/model", out_dir = ..., EvalConfig fields
    llmforge eval --model runs/x/model --out runs/x/eval --tasks mmlu,champ --mmlu-limit 100

Held-out and training text default to the recipe corpus split the way pretraining splits it
(llmforge.recipes.split_documents). A task whose data package is not installed is recorded as
skipped with the pip command; judge is skipped without a reward model.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from ..config_check import check_config

TASKS = ("perplexity", "mmlu", "champ", "humaneval", "judge", "contamination")


@dataclass
class EvalConfig:
    """What to evaluate and how much of it.

    tasks: any of perplexity, mmlu, champ, humaneval, judge (needs a reward model), contamination.
    Perplexity: corpus / heldout (the pretraining split, used when no texts are given), ppl_max_bytes.
    MMLU: mmlu_limit, mmlu_subjects, mmlu_shots, mmlu_style ("letter" as lm-eval, or "text"), add_bos.
    champ: champ_limit, champ_max_new_tokens, champ_template (None: plain "Problem/Answer" prompt).
    HumanEval: humaneval_limit problems, humaneval_n samples each, humaneval_k, humaneval_max_new_tokens,
      humaneval_temperature, sandbox timeout_s and memory_mb.
    Judge: judge_template (the reward model's chat template).
    Contamination: ngram (13 as GPT-3 / lm-eval), contamination_max_chars of training text scanned.
    """
    tasks: list = field(default_factory=lambda: list(TASKS))
    batch_size: int = 16
    seed: int = 0
    corpus: str = "shakespeare"
    heldout: float = 0.1
    ppl_max_bytes: int | None = 20000
    mmlu_limit: int | None = 50
    mmlu_subjects: list | None = None
    mmlu_shots: int = 0
    mmlu_style: str = "letter"
    add_bos: bool = False
    champ_limit: int | None = 20
    champ_max_new_tokens: int = 12
    champ_template: str | None = None
    humaneval_limit: int | None = 4
    humaneval_n: int = 2
    humaneval_k: list = field(default_factory=lambda: [1, 2])
    humaneval_max_new_tokens: int = 48
    humaneval_temperature: float = 0.8
    timeout_s: float = 5.0
    memory_mb: int = 1024
    judge_template: str = "chatml"
    ngram: int = 13
    contamination_max_chars: int | None = 1_000_000

    def __post_init__(self):
        check_config(self,
                     positive=("batch_size", "champ_max_new_tokens", "humaneval_n", "humaneval_max_new_tokens", "timeout_s", "memory_mb", "ngram"),
                     fractions=("heldout",))
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown eval tasks {unknown}; known: {list(TASKS)}")
        if self.humaneval_n < 1 or any(k < 1 or k > self.humaneval_n for k in self.humaneval_k):
            raise ValueError(f"humaneval_k {self.humaneval_k} must lie in [1, humaneval_n={self.humaneval_n}]")


def _corpus_split(cfg: EvalConfig):
    from ..recipes import corpus_text, split_documents

    return split_documents(corpus_text({"corpus": cfg.corpus}), cfg.heldout)


def _capped(docs, max_chars):
    total = 0
    for d in docs:
        if max_chars is not None and total >= max_chars:
            return
        total += len(d)
        yield d


def evaluate_all(model, tokenizer, cfg: EvalConfig | None = None, out_dir: str | None = None,
                 heldout_texts=None, train_texts=None, reward_model=None, progress: bool = True) -> dict:
    """Run cfg.tasks; write eval.json and eval.md to out_dir (if given); return the results."""
    from ..data.corpora import CorpusMissing

    cfg = cfg or EvalConfig()
    tasks, split = {}, None
    eval_texts = {}             # benchmark -> item texts, for the contamination report

    def corpus():
        nonlocal split
        if split is None:
            split = _corpus_split(cfg)
        return split

    def run(name, fn):
        if name not in cfg.tasks:
            return
        t0 = time.perf_counter()
        try:
            r = fn()
        except CorpusMissing as e:
            r = {"skipped": str(e)}
        if "skipped" not in r:
            r["seconds"] = round(time.perf_counter() - t0, 2)
        tasks[name] = r
        if progress:
            head = {k: v for k, v in r.items() if isinstance(v, (int, float, str)) and k != "template"}
            print(f"eval {name}: {head}", file=sys.stderr, flush=True)

    def perplexity():
        from .perplexity import text_perplexity

        texts = heldout_texts if heldout_texts is not None else corpus()[1]
        return text_perplexity(model, tokenizer, texts, batch_size=max(1, cfg.batch_size // 2),
                               max_bytes=cfg.ppl_max_bytes)

    def mmlu():
        from ..data.corpora import mmlu as load
        from .multiple_choice import mmlu as run_mmlu, mmlu_select

        qs = load()
        r = run_mmlu(model, tokenizer, cfg.mmlu_limit, cfg.mmlu_subjects, cfg.mmlu_shots, cfg.mmlu_style,
                     cfg.batch_size, cfg.add_bos, questions=qs)
        _, picked = mmlu_select(qs, cfg.mmlu_limit, cfg.mmlu_subjects, cfg.mmlu_shots)
        eval_texts["mmlu"] = [q["question"] + " " + " ".join(q["choices"]) for q in picked]
        return r

    def champ():
        from .exact_match import champ_exact_match

        r = champ_exact_match(model, tokenizer, cfg.champ_limit, cfg.champ_max_new_tokens, True,
                              cfg.champ_template, batch_size=cfg.batch_size)
        eval_texts["champ"] = {it["id"] if it["id"] is not None else i: it["problem"] for i, it in enumerate(r["items"])}
        return r

    def humaneval():
        from .humaneval import humaneval as run_he

        r = run_he(model, tokenizer, cfg.humaneval_limit, cfg.humaneval_n, tuple(cfg.humaneval_k),
                   cfg.humaneval_max_new_tokens, cfg.humaneval_temperature, seed=cfg.seed,
                   timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, batch_size=cfg.batch_size)
        from .humaneval import humaneval_problems

        probs = {p["task_id"]: p for p in humaneval_problems()}
        eval_texts["humaneval"] = {p["task_id"]: probs[p["task_id"]]["prompt"] for p in r["problems"]}
        return r

    def judge():
        from .judge import judge as run_judge

        if reward_model is None:
            return {"skipped": "no reward model given"}
        ch = tasks.get("champ")
        if not ch or "items" not in ch:
            return {"skipped": "judge scores the champ answers; run the champ task too"}
        from ..data.corpora import champ_problems

        sol = {p["id"]: p["solution"] for p in champ_problems()}
        recs = [{"prompt": it["problem"], "answer": it["completion"], "reference": sol.get(it["id"])}
                for it in ch["items"]]
        return run_judge(reward_model, tokenizer, recs, cfg.judge_template, batch_size=cfg.batch_size)

    def contamination():
        from .contamination import contamination_report

        if not eval_texts:
            return {"skipped": "no evaluation items were loaded (run mmlu, champ or humaneval)"}
        docs = train_texts if train_texts is not None else corpus()[0]
        return contamination_report(eval_texts, _capped(docs, cfg.contamination_max_chars), n=cfg.ngram)

    t0 = time.perf_counter()
    for name, fn in (("perplexity", perplexity), ("mmlu", mmlu), ("champ", champ), ("humaneval", humaneval),
                     ("judge", judge), ("contamination", contamination)):
        run(name, fn)
    results = {"meta": {"params": model.cfg.n_params(), "max_seq_len": model.cfg.max_seq_len,
                        "seconds": round(time.perf_counter() - t0, 2)},
               "config": asdict(cfg), "tasks": tasks}
    if out_dir is not None:
        from .report import write_results

        results["paths"] = write_results(results, out_dir)
    return results


# ---- recipe / CLI ----------------------------------------------------------------------------
def load_model_dir(path: str):
    """(model, tokenizer) from a model directory in the HF layout that llmforge writes."""
    from ..model import load_hf
    from ..tokenizer import load_tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path} not found")
    tok = load_tokenizer(path)
    return load_hf(path), tok


def run_eval(recipe: dict) -> dict:
    """[eval] model = "dir", out_dir = "dir", plus EvalConfig fields."""
    from ..recipes import _fields

    e = dict(recipe.get("eval", {}))
    model_dir, out_dir = e.pop("model", None), e.pop("out_dir", None)
    if not model_dir:
        raise ValueError("[eval] needs model = a model directory (HF layout with llmforge_tokenizer.json or tokenizer.json)")
    cfg = EvalConfig(**_fields(EvalConfig, e, "eval"))
    model, tok = load_model_dir(model_dir)
    res = evaluate_all(model, tok, cfg, out_dir or os.path.join(os.path.dirname(os.path.abspath(model_dir)), "eval"))
    return {"paths": res["paths"], "seconds": res["meta"]["seconds"],
            **{k: {m: v for m, v in r.items() if isinstance(v, (int, float, str))} for k, r in res["tasks"].items()}}
