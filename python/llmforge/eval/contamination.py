"""n-gram contamination report: which evaluation items share a word n-gram with training text.

    rep = contamination_report({"mmlu": questions, "champ": problems}, training_docs, n=13)
    rep["benchmarks"]["mmlu"] == {"items": 50, "contaminated": 1, "fraction": 0.02, "examples": [17]}
    rep["training_docs"], rep["training_docs_hit"]

Uses llmforge.data.decontam's 13-gram machinery (normalised words, hashed n-grams; an item
shorter than n words matches as a whole). The training text is only read, never changed;
llmforge.data.decontam.decontaminate drops the hit documents when that is wanted.
"""
from __future__ import annotations

from ..data.decontam import NgramIndex


def contamination_report(eval_sets: dict, training_docs, n: int = 13, max_examples: int = 10) -> dict:
    """eval_sets: {benchmark: [item text, ...] or {item id: text}}; training_docs: an iterable of str.
    Examples are given as item ids (list positions for a list)."""
    index = NgramIndex(n=n)
    sizes, ids = {}, {}
    for name, texts in eval_sets.items():
        if isinstance(texts, dict):
            ids[name], texts = list(texts), list(texts.values())
        else:
            texts = list(texts)
            ids[name] = list(range(len(texts)))
        index.add_all(name, texts)
        sizes[name] = len(texts)
    hit_items: dict[str, set] = {name: set() for name in eval_sets}
    docs = hits = nchars = 0
    for doc in training_docs:
        docs += 1
        nchars += len(doc)
        found = index.contaminated(doc)
        if found:
            hits += 1
            for bench, item in found:
                hit_items[bench].add(item)
    bench = {name: {"items": sizes[name], "contaminated": len(hit_items[name]),
                    "fraction": len(hit_items[name]) / sizes[name] if sizes[name] else 0.0,
                    "examples": [ids[name][i] for i in sorted(hit_items[name])[:max_examples]]} for name in eval_sets}
    return {"n": n, "training_docs": docs, "training_chars": nchars, "training_docs_hit": hits, "benchmarks": bench}
