"""llmforge.train.optim.AdamW (fused native step, csrc/cpu/adamw.cpp) against a float64
reference of AdamW's update and against torch.optim.AdamW; state dict exchange; the torch-op
path for other dtypes; bad input."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from llmforge import _C
from llmforge.train.optim import AdamW, make_optimizer


def _reference(p, grads, lr, b1, b2, eps, wd):
    """AdamW in float64, written out from the paper's (and torch's) update."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * mhat / (vhat.sqrt() + eps)
    return p, m, v


@pytest.mark.parametrize("n", [1, 7, 1001, 40000])
def test_kernel_matches_float64(cpu_isa, n):
    lr, b1, b2, eps, wd = 3e-3, 0.9, 0.95, 1e-8, 0.1
    p0 = torch.randn(n)
    grads = [torch.randn(n) * 10 ** torch.empty(n).uniform_(-4, 1) for _ in range(6)]
    p, m, v = p0.clone(), torch.zeros(n), torch.zeros(n)
    for t, g in enumerate(grads, start=1):
        _C.adamw_step(p, g, m, v, lr, b1, b2, eps, wd, t, torch.get_num_threads())
    rp, rm, rv = _reference(p0, grads, lr, b1, b2, eps, wd)
    gmax = torch.stack(grads).abs().amax(0).double()       # the moments' scale, element by element
    assert ((m.double() - rm).abs() / gmax).max() < 2e-6
    assert ((v.double() - rv).abs() / gmax**2).max() < 2e-6
    # each step moves a parameter by at most ~lr: compare the moves, relative to lr
    assert ((p.double() - rp).abs() / lr).max() < 1e-3


def test_matches_torch_adamw_with_groups_and_schedule():
    torch.manual_seed(0)
    a = [torch.randn(33, 17, requires_grad=True), torch.randn(17, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    ours = AdamW([{"params": a[:1], "weight_decay": 0.1}, {"params": a[1:], "weight_decay": 0.0}], lr=1e-2,
                 betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": b[:1], "weight_decay": 0.1}, {"params": b[1:], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), foreach=False)
    for step in range(8):
        for opt in (ours, ref):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (0.8 ** step)
        grads = [torch.randn_like(t) for t in a]
        for params, opt in ((a, ours), (b, ref)):
            for t, g in zip(params, grads):
                t.grad = g.clone()
            opt.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5)
    sd = ours.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and float(sd["state"][0]["step"]) == 8


def test_state_dict_moves_between_torch_and_ours():
    p = torch.randn(50, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ref = torch.optim.AdamW([q], lr=1e-2, foreach=False)
    for _ in range(3):
        q.grad = torch.randn(50)
        ref.step()
    ours = AdamW([p], lr=1e-2)
    p.data.copy_(q.data)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))   # (state_dict shares its tensors)
    g = torch.randn(50)
    p.grad, q.grad = g.clone(), g.clone()
    ours.step()
    ref.step()
    torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    back = torch.optim.AdamW([q], lr=1e-2, foreach=False)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert float(back.state_dict()["state"][0]["step"]) == 4


def test_other_dtypes_take_the_torch_path():
    p = torch.randn(40, dtype=torch.float64, requires_grad=True)
    grads = [torch.randn(40, dtype=torch.float64) for _ in range(4)]
    opt = AdamW([p], lr=5e-3, weight_decay=0.05)
    for g in grads:
        p.grad = g
        opt.step()
    assert torch.isfinite(p).all() and opt.state[p]["exp_avg"].dtype == torch.float64
    start = torch.randn(40, dtype=torch.float64)
    q = start.clone().requires_grad_()
    opt = AdamW([q], lr=5e-3, weight_decay=0.05)
    for g in grads:
        q.grad = g
        opt.step()
    ref, _, _ = _reference(start, grads, 5e-3, 0.9, 0.999, 1e-8, 0.05)
    torch.testing.assert_close(q.detach(), ref, atol=1e-12, rtol=1e-12)


def test_make_optimizer_uses_it():
    model = torch.nn.Linear(8, 4)
    opt = make_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_bad_input():
    p, g, m, v = (torch.randn(10) for _ in range(4))
    with pytest.raises(ValueError, match="lr"):
        AdamW([torch.randn(3, requires_grad=True)], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW([torch.randn(3, requires_grad=True)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AdamW([torch.randn(3, requires_grad=True)], eps=0.0)
    with pytest.raises(TypeError, match="float32"):
        _C.adamw_step(p.double(), g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        _C.adamw_step(p, torch.randn(11), m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1)
    with pytest.raises(ValueError, match="share memory"):
        _C.adamw_step(p, g, m, m, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1)
    with pytest.raises(ValueError, match="contiguous"):
        _C.adamw_step(torch.randn(10, 2)[:, 0], g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1)
    with pytest.raises(ValueError, match="step"):
        _C.adamw_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0, 1)
    with pytest.raises(ValueError, match="lr"):
        _C.adamw_step(p, g, m, v, math.nan, 0.9, 0.999, 1e-8, 0.0, 1, 1)
    opt = AdamW([torch.randn(4, 3, requires_grad=True)])
    opt.param_groups[0]["params"][0].grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
