"""Cross-entropy kernel (CPU per ISA) against float64 torch: per-row loss, gradient at the
logits for any incoming gradient, ignored rows, extreme logits, gradcheck, opcheck, bad input;
and the fused output layer + loss (linear_cross_entropy) against F.linear + F.cross_entropy."""
from __future__ import annotations

import importlib

import pytest
import torch

from llmforge.ops import cross_entropy, cross_entropy_reference, linear_cross_entropy

ce_module = importlib.import_module("llmforge.ops.cross_entropy")   # the module (ops.cross_entropy is the function)

# (dtype, loss atol/rtol, grad atol/rtol)
TOLS = [(torch.float32, 2e-5, 2e-6, 1e-7, 1e-5), (torch.bfloat16, 1e-4, 1e-5, 1e-6, 2**-7),
        (torch.float64, 1e-12, 1e-12, 1e-14, 1e-12)]
SHAPES = [(1, 1), (1, 7), (5, 33), (17, 1000), (64, 4096), (3, 9001)]


def _inputs(n, v, dtype, scale=3.0, ignore_frac=0.25):
    logits = (torch.randn(n, v, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[torch.rand(n) < ignore_frac] = -100
    return logits, targets


def _reference(logits, targets, grad_loss, ignore_index=-100):
    x = logits.detach().double().clone().requires_grad_(True)
    loss = cross_entropy_reference(x, targets, ignore_index)
    loss.backward(grad_loss.double())
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype,latol,lrtol,gatol,grtol", TOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(cpu_isa, shape, dtype, latol, lrtol, gatol, grtol):
    logits, targets = _inputs(*shape, dtype)
    grad_loss = torch.randn(shape[0], dtype=torch.float64)
    ref_loss, ref_grad = _reference(logits, targets, grad_loss)
    x = logits.clone().requires_grad_(True)
    loss = cross_entropy(x, targets)
    assert loss.shape == (shape[0],)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(loss.double(), ref_loss, atol=latol, rtol=lrtol)
    assert bool((loss[targets == -100] == 0).all())
    loss.backward(grad_loss.to(loss.dtype))
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), ref_grad, atol=gatol, rtol=grtol)
    assert bool((x.grad[targets == -100] == 0).all())


def test_sum_matches_torch_mean_and_other_ignore_index(cpu_isa):
    logits, targets = _inputs(300, 517, torch.float32, ignore_frac=0.0)
    targets[::7] = 3  # an ignore_index that is also a valid class elsewhere is still ignored
    x, x_ref = logits.clone().requires_grad_(True), logits.double().clone().requires_grad_(True)
    (cross_entropy(x, targets, ignore_index=3).sum() / (targets != 3).sum()).backward()
    torch.nn.functional.cross_entropy(x_ref, targets, ignore_index=3).backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=1e-8, rtol=1e-5)


def test_extreme_logits(cpu_isa):
    # huge spreads (softmax underflows to exactly 0 for most classes), a dominant class, -inf logits
    logits = torch.randn(6, 300, dtype=torch.float64) * 200
    logits[1] = 0.0
    logits[2, 5] = 1e4
    logits[3, :150] = float("-inf")
    targets = torch.tensor([0, 299, 5, 200, 7, 150])
    grad_loss = torch.ones(6, dtype=torch.float64)
    ref_loss, ref_grad = _reference(logits, targets, grad_loss)
    x = logits.float().requires_grad_(True)
    loss = cross_entropy(x, targets)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-3, rtol=1e-5)
    loss.sum().backward()
    torch.testing.assert_close(x.grad.double(), ref_grad, atol=1e-6, rtol=1e-5)
    nan = torch.randn(2, 40)
    nan[0, 3] = float("nan")
    assert torch.isnan(cross_entropy(nan, torch.tensor([1, 2]))[0]) and torch.isfinite(cross_entropy(nan, torch.tensor([1, 2]))[1])


def test_gradcheck_float64(cpu_isa):
    logits, targets = _inputs(7, 13, torch.float64)
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits.requires_grad_(True),))


def test_opcheck():
    logits, targets = _inputs(9, 31, torch.float32)
    torch.library.opcheck(torch.ops.llmforge.cross_entropy_fwd.default, (logits.requires_grad_(True), targets, -100))
    _, lse = torch.ops.llmforge.cross_entropy_fwd(logits.detach(), targets, -100)
    torch.library.opcheck(torch.ops.llmforge.cross_entropy_bwd.default,
                          (torch.randn(9), logits.detach(), targets, lse, -100))


def test_bad_input():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="outside"):
        cross_entropy(x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="outside"):
        cross_entropy(x, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(TypeError, match="int64"):
        cross_entropy(x, torch.tensor([0, 1, 2, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="targets has shape"):
        cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="contiguous"):
        cross_entropy(torch.randn(10, 4).t(), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="rows, vocab"):
        cross_entropy(torch.randn(4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="rows, vocab"):
        cross_entropy(torch.randn(4, 0), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 2e-2, 2e-2),
                                             (torch.float64, 1e-11, 1e-10)])
@pytest.mark.parametrize("N,D,V", [(1, 1, 2), (37, 19, 301), (130, 64, 1000), (64, 48, 4096)])
@pytest.mark.parametrize("chunk_rows", [None, 16])         # 16: several row chunks, the last one short
def test_linear_cross_entropy(cpu_isa, N, D, V, dtype, atol, rtol, chunk_rows, monkeypatch):
    if chunk_rows:
        monkeypatch.setattr(ce_module, "MIN_CHUNK_ROWS", chunk_rows)
        monkeypatch.setattr(ce_module, "CHUNK_ELEMS", 1)
    h = (torch.randn(N, D, dtype=torch.float64)).to(dtype)
    w = (torch.randn(V, D, dtype=torch.float64) / D ** 0.5).to(dtype)
    targets = torch.randint(0, V, (N,))
    targets[torch.rand(N) < 0.2] = -100
    hs, ws = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    total = linear_cross_entropy(hs, ws, targets)
    (total * 0.37).backward()                                   # an incoming gradient other than 1
    h64, w64 = h.double().requires_grad_(True), w.double().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(h64 @ w64.t(), targets, reduction="sum")
    (ref * 0.37).backward()
    assert total.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(total.double(), ref.detach(), atol=atol * N, rtol=rtol)
    torch.testing.assert_close(hs.grad.double(), h64.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(ws.grad.double(), w64.grad, atol=atol * 4, rtol=rtol)


def test_linear_cross_entropy_backward_twice_and_no_grad():
    h, w = torch.randn(20, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    t = torch.randint(0, 50, (20,))
    total = linear_cross_entropy(h, w, t)
    total.backward(retain_graph=True)
    g1 = h.grad.clone()
    total.backward()                                            # the saved gradient is not consumed
    torch.testing.assert_close(h.grad, 2 * g1)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), cross_entropy(h @ w.t(), t).sum())
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy(a, b, t[:5]),
                                    (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
                                     torch.randn(50, 3, dtype=torch.float64, requires_grad=True)))
    with pytest.raises(ValueError, match="outside"):
        linear_cross_entropy(h, w, torch.full((20,), 50))
    with pytest.raises(TypeError, match="int64"):
        linear_cross_entropy(h, w, t.int())
    with pytest.raises(ValueError, match="expected"):
        linear_cross_entropy(h, w[:, :5], t)
