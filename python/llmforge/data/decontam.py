"""n-gram decontamination: find (and drop) training documents that contain text of an
evaluation set, the way GPT-3 / lm-eval do it (13-gram overlap of normalised words).

    index = NgramIndex(n=13).add_all("mmlu", questions)
    hits = index.contaminated(doc)          # {(benchmark, item index), ...}
    kept, report = decontaminate(docs, index)
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field

from .clean import normalize, words

_PUNCT = re.compile(r"[^\w\s]")


def _norm_words(text: str) -> list[str]:
    return words(_PUNCT.sub(" ", normalize(text, "NFKC").lower()))


def _key(gram) -> bytes:
    return hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest()


class NgramIndex:
    """Hashed word n-grams of evaluation items. Items shorter than n words are kept whole
    and matched as a window of their own length."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.grams: dict[bytes, set] = defaultdict(set)
        self.short_lengths: set[int] = set()

    def add(self, benchmark: str, item: int, text: str) -> None:
        ws = _norm_words(text)
        if not ws:
            return
        k = min(self.n, len(ws))
        if k < self.n:
            self.short_lengths.add(k)
        for i in range(len(ws) - k + 1):
            self.grams[_key(ws[i:i + k])].add((benchmark, item))

    def add_all(self, benchmark: str, texts) -> "NgramIndex":
        for i, t in enumerate(texts):
            self.add(benchmark, i, t)
        return self

    def contaminated(self, text: str) -> set:
        """The (benchmark, item) pairs whose n-grams occur in text."""
        ws = _norm_words(text)
        hits = set()
        for k in {self.n} | self.short_lengths:
            for i in range(len(ws) - k + 1):
                found = self.grams.get(_key(ws[i:i + k]))
                if found:
                    hits |= found
        return hits


@dataclass
class DecontamReport:
    kept: int = 0
    dropped: int = 0
    hits: dict = field(default_factory=lambda: defaultdict(int))   # benchmark -> documents hit

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": self.dropped, "hits": dict(self.hits)}


def decontaminate(docs, index: NgramIndex) -> tuple[list[str], DecontamReport]:
    """Drop every document sharing an n-gram with any indexed evaluation item."""
    report = DecontamReport()
    kept = []
    for d in docs:
        hits = index.contaminated(d)
        if hits:
            report.dropped += 1
            for bench in {b for b, _ in hits}:
                report.hits[bench] += 1
        else:
            kept.append(d)
            report.kept += 1
    return kept, report
