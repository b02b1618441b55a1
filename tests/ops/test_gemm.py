"""The float32 CPU GEMM (csrc/cpu/gemm.cpp, per ISA) and ops.linear against float64 references:
every operand layout, k and n blocking edges, accumulation, strided outputs, thread-count
independence, NaN propagation, autograd, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmforge.ops import gemm, linear
from llmforge.ops.gemm import GEMM_MIN_ROWS, mm, uses_gemm

# (M, K, N): tiny, odd, two k blocks (K > 384), n beyond one 2048-column block, tall-thin
SHAPES = [(1, 1, 1), (7, 5, 3), (97, 33, 45), (130, 401, 70), (5, 1000, 17), (13, 17, 2100), (700, 64, 6)]


def _operand(rows, cols, transposed):
    """A (rows, cols) float32 matrix stored row-major, or column-major (a transposed view)."""
    if transposed:
        return torch.randn(cols, rows).t()
    return torch.randn(rows, cols)


def _check(c, a, b, extra=None):
    ref = a.double() @ b.double()
    if extra is not None:
        ref = ref + extra.double()
    scale = (a.double().abs() @ b.double().abs()).max().clamp(min=1.0)
    err = (c.double() - ref).abs().max() / scale
    assert err < 4e-7 * max(1.0, a.shape[1] ** 0.5), f"relative error {err:.2e}"


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64(cpu_isa, shape, ta, tb):
    M, K, N = shape
    a, b = _operand(M, K, ta), _operand(K, N, tb)
    c = gemm(a, b)
    assert c.shape == (M, N) and c.dtype == torch.float32
    _check(c, a, b)


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 5, 0)])
def test_empty(shape):
    M, K, N = shape
    a, b = torch.randn(M, K), torch.randn(K, N)
    c = torch.full((M, N), 7.0)
    gemm(a, b, out=c)
    assert torch.equal(c, torch.zeros(M, N))       # an empty sum is 0
    c = torch.full((M, N), 7.0)
    gemm(a, b, out=c, accumulate=True)
    assert torch.equal(c, torch.full((M, N), 7.0))


@pytest.mark.parametrize("shape", [(97, 33, 45), (130, 801, 70)])
def test_accumulate_and_strided_out(cpu_isa, shape):
    M, K, N = shape
    a, b = torch.randn(M, K), torch.randn(N, K).t()
    wide = torch.randn(M, N + 11)
    before = wide.clone()
    out = wide[:, 3:3 + N]                        # row stride N + 11
    gemm(a, b, out=out, accumulate=True)
    _check(out, a, b, extra=before[:, 3:3 + N])
    assert torch.equal(wide[:, :3], before[:, :3]) and torch.equal(wide[:, 3 + N:], before[:, 3 + N:])
    gemm(a, b, out=out)                           # overwrite
    _check(out, a, b)


def test_result_does_not_depend_on_threads():
    a, b = torch.randn(301, 450), torch.randn(450, 77)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemm(a, b)
        torch.set_num_threads(max(2, n))
        many = gemm(a, b)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, many)


def test_nan_and_inf_propagate(cpu_isa):
    a, b = torch.randn(40, 30), torch.randn(30, 20)
    a[3, 7] = float("nan")
    b[2, 5] = float("inf")
    c = gemm(a, b)
    assert c[3].isnan().all()
    ref = a.double() @ b.double()
    assert torch.equal(c.isnan(), ref.isnan()) and torch.equal(c.isinf(), ref.isinf())


def test_bad_input():
    a, b = torch.randn(8, 5), torch.randn(5, 3)
    with pytest.raises(TypeError, match="float32"):
        gemm(a.double(), b.double())
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm(a, torch.randn(4, 3))
    with pytest.raises(ValueError, match="2-D"):
        gemm(a[None], b)
    with pytest.raises(ValueError, match="row- or column-major"):
        gemm(torch.randn(8, 10)[:, ::2], b)
    with pytest.raises(ValueError, match="shape"):
        gemm(a, b, out=torch.empty(8, 4))
    with pytest.raises(ValueError, match="unit column stride"):
        gemm(a, b, out=torch.empty(3, 8).t())
    with pytest.raises(ValueError, match="share memory"):
        buf = torch.randn(8, 8)
        gemm(buf[:, :5], torch.randn(5, 3), out=buf[:, 5:])
    with pytest.raises(ValueError, match="accumulate"):
        gemm(a, b, accumulate=True)
    with pytest.raises(TypeError, match="float32"):
        gemm(a, b, out=torch.empty(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("frozen_weight", [False, True])
def test_linear_autograd(bias, frozen_weight):
    x = torch.randn(3, 37, 50, requires_grad=True)
    w = (torch.randn(70, 50) / 7).requires_grad_(not frozen_weight)
    b = torch.randn(70, requires_grad=True) if bias else None
    assert uses_gemm(x, w)
    y = linear(x, w, b)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y64 = F.linear(x64, w64, b64)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-5, rtol=1e-5)
    if frozen_weight:
        assert w.grad is None
    else:
        torch.testing.assert_close(w.grad.double(), w64.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad.double(), b64.grad, atol=1e-4, rtol=1e-5)


def test_linear_and_mm_fall_back_where_the_gemm_does_not_apply():
    w = torch.randn(6, 5)
    few = torch.randn(GEMM_MIN_ROWS - 1, 5)
    assert not uses_gemm(few, w) and not uses_gemm(torch.randn(100, 5).double(), w.double())
    torch.testing.assert_close(linear(few, w), F.linear(few, w))
    x64 = torch.randn(100, 5, dtype=torch.float64)
    torch.testing.assert_close(linear(x64, w.double()), F.linear(x64, w.double()))
    torch.testing.assert_close(mm(x64, w.double().t()), x64 @ w.double().t())
    out = torch.zeros(100, 6, dtype=torch.float64)
    mm(x64, w.double().t(), out=out, accumulate=True)
    torch.testing.assert_close(out, x64 @ w.double().t())
    with pytest.raises(ValueError, match="features"):
        linear(torch.randn(100, 4), w)
