"""Cleaning and filtering: Unicode normalisation, quality heuristics, PII scrubbing.

    text = normalize(text)                       # NFC (or NFKC), no control characters, unified newlines
    reasons = quality_reasons(text)              # [] when the document passes, else reason codes
    text, counts = scrub_pii(text)               # emails, phone numbers, IPs -> placeholders
    kept, report = clean_documents(docs)         # all of it, with a report of what was dropped and why

The heuristics follow the Gopher / C4 rules of thumb but are language-agnostic:
"words" are whitespace-separated tokens, except that each CJK/kana/hangul character
counts as a word of length 1, so Chinese text is judged on the same scale.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from ..config_check import check_config

# Reason codes (stable strings: they go into reports).
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
MEAN_WORD_LENGTH = "mean_word_length"
SYMBOL_RATIO = "symbol_ratio"
ALPHA_RATIO = "alpha_ratio"
DUP_LINES = "duplicate_lines"
REPEATED_NGRAMS = "repeated_ngrams"
BULLET_LINES = "bullet_lines"
ELLIPSIS_LINES = "ellipsis_lines"


@dataclass
class QualityConfig:
    """Thresholds of the quality heuristics (Gopher-style defaults)."""
    min_words: int = 20
    max_words: int = 100_000
    min_mean_word_length: float = 2.0
    max_mean_word_length: float = 10.0
    max_symbol_ratio: float = 0.1        # ('#', '...', '…') per word
    min_alpha_ratio: float = 0.7         # words containing a letter
    max_dup_line_fraction: float = 0.3   # duplicated lines, by characters
    max_top_ngram_fraction: float = 0.2  # characters covered by the most frequent word 3-gram
    max_bullet_fraction: float = 0.9
    max_ellipsis_fraction: float = 0.3

    def __post_init__(self):
        check_config(self, fractions=("min_alpha_ratio", "max_dup_line_fraction", "max_top_ngram_fraction",
                                      "max_bullet_fraction", "max_ellipsis_fraction"))


_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\ufeff]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def normalize(text: str, form: str = "NFC") -> str:
    """Unicode-normalise, unify newlines, drop control and zero-width characters (keeps \\n and \\t)."""
    if form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ValueError(f"unknown normalisation form {form!r}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize(form, text)
    return _CONTROL.sub("", text)


def words(text: str) -> list[str]:
    """Whitespace tokens, with every CJK character split out as its own word."""
    out = []
    for tok in text.split():
        if _CJK.search(tok):
            out.extend(p for p in _CJK.split(tok) if p)
            out.extend(_CJK.findall(tok))
        else:
            out.append(tok)
    return out


def quality_reasons(text: str, cfg: QualityConfig | None = None) -> list[str]:
    """Reason codes for every heuristic the document fails ([] = keep)."""
    cfg = cfg or QualityConfig()
    reasons = []
    ws = words(text)
    n = len(ws)
    if n < cfg.min_words:
        reasons.append(TOO_SHORT)
        return reasons
    if n > cfg.max_words:
        reasons.append(TOO_LONG)
    mean_len = sum(len(w) for w in ws) / n
    if not (cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length) and not _CJK.search(text):
        reasons.append(MEAN_WORD_LENGTH)
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_ratio:
        reasons.append(SYMBOL_RATIO)
    alpha = sum(1 for w in ws if any(c.isalpha() for c in w))
    if alpha / n < cfg.min_alpha_ratio:
        reasons.append(ALPHA_RATIO)
    lines = [l.strip() for l in text.split("\n") if l.strip()]
    if lines:
        counts = Counter(lines)
        dup_chars = sum(len(l) * (c - 1) for l, c in counts.items() if c > 1)
        if dup_chars / max(1, sum(len(l) for l in lines)) > cfg.max_dup_line_fraction:
            reasons.append(DUP_LINES)
        if sum(l.startswith(("•", "-", "*", "·")) for l in lines) / len(lines) > cfg.max_bullet_fraction:
            reasons.append(BULLET_LINES)
        if sum(l.endswith(("...", "…")) for l in lines) / len(lines) > cfg.max_ellipsis_fraction:
            reasons.append(ELLIPSIS_LINES)
    if n >= 3:
        grams = Counter(zip(ws, ws[1:], ws[2:]))
        gram, c = grams.most_common(1)[0]
        if c > 1 and c * sum(len(w) for w in gram) / max(1, sum(len(w) for w in ws)) > cfg.max_top_ngram_fraction:
            reasons.append(REPEATED_NGRAMS)
    return reasons


# ---- PII ---------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
_IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![:\w])|"
                   r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){0,6}[0-9A-Fa-f]{1,4}(?![:\w])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?![\w])")


def scrub_pii(text: str, email: str = "<EMAIL>", phone: str = "<PHONE>", ip: str = "<IP>") -> tuple[str, Counter]:
    """Replace e-mail addresses, IPv4/IPv6 addresses and phone numbers; returns (text, counts)."""
    counts: Counter = Counter()

    def sub(pattern, repl, key, s):
        s, k = pattern.subn(repl, s)
        counts[key] += k
        return s

    text = sub(_EMAIL, email, "email", text)
    text = sub(_IPV6, ip, "ip", text)
    text = sub(_IPV4, ip, "ip", text)
    text = sub(_PHONE, phone, "phone", text)
    return text, +counts


# ---- the whole step ----------------------------------------------------------------------
@dataclass
class CleanReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)   # reason -> documents
    pii: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "pii": dict(self.pii)}


def clean_documents(docs, cfg: QualityConfig | None = None, form: str = "NFC",
                    pii: bool = True) -> tuple[list[str], CleanReport]:
    """Normalise, scrub PII and filter; every dropped document is counted under its first reason."""
    report = CleanReport()
    kept = []
    for doc in docs:
        if not isinstance(doc, str):
            raise TypeError(f"documents must be str, got {type(doc).__name__}")
        text = normalize(doc, form)
        if pii:
            text, c = scrub_pii(text)
            report.pii.update(c)
        reasons = quality_reasons(text, cfg)
        if reasons:
            report.dropped[reasons[0]] += 1
            continue
        kept.append(text)
        report.kept += 1
    return kept, report
