"""SwiGLU kernels (CPU per ISA; separate and packed operands) against float64 references;
autograd, gradcheck, opcheck, special values, bad input."""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference

TOLS = [(torch.float32, 1e-6, 2e-6), (torch.bfloat16, 1e-5, 2**-8), (torch.float64, 1e-14, 1e-14)]
SHAPES = [(1,), (7,), (3, 1001), (2, 5, 33), (4, 4096), (1, 9000)]


def _silu64(g):
    return g / (1 + torch.exp(-g))


def _inputs(shape, dtype, scale=4.0):
    g = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    u = torch.randn(shape, dtype=torch.float64).to(dtype)
    return g, u


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(cpu_isa, shape, dtype, atol, rtol):
    g, u = _inputs(shape, dtype)
    ref = _silu64(g.double()) * u.double()
    out = swiglu(g, u)
    assert out.dtype == dtype and out.shape == g.shape
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    x = torch.cat([g, u], -1)
    torch.testing.assert_close(swiglu_packed(x).double(), ref, atol=atol, rtol=rtol)


def test_wide_range_and_special_values(cpu_isa):
    g = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.0, 88.5, -87.5, -89.0])])
    out = swiglu(g, torch.ones_like(g))
    ref = _silu64(g.double())
    # below ~1e-35 the float32 result underflows (torch returns -0 there too)
    torch.testing.assert_close(out.double(), ref, atol=1e-35, rtol=1e-6)
    sp = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 5)
    torch.testing.assert_close(swiglu(sp, torch.ones_like(sp)), torch.nn.functional.silu(sp), equal_nan=True)


def _grads64(g, u, dy):
    g64, u64 = g.detach().double().clone().requires_grad_(True), u.detach().double().clone().requires_grad_(True)
    (_silu64(g64) * u64).backward(dy.double())
    return g64.grad, u64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 1001), (2, 3, 257), (2, 4096)])
def test_backward(cpu_isa, shape, dtype):
    g, u = _inputs(shape, dtype)
    dy = torch.randn(shape, dtype=torch.float64).to(dtype)
    rg, ru = _grads64(g, u, dy)
    atol, rtol = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-4, 2**-7), torch.float64: (1e-13, 1e-13)}[dtype]
    gs, us = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
    swiglu(gs, us).backward(dy)
    torch.testing.assert_close(gs.grad.double(), rg, atol=atol * rg.abs().max().item(), rtol=rtol)
    torch.testing.assert_close(us.grad.double(), ru, atol=atol * ru.abs().max().item(), rtol=rtol)
    xs = torch.cat([g, u], -1).requires_grad_(True)
    swiglu_packed(xs).backward(dy)
    torch.testing.assert_close(xs.grad.double(), torch.cat([rg, ru], -1),
                               atol=atol * max(rg.abs().max().item(), ru.abs().max().item()), rtol=rtol)


def test_gradcheck_float64(cpu_isa):
    g = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (g, u))
    x = torch.randn(2, 3, 18, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu_packed, (x,))


def test_packed_first_half_is_gate():
    x = torch.randn(4, 10)
    torch.testing.assert_close(swiglu_packed(x), swiglu(x[:, :5].contiguous(), x[:, 5:].contiguous()))
    torch.testing.assert_close(swiglu_packed_reference(x.double()), swiglu_reference(*x.double().chunk(2, -1)))


def test_opcheck():
    g, u = torch.randn(5, 3, 67, requires_grad=True), torch.randn(5, 3, 67, requires_grad=True)
    x = torch.randn(5, 3, 134, requires_grad=True)
    torch.library.opcheck(torch.ops.llmforge.swiglu_fwd.default, (g, u))
    torch.library.opcheck(torch.ops.llmforge.swiglu_packed_fwd.default, (x,))
    dy = torch.randn(5, 3, 67)
    torch.library.opcheck(torch.ops.llmforge.swiglu_bwd.default, (dy, g.detach(), u.detach()))
    torch.library.opcheck(torch.ops.llmforge.swiglu_packed_bwd.default, (dy, x.detach()))


def test_isas_agree():
    g, u = _inputs((19, 1003), torch.float32)
    before = _C.cpu_isa()
    try:
        outs = []
        for isa in ("scalar", _C.cpu_best_isa()):
            _C.set_cpu_isa(isa)
            outs.append(swiglu(g, u))
    finally:
        _C.set_cpu_isa(before)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)


def test_zero_rows_is_a_noop():
    assert swiglu(torch.randn(0, 8), torch.randn(0, 8)).shape == (0, 8)
    assert swiglu_packed(torch.randn(0, 3, 8)).shape == (0, 3, 4)


def test_rejects_bad_inputs():
    g = torch.randn(3, 8)
    with pytest.raises(TypeError, match="dtype"):
        swiglu(g.half(), g.half())
    with pytest.raises(TypeError, match="dtype"):
        swiglu(torch.randint(0, 4, (3, 8)), torch.randint(0, 4, (3, 8)))
    with pytest.raises(TypeError, match="must match"):
        swiglu(g, g.double())
    with pytest.raises(ValueError, match="up has shape"):
        swiglu(g, torch.randn(3, 9))
    with pytest.raises(ValueError, match="contiguous"):
        swiglu(torch.randn(8, 3).t(), g)
    with pytest.raises(ValueError, match="positive last dimension"):
        swiglu(torch.randn(3, 0), torch.randn(3, 0))
    with pytest.raises(ValueError, match="positive last dimension"):
        swiglu(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="even"):
        swiglu_packed(torch.randn(3, 7))
    with pytest.raises(ValueError, match="contiguous"):
        swiglu_packed(torch.randn(8, 4).t())
    with pytest.raises((ValueError, RuntimeError)):
        swiglu(g, g.to("meta"))


def test_native_boundary_rejects_bad_arguments():
    g, u = torch.randn(3, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="y has shape"):
        _C.swiglu_fwd(g, u, torch.empty(3, 4), 1)
    with pytest.raises(ValueError, match="y has shape"):
        _C.swiglu_packed_fwd(g, torch.empty(3, 8), 1)
    with pytest.raises(ValueError, match="grad_x"):
        _C.swiglu_packed_bwd(torch.empty(3, 4), g, torch.empty(3, 4), 1)
    with pytest.raises(ValueError, match="threads"):
        _C.swiglu_fwd(g, u, torch.empty(3, 8), 0)
    with pytest.raises(TypeError, match="not a tensor"):
        _C.swiglu_fwd([1.0], u, torch.empty(3, 8), 1)


# ---- CUDA (kernels/swiglu.cu) -----------------------------------------------------------------
CUDA_TOLS = [(torch.float32, 1e-6, 2e-6), (torch.bfloat16, 1e-5, 2**-8), (torch.float16, 1e-5, 2**-10)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol,rtol", CUDA_TOLS)
@pytest.mark.parametrize("shape", SHAPES + [(3, 1003)])
def test_cuda_matches_float64(shape, dtype, atol, rtol):
    g, u = _inputs(shape, dtype)
    gc, uc = g.cuda().requires_grad_(True), u.cuda().requires_grad_(True)
    y = swiglu(gc, uc)
    torch.testing.assert_close(y.cpu().double(), _silu64(g.double()) * u.double(), atol=atol, rtol=rtol)
    dy = torch.randn(shape, dtype=torch.float64).to(dtype)
    y.backward(dy.cuda())
    dg, du = _grads64(g, u, dy)
    atol, rtol = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-4, 2**-7), torch.float16: (1e-4, 2**-9)}[dtype]
    torch.testing.assert_close(gc.grad.cpu().double(), dg, atol=atol, rtol=rtol)
    torch.testing.assert_close(uc.grad.cpu().double(), du, atol=atol, rtol=rtol)
    x = torch.cat([g, u], -1).cuda().requires_grad_(True)
    yp = swiglu_packed(x)
    torch.testing.assert_close(yp.cpu(), y.detach().cpu(), atol=0, rtol=0)  # same kernel, strided views
    yp.backward(dy.cuda())
    torch.testing.assert_close(x.grad.cpu().double(), torch.cat([dg, du], -1), atol=atol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("cols", [1001, 4096])  # scalar and 16-byte paths
def test_cuda_writes_every_output(cols):
    x = torch.randn(5, 2 * cols, device="cuda")
    y = torch.full((5, cols), float("nan"), device="cuda")
    _C.swiglu_packed_fwd(x, y, 1, torch.cuda.current_stream().cuda_stream)
    assert not y.isnan().any()
    dx = torch.full_like(x, float("nan"))
    _C.swiglu_packed_bwd(torch.randn(5, cols, device="cuda"), x, dx, 1, torch.cuda.current_stream().cuda_stream)
    assert not dx.isnan().any()


@pytest.mark.cuda
def test_cuda_rejects_float64_and_mixed_devices():
    with pytest.raises(TypeError, match="float64"):
        swiglu(torch.randn(4, device="cuda", dtype=torch.float64), torch.randn(4, device="cuda", dtype=torch.float64))
    with pytest.raises(ValueError, match="device"):
        swiglu(torch.randn(4, device="cuda"), torch.randn(4))
