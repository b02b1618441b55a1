"""Merge methods against hand-computed expectations on small tensors."""
from __future__ import annotations

import math

import pytest
import torch

from llmforge.merge import merge_dare, merge_linear, merge_slerp, merge_task_arithmetic, merge_ties


def _sd(seed, n=7):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, 3, generator=g, dtype=torch.float64), "step": torch.tensor(seed)}


def test_linear():
    a, b = _sd(1), _sd(2)
    m = merge_linear([a, b], [3, 1])
    torch.testing.assert_close(m["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert m["step"].item() == 1
    with pytest.raises(ValueError, match="one weight"):
        merge_linear([a, b], [1])


def test_slerp_properties():
    a = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    b = {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}
    m = merge_slerp(a, b, 0.5)["w"]
    # halfway on the arc between the unit directions, scaled like the formula (not renormalised)
    want = math.sin(math.pi / 4) / math.sin(math.pi / 2) * torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(m, want)
    torch.testing.assert_close(merge_slerp(a, b, 0.0)["w"], a["w"])
    torch.testing.assert_close(merge_slerp(a, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(merge_slerp(a, a, 0.3)["w"], a["w"])     # parallel: linear


def test_task_arithmetic_and_ties():
    base = {"w": torch.zeros(4, dtype=torch.float64)}
    t1 = {"w": torch.tensor([1.0, -2.0, 0.1, 3.0], dtype=torch.float64)}
    t2 = {"w": torch.tensor([1.0, 1.0, -0.2, -1.0], dtype=torch.float64)}
    torch.testing.assert_close(merge_task_arithmetic(base, [t1, t2], 0.5)["w"], 0.5 * (t1["w"] + t2["w"]))
    # density 0.5 keeps the two largest of each; signs: e0 +,+ -> +; e1 -2 vs +1 -> sum -1 -> '-'; e3 +3 vs -1 -> '+'
    m = merge_ties(base, [t1, t2], density=0.5)["w"]
    # trimmed: t1 -> [0,-2,0,3], t2 -> [1,1,0,-1]; elected signs [+,-,0,+]; means of agreeing entries
    torch.testing.assert_close(m, torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float64))


def test_dare_is_unbiased_and_seeded():
    base = {"w": torch.zeros(20000, dtype=torch.float64)}
    t = {"w": torch.ones(20000, dtype=torch.float64)}
    m = merge_dare(base, [t], drop=0.9, seed=3)["w"]
    assert ((m == 0) | ((m - 10.0).abs() < 1e-9)).all()
    assert abs(m.mean().item() - 1.0) < 0.08
    assert torch.equal(m, merge_dare(base, [t], drop=0.9, seed=3)["w"])


def test_bad_inputs():
    a = _sd(1)
    with pytest.raises(ValueError, match="different keys"):
        merge_linear([a, {"w": a["w"]}])
    with pytest.raises(ValueError, match="shape"):
        merge_linear([a, {"w": torch.zeros(2, 2, dtype=torch.float64), "step": torch.tensor(1)}])
    bad = {"w": a["w"].clone(), "step": torch.tensor(0)}
    bad["w"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        merge_linear([a, bad])
    with pytest.raises(ValueError):
        merge_dare(a, [a], drop=1.0)
