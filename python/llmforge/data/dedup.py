"""Exact and near-duplicate removal.

    keep = exact_dedup(docs)                                 # indices of first occurrences
    mh = MinHashLSH(num_perm=128, bands=32, rows=4, shingle=3, threshold=0.5)
    clusters = mh.duplicate_clusters(docs)                   # [[i, j, ...], ...]
    keep = near_dedup(docs)                                  # one document per cluster

MinHash: each document becomes its set of word k-shingles (k = `shingle`; character
k-grams with unit="char"), each shingle a 32-bit CRC, and the signature the minimum of
`num_perm` universal hashes (a*h + b) mod (2^61 - 1) over the set; two signatures agree
in a position with probability equal to the Jaccard similarity of the sets.
LSH: the signature is cut into `bands` bands of `rows` values; documents sharing any
band's values become candidates (probability 1 - (1 - J^rows)^bands), and candidates
whose estimated Jaccard is >= `threshold` are joined (union-find). Work grows
linearly with the number of documents (plus the candidate pairs found).
"""
from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict

import numpy as np

from .clean import normalize, words

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)


def exact_dedup(docs, normalise: bool = True) -> list[int]:
    """Indices of the first occurrence of each distinct document (after whitespace/Unicode normalisation)."""
    seen = set()
    keep = []
    for i, d in enumerate(docs):
        key = " ".join(normalize(d).split()) if normalise else d
        h = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return keep


class MinHashLSH:
    def __init__(self, num_perm: int = 128, bands: int = 32, rows: int = 4, shingle: int = 3,
                 threshold: float = 0.5, unit: str = "word", seed: int = 0):
        if bands * rows > num_perm:
            raise ValueError(f"bands*rows ({bands}*{rows}) must not exceed num_perm ({num_perm})")
        if min(num_perm, bands, rows, shingle) < 1:
            raise ValueError("num_perm, bands, rows and shingle must be positive")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if unit not in ("word", "char"):
            raise ValueError("unit must be 'word' or 'char'")
        self.num_perm, self.bands, self.rows, self.shingle = num_perm, bands, rows, shingle
        self.threshold, self.unit = threshold, unit
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)

    def shingles(self, doc: str) -> np.ndarray:
        """32-bit hashes of the document's distinct shingles."""
        text = normalize(doc).lower()
        if self.unit == "word":
            toks = words(text)
            k = self.shingle
            grams = [" ".join(toks[i:i + k]) for i in range(max(1, len(toks) - k + 1))] if toks else []
        else:
            text = " ".join(text.split())
            k = self.shingle
            grams = [text[i:i + k] for i in range(max(1, len(text) - k + 1))] if text else []
        return np.unique(np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint64,
                                     count=len(grams)))

    def signature(self, doc: str) -> np.ndarray:
        h = self.shingles(doc)
        if h.size == 0:
            return np.full(self.num_perm, np.uint64(0xFFFFFFFF), dtype=np.uint64)
        # (a*h + b) stays below 2^64 because a, h, b < 2^32.
        v = (np.outer(h, self.a) + self.b) % _MERSENNE & _MAX32
        return v.min(axis=0)

    def signatures(self, docs) -> np.ndarray:
        return np.stack([self.signature(d) for d in docs]) if len(docs) else np.zeros((0, self.num_perm), np.uint64)

    def candidate_pairs(self, sigs: np.ndarray) -> set[tuple[int, int]]:
        pairs = set()
        for band in range(self.bands):
            buckets = defaultdict(list)
            chunk = sigs[:, band * self.rows:(band + 1) * self.rows]
            for i, key in enumerate(map(bytes, chunk)):
                buckets[key].append(i)
            for members in buckets.values():
                if len(members) > 1:
                    first = members[0]
                    # link every member to the first: union-find closes the cluster
                    for j in members[1:]:
                        pairs.add((first, j))
                    if len(members) <= 32:  # small buckets: all pairs, so the Jaccard check sees each
                        for x in range(1, len(members)):
                            for y in range(x + 1, len(members)):
                                pairs.add((members[x], members[y]))
        return pairs

    def duplicate_clusters(self, docs) -> list[list[int]]:
        """Groups (size >= 2) of documents whose estimated Jaccard similarity reaches the threshold."""
        docs = list(docs)
        sigs = self.signatures(docs)
        parent = list(range(len(docs)))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for i, j in self.candidate_pairs(sigs):
            if np.mean(sigs[i] == sigs[j]) >= self.threshold:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        groups = defaultdict(list)
        for i in range(len(docs)):
            groups[find(i)].append(i)
        return [g for g in groups.values() if len(g) > 1]


def near_dedup(docs, lsh: MinHashLSH | None = None) -> list[int]:
    """Indices of the documents kept: the first of each near-duplicate cluster, and all others."""
    docs = list(docs)
    lsh = lsh or MinHashLSH()
    drop = set()
    for group in lsh.duplicate_clusters(docs):
        drop.update(sorted(group)[1:])
    return [i for i in range(len(docs)) if i not in drop]


def jaccard(a: str, b: str, lsh: MinHashLSH | None = None) -> float:
    """Exact Jaccard similarity of two documents' shingle sets (for checks and tests)."""
    lsh = lsh or MinHashLSH()
    sa, sb = set(lsh.shingles(a).tolist()), set(lsh.shingles(b).tolist())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)
