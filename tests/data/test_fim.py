"""Fill-in-the-middle rewrites keep every token and put the middle last; rate 0 is a no-op."""
from __future__ import annotations

import random

import pytest

from llmforge.data.fim import fim_transform

P, S, M = 1000, 1001, 1002


def test_psm_and_spm_layouts():
    doc = list(range(50))
    rng = random.Random(0)
    for _ in range(200):
        out = fim_transform(doc, rng, 1.0, P, S, M)
        assert out[0] == P and sorted(t for t in out if t < 1000) == doc
        i_s, i_m = out.index(S), out.index(M)
        prefix, suffix, middle = out[1:i_s], out[i_s + 1:i_m], out[i_m + 1:]
        assert prefix + middle + suffix == doc
    out = fim_transform(doc, random.Random(1), 1.0, P, S, M, spm_rate=1.0)
    assert out[:2] == [P, S]
    i_m = out.index(M)
    suffix, rest = out[2:i_m], out[i_m + 1:]
    assert rest + suffix == doc


def test_rate():
    doc = list(range(20))
    assert fim_transform(doc, random.Random(0), 0.0, P, S, M) == doc
    rng = random.Random(3)
    share = sum(fim_transform(doc, rng, 0.3, P, S, M)[0] == P for _ in range(4000)) / 4000
    assert abs(share - 0.3) < 0.03
    with pytest.raises(ValueError):
        fim_transform(doc, rng, 1.5, P, S, M)
