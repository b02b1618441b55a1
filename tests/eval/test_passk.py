"""pass@k: the unbiased estimator against the closed form 1 - C(n-c, k) / C(n, k)."""
from __future__ import annotations

import math
import random

import pytest

from llmforge.eval.humaneval import pass_at_k, score


@pytest.mark.parametrize("n,c,k,expected", [
    (1, 0, 1, 0.0), (1, 1, 1, 1.0), (2, 1, 1, 0.5), (2, 1, 2, 1.0), (2, 0, 2, 0.0),
    (10, 3, 5, 1 - 21 / 252), (5, 2, 1, 0.4), (4, 1, 2, 0.5), (20, 0, 10, 0.0), (20, 11, 10, 1.0),
])
def test_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_closed_form_on_random_cases():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ref = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_pass_at_1_is_the_pass_rate_and_score_averages_problems():
    status = [["passed", "failed", "failed", "passed"], ["failed"] * 4, ["passed"] * 4]
    r = score(status, ks=(1, 2))
    assert r["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert r["pass@2"] == pytest.approx(((1 - math.comb(2, 2) / math.comb(4, 2)) + 0 + 1) / 3)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
