"""RMSNorm+GEMM (rmsnorm_linear): both CPU paths per ISA against a float64 reference, odd
M/N/K, the bf16 f32-accumulation buffer, autograd, gradcheck, opcheck, bad input."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from llmforge import _C
from llmforge.ops import rmsnorm_linear, rmsnorm_linear_reference

rg = importlib.import_module("llmforge.ops.rmsnorm_gemm")

EPS = 1e-6
# (M, N, K): 1, 17, 97, 257 and friends; K > 256 crosses the kernel's k blocks
SHAPES = [(1, 1, 1), (1, 17, 97), (17, 97, 257), (97, 257, 17), (257, 17, 97), (5, 33, 600), (40, 50, 1000),
          (6, 16, 256), (13, 3, 2)]


def _inputs(M, N, K, dtype):
    x = (torch.randn(M, K, dtype=torch.float64) * 3).to(dtype)
    g = (1 + 0.5 * torch.randn(K, dtype=torch.float64)).to(dtype)
    w = (torch.randn(N, K, dtype=torch.float64) / K**0.5).to(dtype)
    return x, g, w


def _ref64(x, g, w):
    xf = x.double()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * g.double()) @ w.double().t()


def _run(x, g, w, path):
    return torch.ops.llmforge.rmsnorm_linear_fwd(x, g, w, EPS, path)


def _torch_same_dtype(x, g, w):
    return F.rms_norm(x, (x.shape[-1],), g, EPS) @ w.t()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", [0, 1, 2])
def test_forward(cpu_isa, shape, dtype, path):
    M, N, K = shape
    x, g, w = _inputs(M, N, K, dtype)
    y, rstd = _run(x, g, w, path)
    assert y.shape == (M, N) and y.dtype == dtype
    ref = _ref64(x, g, w)
    rstd_ref = torch.rsqrt(x.double().pow(2).mean(-1) + EPS)
    if dtype == torch.float64:
        torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(rstd, rstd_ref, atol=0, rtol=1e-14)
        return
    torch.testing.assert_close(rstd.double(), rstd_ref, atol=0, rtol=2e-6)
    # at most 2x torch's own same-dtype error (norm then matmul), or the output's rounding
    err = (y.double() - ref).abs().max().item()
    torch_err = (_torch_same_dtype(x, g, w).double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    floor = (2**-8 if dtype == torch.bfloat16 else 4e-6) * scale + 1e-6
    assert err <= max(2 * torch_err, floor), (err, torch_err, scale)


def test_large_k_and_n_blocks(cpu_isa):
    # N > NC (2048) and K a multiple plus a tail of the k block; bf16 takes the f32 buffer
    M, N, K = 7, 2100, 700
    for dtype in (torch.float32, torch.bfloat16):
        x, g, w = _inputs(M, N, K, dtype)
        ref = _ref64(x, g, w)
        for path in (1, 2):
            y, _ = _run(x, g, w, path)
            tol = (2**-8 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
            torch.testing.assert_close(y.double(), ref, atol=tol, rtol=0)


def test_paths_agree_and_threads_do_not_change_results():
    x, g, w = _inputs(45, 333, 515, torch.float32)
    y1, _ = _run(x, g, w, 1)
    y2, _ = _run(x, g, w, 2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1, _ = _run(x, g, w, 1)
        z2, _ = _run(x, g, w, 2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, z1) and torch.equal(y2, z2)


def test_batched_input_shape():
    x, g, w = _inputs(2 * 3 * 5, 11, 64, torch.float32)
    x3 = x.view(2, 15, 64)
    y = rmsnorm_linear(x3, g, w, EPS)
    assert y.shape == (2, 15, 11)
    torch.testing.assert_close(y.double(), _ref64(x, g, w).view(2, 15, 11), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rmsnorm_linear_reference(x3.double(), g.double(), w.double(), EPS),
                               _ref64(x, g, w).view(2, 15, 11))


def test_nan_stays_in_its_row():
    x, g, w = _inputs(40, 37, 300, torch.float32)
    x[3, 7] = float("nan")
    for path in (1, 2):
        y, _ = _run(x, g, w, path)
        assert torch.isnan(y[3]).all()
        assert torch.isfinite(y[torch.arange(40) != 3]).all()


@pytest.fixture(params=["fused", "bf16 unfused"])
def bf16_route(request, monkeypatch):
    """rmsnorm_linear's two CPU bfloat16 routes: the fused kernel, and (above BF16_FUSED_MAX_ROWS
    rows on CPUs with native bf16 dot products) the rmsnorm kernel then torch's matmul. Both
    are forced here, whatever this CPU has."""
    monkeypatch.setattr(rg, "_native_bf16_dot", lambda: request.param == "bf16 unfused")
    return request.param


@pytest.mark.parametrize("M", [1, 4, 5, 33])
def test_bf16_routes_agree(bf16_route, M):
    x, g, w = _inputs(M, 37, 96, torch.bfloat16)
    y = rmsnorm_linear(x, g, w, EPS)
    ref = _ref64(x, g, w)
    assert y.dtype == torch.bfloat16 and y.shape == (M, 37)
    assert (y.double() - ref).abs().max() <= 2**-7 * ref.abs().max()
    fused = torch.ops.llmforge.rmsnorm_linear_fwd(x, g, w, EPS, 0)[0]
    assert (rg._unfused_bf16(x)) == (bf16_route == "bf16 unfused" and M > rg.BF16_FUSED_MAX_ROWS)
    if not rg._unfused_bf16(x):
        assert torch.equal(y, fused)


# ---- autograd ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 17, 97), (17, 97, 257), (40, 9, 33), (300, 270, 65)])
def test_backward(cpu_isa, bf16_route, shape, dtype):
    if bf16_route != "fused" and dtype != torch.bfloat16:
        pytest.skip("one route for float32/float64")
    M, N, K = shape
    x, g, w = _inputs(M, N, K, dtype)
    dy = torch.randn(M, N, dtype=torch.float64).to(dtype)
    xs, gs, ws = (t.clone().requires_grad_(True) for t in (x, g, w))
    rmsnorm_linear(xs, gs, ws, EPS).backward(dy)
    x64, g64, w64 = (t.detach().double().clone().requires_grad_(True) for t in (x, g, w))
    _ref64(x64, g64, w64).backward(dy.double())
    rel = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float64: 1e-10}[dtype]
    for got, ref in ((xs.grad, x64.grad), (gs.grad, g64.grad), (ws.grad, w64.grad)):
        torch.testing.assert_close(got.double(), ref, atol=rel * ref.abs().max().item(), rtol=rel)


def test_gradcheck_float64(cpu_isa):
    x = torch.randn(2, 5, 19, dtype=torch.float64, requires_grad=True)
    g = torch.randn(19, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 19, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: rmsnorm_linear(a, b, c, EPS), (x, g, w))


def test_partial_requires_grad():
    x, g, w = _inputs(9, 5, 16, torch.float64)
    xs = x.clone().requires_grad_(True)
    rmsnorm_linear(xs, g, w).sum().backward()
    x64 = x.clone().requires_grad_(True)
    rmsnorm_linear_reference(x64, g, w).sum().backward()
    torch.testing.assert_close(xs.grad, x64.grad)


def test_opcheck():
    x = torch.randn(5, 3, 67, requires_grad=True)
    g = torch.randn(67, requires_grad=True)
    w = torch.randn(19, 67, requires_grad=True)
    for path in (0, 1, 2):
        torch.library.opcheck(torch.ops.llmforge.rmsnorm_linear_fwd.default, (x, g, w, 1e-6, path))
    _, rstd = torch.ops.llmforge.rmsnorm_linear_fwd(x.detach(), g.detach(), w.detach(), 1e-6, 0)
    dy = torch.randn(5, 3, 19)
    args = (dy, x.detach(), g.detach(), w.detach(), rstd)
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_linear_bwd_a.default, args)
    torch.library.opcheck(torch.ops.llmforge.rmsnorm_linear_bwd_weight.default, args)


def test_backward_gemms_against_float64():
    # the two backward GEMMs on their own, bf16 with both f32 partial-sum buffers in use
    M, N, K = 290, 300, 40
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2**-8)):
        x, g, w = _inputs(M, N, K, dtype)
        dy = torch.randn(M, N, dtype=torch.float64).to(dtype)
        _, rstd = torch.ops.llmforge.rmsnorm_linear_fwd(x, g, w, EPS, 0)
        da = torch.ops.llmforge.rmsnorm_linear_bwd_a(dy, x, g, w, rstd)
        dw = torch.ops.llmforge.rmsnorm_linear_bwd_weight(dy, x, g, w, rstd)
        ref_da = dy.double() @ w.double()
        ref_dw = dy.double().t() @ (x.double() * rstd.double()[:, None] * g.double())
        torch.testing.assert_close(da.double(), ref_da, atol=rel * ref_da.abs().max().item(), rtol=0)
        torch.testing.assert_close(dw.double(), ref_dw, atol=rel * ref_dw.abs().max().item(), rtol=0)


def test_backward_with_no_rows():
    x, g, w = _inputs(1, 4, 8, torch.float32)
    xs, ws = x[:0].clone().requires_grad_(True), w.clone().requires_grad_(True)
    rmsnorm_linear(xs, g, ws).sum().backward()
    assert torch.equal(ws.grad, torch.zeros_like(w)) and xs.grad.shape == (0, 8)


def test_torch_compile_fullgraph():
    x, g, w = _inputs(6, 10, 32, torch.float32)
    f = torch.compile(lambda a: rmsnorm_linear(a, g, w) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), rmsnorm_linear(x, g, w) * 2)


def test_zero_rows_is_a_noop():
    x, g, w = _inputs(1, 4, 8, torch.float32)
    assert rmsnorm_linear(x[:0], g, w).shape == (0, 4)


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rejects_bad_inputs(bf16_route, dtype):
    x, g, w = (t.to(dtype) for t in _inputs(7, 4, 8, torch.float32))
    with pytest.raises(TypeError, match="dtype"):
        rmsnorm_linear(x.half(), g.half(), w.half())
    with pytest.raises(TypeError, match="must match"):
        rmsnorm_linear(x, g, w.double())
    with pytest.raises(TypeError, match="must match"):
        rmsnorm_linear(x, g.double(), w)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        rmsnorm_linear(x, torch.randn(9), w)
    with pytest.raises(ValueError, match="weight must have shape"):
        rmsnorm_linear(x, g, torch.randn(4, 9))
    with pytest.raises(ValueError, match="weight must have shape"):
        rmsnorm_linear(x, g, torch.randn(0, 8))
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm_linear(x, g, torch.randn(8, 4).t())
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm_linear(torch.randn(8, 3).t(), g, w)
    with pytest.raises(ValueError, match="hidden"):
        rmsnorm_linear(torch.randn(3, 0), torch.randn(0), torch.randn(4, 0))
    with pytest.raises((ValueError, RuntimeError)):
        rmsnorm_linear(x, g, w.to("meta"))
    with pytest.raises(ValueError, match="eps"):
        rmsnorm_linear(x, g, w, eps=-1.0)


def test_native_boundary_rejects_bad_arguments():
    x, g, w = _inputs(3, 4, 8, torch.float32)
    y, r = torch.empty(3, 4), torch.empty(3)
    with pytest.raises(ValueError, match="y has shape"):
        _C.rmsnorm_gemm_fwd(x, g, w, torch.empty(3, 5), r, 1e-6, 1)
    with pytest.raises(TypeError, match="rstd"):
        _C.rmsnorm_gemm_fwd(x, g, w, y, torch.empty(3, dtype=torch.float64), 1e-6, 1)
    with pytest.raises(ValueError, match="path"):
        _C.rmsnorm_gemm_fwd(x, g, w, y, r, 1e-6, 1, 3)
    with pytest.raises(ValueError, match="threads"):
        _C.rmsnorm_gemm_fwd(x, g, w, y, r, 1e-6, 0)
    with pytest.raises(ValueError, match="dimensions"):
        _C.rmsnorm_gemm_fwd(x.view(3, 2, 4), g, w, y, r, 1e-6, 1)


# ---- CUDA (kernels/rmsnorm_gemm.cu) -------------------------------------------------------------
# Tensor-core operands are bf16 (fp16 for float16 data) with fp32 accumulation, so results are
# judged by SQNR against the float64 reference (bf16 operand rounding alone gives ~50 dB).
def _sqnr_db(got, ref):
    ref = ref.double()
    err = (got.double() - ref).pow(2).sum().clamp_min(1e-300)
    return 10 * torch.log10(ref.pow(2).sum().clamp_min(1e-300) / err).item()


CUDA_SHAPES = [(1, 1, 1), (1, 17, 97), (17, 97, 257), (97, 257, 17), (5, 33, 600), (130, 70, 1000), (64, 64, 64)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_forward_cuda(shape, dtype):
    M, N, K = shape
    x, g, w = _inputs(M, N, K, dtype)
    y, rstd = _run(x.cuda(), g.cuda(), w.cuda(), 0)
    assert y.dtype == dtype and y.shape == (M, N)
    xf = x.double()
    torch.testing.assert_close(rstd.cpu().double(), torch.rsqrt(xf.pow(2).mean(-1) + EPS), rtol=1e-5, atol=0)
    assert _sqnr_db(y.cpu(), _ref64(x, g, w)) > 40


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(17, 97, 257), (130, 70, 1000)])
def test_forward_cuda_writes_every_output(shape):
    M, N, K = shape
    x, g, w = (t.cuda() for t in _inputs(M, N, K, torch.bfloat16))
    y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
    rstd = torch.empty(M, device="cuda")
    _C.rmsnorm_gemm_fwd(x, g, w, y, rstd, EPS, 1, 0, torch.cuda.current_stream().cuda_stream)
    assert not y.isnan().any()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 17, 97), (17, 97, 257), (130, 70, 1000)])
def test_backward_cuda(shape, dtype):
    M, N, K = shape
    x, g, w = _inputs(M, N, K, dtype)
    dy = torch.randn(M, N, dtype=torch.float64).to(dtype)
    xc, gc, wc = (t.cuda().requires_grad_(True) for t in (x, g, w))
    rmsnorm_linear(xc, gc, wc, EPS).backward(dy.cuda())
    x64, g64, w64 = (t.double().requires_grad_(True) for t in (x, g, w))
    _ref64(x64, g64, w64).backward(dy.double())
    for got, want in ((xc.grad, x64.grad), (gc.grad, g64.grad), (wc.grad, w64.grad)):
        assert _sqnr_db(got.cpu(), want) > 35
