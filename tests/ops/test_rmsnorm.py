"""RMSNorm kernels (CPU per ISA, CUDA) against a float64 reference; autograd; opcheck; bad input."""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import rmsnorm, rmsnorm_reference, rmsnorm_residual, rmsnorm_residual_reference

# (dtype, atol, rtol) together: bf16 output rounding is 2^-9 relative.
CPU_TOLS = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 2**-8), (torch.float64, 1e-12, 1e-12)]
CUDA_TOLS = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-4, 2**-10), (torch.bfloat16, 1e-5, 2**-8)]
SHAPES = [(1, 1), (3, 7), (37, 257), (5, 3, 1001), (64, 4096), (2, 9, 33)]


def _close(out, ref64, atol, rtol):
    torch.testing.assert_close(out.to(torch.float64), ref64, atol=atol, rtol=rtol)


def _inputs(shape, dtype, device="cpu"):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).to(device)
    w = torch.randn(shape[-1], dtype=torch.float64).to(dtype).to(device)
    return x, w


def _ref64(x, w, eps):
    xf, wf = x.double(), w.double()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * wf


@pytest.mark.parametrize("dtype,atol,rtol", CPU_TOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_cpu(cpu_isa, shape, dtype, atol, rtol):
    x, w = _inputs(shape, dtype)
    eps = 1e-5
    _close(rmsnorm(x, w, eps), _ref64(x, w, eps), atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", CPU_TOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_residual_forward_cpu(cpu_isa, shape, dtype, atol, rtol):
    x, w = _inputs(shape, dtype)
    r = torch.randn(shape, dtype=torch.float64).to(dtype)
    y, h = rmsnorm_residual(x, r, w, 1e-6)
    h_ref = (x.double() + r.double()).to(dtype)  # h is stored in x's dtype, exactly rounded
    assert torch.equal(h, h_ref)
    _close(y, _ref64(h_ref, w, 1e-6), atol, rtol)


def _grad_tols(dtype):
    return {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2**-7), torch.float64: (1e-10, 1e-10)}[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(3, 7), (37, 257), (4, 5, 1001), (33, 4096)])
@pytest.mark.parametrize("residual", [False, True])
def test_backward_cpu(cpu_isa, shape, dtype, residual):
    x, w = _inputs(shape, dtype)
    r = torch.randn(shape, dtype=dtype)
    dy = torch.randn(shape, dtype=dtype)
    dh = torch.randn(shape, dtype=dtype)
    xs, ws, rs = (t.clone().requires_grad_(True) for t in (x, w, r))
    if residual:
        y, h = rmsnorm_residual(xs, rs, ws, 1e-6)
        torch.autograd.backward((y, h), (dy, dh))
        h64 = (x.double() + r.double()).to(dtype).double().requires_grad_(True)
        w64 = w.double().requires_grad_(True)
        torch.autograd.backward((_ref64(h64, w64, 1e-6), h64), (dy.double(), dh.double()))
        ref_dx, ref_dw = h64.grad, w64.grad
        assert torch.equal(xs.grad, rs.grad)
    else:
        y = rmsnorm(xs, ws, 1e-6)
        y.backward(dy)
        x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
        _ref64(x64, w64, 1e-6).backward(dy.double())
        ref_dx, ref_dw = x64.grad, w64.grad
    atol_rel, rtol = _grad_tols(dtype)
    # dx has cancellations: scale the absolute tolerance by the gradient's size.
    _close(xs.grad, ref_dx, atol_rel * ref_dx.abs().max().item(), rtol)
    _close(ws.grad, ref_dw, atol_rel * ref_dw.abs().max().item(), rtol)


def test_gradcheck_float64(cpu_isa):
    x = torch.randn(4, 3, 19, dtype=torch.float64, requires_grad=True)
    w = torch.randn(19, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, 3, 19, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rmsnorm(a, b, 1e-6), (x, w))
    assert torch.autograd.gradcheck(lambda a, c, b: rmsnorm_residual(a, c, b, 1e-6), (x, r, w))


def test_double_backward_raises_clearly():
    x = torch.randn(3, 19, dtype=torch.float64, requires_grad=True)
    w = torch.randn(19, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(rmsnorm(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        gx.sum().backward()


def test_opcheck():
    x = torch.randn(5, 3, 67, requires_grad=True)
    w = torch.randn(67, requires_grad=True)
    r = torch.randn(5, 3, 67, requires_grad=True)
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_fwd.default, (x, w, 1e-6))
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_residual_fwd.default, (x, r, w, 1e-6))
    y, rstd = torch.ops.llmforge.rmsnorm_fwd(x.detach(), w.detach(), 1e-6)
    dy = torch.randn(5, 3, 67)
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_bwd.default, (dy, x.detach(), w.detach(), rstd, None))
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_bwd.default, (dy, x.detach(), w.detach(), rstd, dy * 2))


def test_torch_compile_fullgraph():
    x, w = _inputs((6, 130), torch.float32)
    f = torch.compile(lambda a, b: rmsnorm(a, b) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x, w), rmsnorm(x, w) * 2)


def test_reference_matches_float64_formula():
    x, w = _inputs((7, 33), torch.float64)
    torch.testing.assert_close(rmsnorm_reference(x, w, 1e-6), _ref64(x, w, 1e-6))
    r = torch.randn(7, 33, dtype=torch.float64)
    y, h = rmsnorm_residual_reference(x, r, w, 1e-6)
    torch.testing.assert_close(y, _ref64(x + r, w, 1e-6))


def test_isas_agree_bitwise_for_float64_and_closely_for_float32():
    x, w = _inputs((19, 515), torch.float32)
    outs = {}
    before = _C.cpu_isa()
    try:
        for isa in ("scalar", _C.cpu_best_isa()):
            _C.set_cpu_isa(isa)
            outs[isa] = rmsnorm(x, w)
    finally:
        _C.set_cpu_isa(before)
    a, b = outs.values()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_backward_deterministic():
    x, w = _inputs((301, 263), torch.float32)
    dy = torch.randn_like(x)
    grads = []
    for _ in range(2):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        rmsnorm(xs, ws).backward(dy)
        grads.append((xs.grad, ws.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_nan_stays_in_its_row():
    x, w = _inputs((4, 40), torch.float32)
    x[2, 5] = float("nan")
    y = rmsnorm(x, w)
    assert torch.isnan(y[2]).all()
    assert torch.isfinite(y[[0, 1, 3]]).all()


def test_threads_follow_torch():
    x, w = _inputs((64, 300), torch.float32)
    ref = rmsnorm(x, w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.testing.assert_close(rmsnorm(x, w), ref, atol=0, rtol=0)
    finally:
        torch.set_num_threads(before)


def test_zero_rows_is_a_noop():
    x = torch.randn(0, 16)
    w = torch.randn(16)
    assert rmsnorm(x, w).shape == (0, 16)


# ---- bad input: a Python exception, never a crash -----------------------------------
def test_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="dtype"):
        rmsnorm(torch.randint(0, 5, (3, 8)), torch.randn(8))
    with pytest.raises(TypeError, match="float16"):
        rmsnorm(torch.randn(3, 8, dtype=torch.float16), torch.randn(8, dtype=torch.float16))
    with pytest.raises(TypeError, match="must match"):
        rmsnorm(torch.randn(3, 8), torch.randn(8, dtype=torch.float64))


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="weight has shape"):
        rmsnorm(torch.randn(3, 8), torch.randn(9))
    with pytest.raises(ValueError, match="weight has shape"):
        rmsnorm(torch.randn(3, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="residual"):
        rmsnorm_residual(torch.randn(3, 8), torch.randn(4, 8), torch.randn(8))


def test_rejects_non_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm(torch.randn(8, 3).t(), torch.randn(8))
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm(torch.randn(3, 8), torch.randn(16)[::2])
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm_residual(torch.randn(3, 8), torch.randn(8, 3).t(), torch.randn(8))


def test_rejects_wrong_device():
    with pytest.raises((ValueError, RuntimeError)):
        rmsnorm(torch.randn(3, 8), torch.randn(8, device="meta"))


def test_rejects_empty_and_zero_size():
    with pytest.raises(ValueError, match="hidden size"):
        rmsnorm(torch.randn(3, 0), torch.randn(0))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        rmsnorm(torch.tensor(1.0), torch.randn(1))


def test_rejects_bad_eps():
    x, w = _inputs((3, 8), torch.float32)
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            rmsnorm(x, w, eps)


def test_native_boundary_rejects_bad_arguments():
    x, w = _inputs((3, 8), torch.float32)
    y, rstd = torch.empty_like(x), torch.empty(3)
    with pytest.raises(TypeError, match="not a tensor"):
        _C.rmsnorm_fwd([1.0], None, w, y, None, rstd, 1e-6, 1)
    with pytest.raises(TypeError, match="None"):
        _C.rmsnorm_fwd(x, None, None, y, None, rstd, 1e-6, 1)
    with pytest.raises(ValueError, match="rstd has shape"):
        _C.rmsnorm_fwd(x, None, w, y, None, torch.empty(4), 1e-6, 1)
    with pytest.raises(TypeError, match="rstd"):
        _C.rmsnorm_fwd(x, None, w, y, None, torch.empty(3, dtype=torch.float64), 1e-6, 1)
    with pytest.raises(ValueError, match="go together"):
        _C.rmsnorm_fwd(x, torch.randn(3, 8), w, y, None, rstd, 1e-6, 1)
    with pytest.raises(ValueError, match="threads"):
        _C.rmsnorm_fwd(x, None, w, y, None, rstd, 1e-6, 0)
    with pytest.raises(ValueError, match="dimensions"):
        _C.rmsnorm_fwd(x.view(3, 2, 4), None, w, y, None, rstd, 1e-6, 1)
    # numpy arrays cross the same boundary
    import numpy as np
    xn = x.numpy()
    yn = np.empty_like(xn)
    _C.rmsnorm_fwd(xn, None, w.numpy(), yn, None, np.empty(3, dtype=np.float32), 1e-6, 1)
    torch.testing.assert_close(torch.from_numpy(yn), rmsnorm(x, w))


# ---- CUDA ---------------------------------------------------------------------------------
# (5, 12288): at the 48 KiB limit of the backward's shared dW accumulator (plus its static buffer)
CUDA_SHAPES = [(1, 1), (3, 7), (97, 1000), (5, 3, 1001), (64, 4096), (17, 8192), (5, 12288), (3, 13000), (2, 40000)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol,rtol", CUDA_TOLS)
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_forward_cuda(shape, dtype, atol, rtol):
    x, w = _inputs(shape, dtype, "cuda")
    _close(rmsnorm(x, w, 1e-6).cpu(), _ref64(x.cpu(), w.cpu(), 1e-6), atol, rtol)
    r = torch.randn(shape, dtype=dtype, device="cuda")
    y, h = rmsnorm_residual(x, r, w, 1e-6)
    h_ref = (x.double() + r.double()).to(dtype)
    assert torch.equal(h, h_ref)
    _close(y.cpu(), _ref64(h_ref.cpu(), w.cpu(), 1e-6), atol, rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_backward_cuda(shape, dtype):
    x, w = _inputs(shape, dtype, "cuda")
    dy = torch.randn(shape, dtype=dtype, device="cuda")
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    rmsnorm(xs, ws, 1e-6).backward(dy)
    x64, w64 = x.double().cpu().requires_grad_(True), w.double().cpu().requires_grad_(True)
    _ref64(x64, w64, 1e-6).backward(dy.double().cpu())
    atol_rel, rtol = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 2**-9), torch.bfloat16: (2e-2, 2**-7)}[dtype]
    _close(xs.grad.cpu(), x64.grad, atol_rel * x64.grad.abs().max().item(), rtol)
    _close(ws.grad.cpu(), w64.grad, atol_rel * w64.grad.abs().max().item(), rtol)


@pytest.mark.cuda
def test_cuda_rejects_mixed_devices():
    with pytest.raises((ValueError, RuntimeError)):
        rmsnorm(torch.randn(3, 8, device="cuda"), torch.randn(8))
