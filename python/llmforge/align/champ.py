"""Preference pairs from champ's 19,440 model solutions, labelled by verifying final answers.

    pairs = champ_verified_preferences()       # [{id, prompt, chosen, rejected}]
    stats = {}; champ_verified_preferences(stats=stats)   # counts of correct / wrong / unverifiable

Every champ conversation ends with the model's one-sentence summary of its answer (the
dataset's "summarize the answer above in one sentence" turn); the solution is the model
turn before that request. verify_summary() compares the summary with the problem's
reference answer:
  * numeric references ("239", "5/14, or approximately 35.7%", "100 (i.e., all values)"):
    the numbers stated in the summary, leaving out those already in the problem text, are
    compared with the reference values as exact fractions. Correct: every stated number is
    the reference. Wrong: some number is stated, none is the reference, and the summary
    holds no unevaluated expression (^, !, sqrt, C(...)) that could still equal it.
  * Yes/No references: the summary's first word.
  * anything else (formulas in n, intervals, sets): unverifiable, skipped.
Chosen = a verified-correct solution, rejected = a verified-wrong one of the same problem,
paired in conversation order (at most min(#correct, #wrong) pairs per problem).
"""
from __future__ import annotations

import re
from fractions import Fraction

from .rewards import normalize_answer

_FRAC_TEX = re.compile(r"\\d?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
# a number: thousands groups, decimals, or a fraction a/b; a minus sign only where it is not a
# subtraction (after a letter, digit or closing bracket)
_NUMBER = re.compile(r"(?<![\w)\].])(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+))?(?![\d.]*\d)")
_EXPR = re.compile(r"[\^!√]|sqrt|\bC\(|binom|choose|\\cdot|\\times|\btimes\b|\*|\blog|\bln\b|\bpi\b|π|\be\^")


def numbers_in(text: str) -> list[Fraction]:
    """The numbers written in text, in order, as exact fractions (LaTeX \\frac{a}{b} included)."""
    text = _FRAC_TEX.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text).replace("$", " ")
    out = []
    for m in _NUMBER.finditer(text):
        sign, whole, dec, den = m.groups()
        v = Fraction(whole.replace(",", "") + (dec or ""))
        if den is not None:
            if int(den) == 0:
                continue
            v = v / int(den)
        out.append(-v if sign else v)
    return out


def reference_values(answer: str) -> list[Fraction] | str | None:
    """Reference answer -> exact values it accepts, "yes"/"no", or None (not checkable).
    Alternatives after ", or" are read too ("C(10, 5), or equivalently 252" -> [252])."""
    a = answer.strip()
    low = normalize_answer(a).lower()
    if low in ("yes", "no"):
        return low
    vals = []
    for part in re.split(r",?\s+or\s+", a):
        part = re.sub(r"\([^)]*\)", "", part)                  # "(i.e., all values)"
        part = re.sub(r"^\s*(equivalently|approximately)\s+", "", part.strip())
        part = _FRAC_TEX.sub(lambda m: f"{m.group(1)}/{m.group(2)}", part).strip().strip("$").strip()
        m = re.fullmatch(r"(-?[\d,]+(?:\.\d+)?(?:\s*/\s*\d+)?)(?:\s+[A-Za-z ]+)?", part)
        if m and "%" not in part:
            nums = numbers_in(m.group(1))
            if len(nums) == 1:
                vals.append(nums[0])
    return vals or None


def verify_summary(summary: str, answer: str, problem: str = "") -> bool | None:
    """True (states the reference answer), False (states another answer), None (cannot tell)."""
    ref = reference_values(answer)
    if ref is None or not summary.strip():
        return None
    if isinstance(ref, str):
        first = re.match(r"\W*([A-Za-z]+)", summary)
        word = first.group(1).lower() if first else ""
        if word not in ("yes", "no"):
            return None
        return word == ref
    in_problem = set(numbers_in(problem))
    stated = [v for v in numbers_in(summary) if v not in in_problem or v in ref]
    if not stated:
        return None
    if all(v in ref for v in stated):
        return True
    if any(v in ref for v in stated):
        return None                                             # the reference and something else
    if _EXPR.search(summary):
        return None                                             # maybe an unevaluated form of the answer
    return False


def _solution_and_summary(conv: dict) -> tuple[str, str] | None:
    msgs = conv.get("messages") or []
    model = [i for i, m in enumerate(msgs) if str(m.get("role", "")).startswith("Model")]
    if len(model) < 2 or any(msgs[i].get("error") for i in model[-2:]):
        return None
    sol, summ = msgs[model[-2]].get("text"), msgs[model[-1]].get("text")
    if not isinstance(sol, str) or not isinstance(summ, str) or not sol.strip():
        return None
    return sol, summ


def label_solutions(problem: dict) -> list[tuple[str, str, bool | None]]:
    """(conversation key, solution text, verdict) for each of one champ problem's conversations."""
    out = []
    for key, conv in sorted((problem.get("conversations") or {}).items()):
        ss = _solution_and_summary(conv) if isinstance(conv, dict) else None
        if ss is None:
            continue
        out.append((key, ss[0], verify_summary(ss[1], problem.get("_answer") or "", problem.get("_text", ""))))
    return out


def champ_verified_preferences(stats: dict | None = None, max_per_problem: int | None = None) -> list[dict]:
    """Pairs {id, prompt, chosen, rejected} from answer-verified champ model solutions;
    stats (if given) receives counts: solutions, correct, wrong, unverifiable, problems_with_pairs."""
    from ..data.corpora import _champ

    pairs = []
    counts = {"solutions": 0, "correct": 0, "wrong": 0, "unverifiable": 0, "problems_with_pairs": 0}
    for pid, p in sorted(_champ()["problems"].items()):
        good, bad = [], []
        for _, sol, verdict in label_solutions(p):
            counts["solutions"] += 1
            if verdict is None:
                counts["unverifiable"] += 1
            else:
                (good if verdict else bad).append(sol)
                counts["correct" if verdict else "wrong"] += 1
        n = min(len(good), len(bad), max_per_problem or len(good))
        counts["problems_with_pairs"] += n > 0
        pairs.extend({"id": pid, "prompt": p["_text"], "chosen": g, "rejected": b}
                     for g, b in zip(good[:n], bad[:n]))
    counts["pairs"] = len(pairs)
    if stats is not None:
        stats.update(counts)
    return pairs
