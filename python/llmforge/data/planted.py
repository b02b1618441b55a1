"""Planted near-duplicates: the yardstick for near-dedup recall and false positives.

    docs, planted = plant_near_duplicates(chunks, n=200, edit_rate=0.05, seed=0)
    # planted: list of (copy_index, source_index)
"""
from __future__ import annotations

import random


def chunk_words(text: str, size: int = 150) -> list[str]:
    """Split a corpus into documents of `size` words (the last, shorter one is dropped)."""
    ws = text.split()
    return [" ".join(ws[i:i + size]) for i in range(0, len(ws) - size + 1, size)]


def edit_words(doc: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Randomly substitute, delete or insert words at the given rate."""
    out = []
    for w in doc.split():
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(vocab))          # substitute
        elif r < 2 * rate / 3:
            continue                               # delete
        elif r < rate:
            out.extend([w, rng.choice(vocab)])     # insert
        else:
            out.append(w)
    return " ".join(out)


def plant_near_duplicates(docs: list[str], n: int, edit_rate: float = 0.05, seed: int = 0):
    """Append n edited copies of randomly chosen documents. Returns (all_docs, [(copy, source)])."""
    rng = random.Random(seed)
    vocab = sorted({w for d in docs[: min(len(docs), 500)] for w in d.split()})
    sources = rng.sample(range(len(docs)), n)
    out = list(docs)
    planted = []
    for s in sources:
        planted.append((len(out), s))
        out.append(edit_words(docs[s], edit_rate, rng, vocab))
    return out, planted


def score_clusters(clusters: list[list[int]], planted: list[tuple[int, int]], n_original: int) -> dict:
    """Recall: planted copies found in their source's cluster. False positives: original
    documents (not a planted source) that landed in any cluster, as a fraction of originals."""
    where = {}
    for ci, g in enumerate(clusters):
        for i in g:
            where[i] = ci
    found = sum(1 for c, s in planted if c in where and where.get(s) == where[c])
    sources = {s for _, s in planted}
    false = sum(1 for i in range(n_original) if i in where and i not in sources)
    return {"recall": found / max(1, len(planted)), "false_positive_rate": false / max(1, n_original - len(sources)),
            "planted": len(planted), "false_positives": false}
