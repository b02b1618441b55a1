"""int4 / int8 / W8A8 matmuls: exact against dequantise-then-matmul in float64 (up to fp32
accumulation), packing round trips, quantisation bounds, autograd for x, bad input."""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import (dequantize_int4, dequantize_int8, int4_linear, int4_linear_reference, int8_linear,
                          int8_linear_reference, quantize_activations_int8, quantize_int4, quantize_int8, w8a8_linear,
                          w8a8_linear_reference)
from llmforge.ops.int4_matmul import pack_int4, unpack_int4


def _close(got, want, K):
    # fp32 accumulation over K terms of magnitude ~|x||w|
    tol = 4e-7 * K ** 0.5 * want.abs().max().item() + 1e-6
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=1e-5)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [1, 2, 3, 6, 17, 64])
def test_int4_exact(cpu_isa, group, symmetric, M):
    N, K = 97, 256
    w = torch.randn(N, K) * torch.rand(N, 1) * 2
    q = quantize_int4(w, group, symmetric)
    x = torch.randn(M, K)
    _close(int4_linear(x, q), int4_linear_reference(x, q), K)
    # dequantisation error of round-to-nearest: at most half a step
    err = (dequantize_int4(q) - w).abs().reshape(N, K // group, group)
    assert (err <= q["scales"][..., None] / 2 * (1 + 1e-5) + 1e-6).all()


def test_int4_pack_roundtrip_and_bf16():
    codes = torch.randint(0, 16, (5, 128), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    packed = pack_int4(codes)
    assert packed[0, 0].item() == codes[0, 0].item() | (codes[0, 16].item() << 4)
    w = torch.randn(33, 128)
    q = quantize_int4(w, 64)
    x = torch.randn(2, 5, 128, dtype=torch.bfloat16)
    y = int4_linear(x, q)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 33)
    torch.testing.assert_close(y.double(), int4_linear_reference(x.float(), q).reshape(2, 5, 33), atol=0.05, rtol=2**-7)


@pytest.fixture(params=[False, True], ids=["madd", "vnni"])
def vnni(request, cpu_isa):
    """W8A8 with and without the AVX512-VNNI tiles (the latter only where the CPU has them)."""
    before = _C.cpu_vnni()
    if request.param and (cpu_isa != "avx512" or not _try_vnni()):
        pytest.skip("no AVX512-VNNI on this CPU / ISA")
    _C.set_cpu_vnni(request.param)
    yield request.param
    _C.set_cpu_vnni(before)


def _try_vnni() -> bool:
    try:
        _C.set_cpu_vnni(True)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("NK", [(61, 200), (131, 97)])   # K tails of the 16/32/64-wide steps; several 64-row blocks
@pytest.mark.parametrize("M", [1, 2, 9, 40])
def test_int8_and_w8a8_exact(vnni, M, NK):
    N, K = NK
    w = torch.randn(N, K)
    q = quantize_int8(w)
    x = torch.randn(M, K)
    _close(int8_linear(x, q), int8_linear_reference(x, q), K)
    # W8A8 is exact in int32: only the final float scaling rounds
    torch.testing.assert_close(w8a8_linear(x, q).double(), w8a8_linear_reference(x, q), atol=1e-5, rtol=1e-6)
    assert ((dequantize_int8(q) - w).abs() <= q["scale"][:, None] / 2 + 1e-6).all()
    xq, xs = quantize_activations_int8(x)
    assert xq.dtype == torch.int8 and (xq.abs() <= 127).all() and xs.shape == (M,)


@pytest.mark.parametrize("K", [4096 + 37, 65536 + 64])   # the VNNI tiles' limit: K < 65536 (exact int32)
def test_w8a8_extreme_codes_exact(vnni, K):
    """Codes at the int8 extremes, summed over long rows: the int32 result is exact (against
    int64), including past the VNNI path's K limit, where the madd tiles take over."""
    g = torch.Generator().manual_seed(K)
    xq = torch.randint(-128, 128, (5, K), dtype=torch.int8, generator=g)
    xq[0] = -128
    xq[1] = 127
    wq = torch.randint(-127, 128, (6, K), dtype=torch.int8, generator=g)
    wq[0] = -127
    wq[1] = 127
    y = torch.empty(5, 6)
    _C.w8a8_matmul(xq, torch.ones(5), wq, torch.ones(6), y, 2)
    exact = xq.long() @ wq.long().t()
    assert torch.equal(y.double(), exact.double().float().double())


def test_grad_x_through_frozen_quantized_weights():
    w = torch.randn(40, 128, dtype=torch.float64).float()
    q4, q8 = quantize_int4(w, 32), quantize_int8(w)
    x = torch.randn(6, 128, requires_grad=True)
    dy = torch.randn(6, 40)
    for fn, deq in ((lambda t: int4_linear(t, q4), dequantize_int4(q4)), (lambda t: int8_linear(t, q8), dequantize_int8(q8))):
        (gx,) = torch.autograd.grad(fn(x), x, dy)
        torch.testing.assert_close(gx, dy @ deq, atol=1e-4, rtol=1e-4)
    x20 = torch.randn(20, 128, requires_grad=True)   # the panel (GEMM) path too
    (gx,) = torch.autograd.grad(int4_linear(x20, q4), x20, torch.ones(20, 40))
    torch.testing.assert_close(gx, torch.ones(20, 40) @ dequantize_int4(q4), atol=1e-4, rtol=1e-4)


def test_panel_path_on_the_gemm(cpu_isa):
    """More rows than the GEMV takes: 256-row panels of W dequantised and multiplied on
    llmforge's GEMM (>= 64 rows; two panels, the second partial), forward and dX."""
    N, K, M = 300, 192, 70
    w = torch.randn(N, K)
    q4, q8 = quantize_int4(w, 64, symmetric=False), quantize_int8(w)
    x = torch.randn(M, K, requires_grad=True)
    dy = torch.randn(M, N)
    for fn, deq in ((lambda t: int4_linear(t, q4), dequantize_int4(q4)), (lambda t: int8_linear(t, q8), dequantize_int8(q8))):
        y = fn(x)
        torch.testing.assert_close(y.double(), x.detach().double() @ deq.double().t(), atol=1e-3, rtol=1e-4)
    (gx,) = torch.autograd.grad(int4_linear(x, q4), x, dy)
    torch.testing.assert_close(gx.double(), dy.double() @ dequantize_int4(q4).double(), atol=1e-3, rtol=1e-4)


def test_opcheck():
    w = torch.randn(16, 64)
    q4, q8 = quantize_int4(w, 32), quantize_int8(w)
    x = torch.randn(3, 64, requires_grad=True)
    torch.library.opcheck(torch.ops.llmforge.int4_linear.default, (x, q4["packed"], q4["scales"], q4["zeros"], 32))
    torch.library.opcheck(torch.ops.llmforge.int8_linear.default, (x, q8["q"], q8["scale"]))
    torch.library.opcheck(torch.ops.llmforge.w8a8_linear.default, (x.detach(), q8["q"], q8["scale"]))


def test_bad_input():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="multiple"):
        quantize_int4(torch.randn(8, 48), 32)
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(w, 16)
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_int4(bad)
    with pytest.raises(ValueError, match="NaN"):
        quantize_int8(bad)
    q = quantize_int4(w, 32)
    with pytest.raises(ValueError, match="features"):
        int4_linear(torch.randn(2, 32), q)
    with pytest.raises(TypeError, match="uint8"):
        int4_linear(torch.randn(2, 64), {**q, "packed": q["packed"].to(torch.int16)})
    with pytest.raises(ValueError, match="scales"):
        int4_linear(torch.randn(2, 64), {**q, "scales": q["scales"][:, :1].contiguous()})
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        int4_linear(torch.randn(2, 64, dtype=torch.float64), q)
    q8 = quantize_int8(w)
    with pytest.raises(TypeError, match="int8"):
        int8_linear(torch.randn(2, 64), {**q8, "q": q8["q"].float()})
    # the native boundary checks shapes and contiguity itself
    y = torch.empty(2, 8)
    with pytest.raises(ValueError, match="contiguous"):
        _C.int4_matmul(torch.randn(64, 2).t(), q["packed"], q["scales"], q["zeros"], y, 32, 1)
    with pytest.raises(ValueError, match="group_size"):
        _C.int4_matmul(torch.randn(2, 64), q["packed"], q["scales"], q["zeros"], y, 48, 1)
    with pytest.raises(ValueError, match="rows"):
        _C.int4_dequant(q["packed"], q["scales"], q["zeros"], torch.empty(4, 64), 6, 32, 1)


# ---- CUDA (kernels/int4_matmul.cu, kernels/int8_matmul.cu) ------------------------------------
# The kernels feed the tensor cores bf16(x) and bf16(dequant(W)) and accumulate in fp32, so the
# tight checks compare with float64 products of exactly those bf16 operands; SQNR checks
# compare with the float64 product of the unrounded operands.
from llmforge.ops.int4_matmul import dequantize_int4_kernel  # noqa: E402
from llmforge.ops._native import stream as _stream  # noqa: E402


def _cuda(q):
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in q.items()}


def _sqnr_db(got, ref):
    ref = ref.double()
    err = (got.double() - ref).pow(2).sum().clamp_min(1e-300)
    return 10 * torch.log10(ref.pow(2).sum() / err).item()


def _close_bf16_operands(got, a, b):
    """got ~ a @ b.T for the bf16-valued float64 operands a, b: the products are exact and only
    the tensor cores' fp32 accumulation rounds, so the error is bounded by a small multiple of
    eps_fp32 * (|a| @ |b|.T) per element (4e-5 leaves room for K/16 truncating adds); a wrong
    fragment index gives errors of the order of the bound itself."""
    want, bound = a @ b.t(), a.abs() @ b.abs().t()
    err = (got.double() - want).abs()
    assert (err <= 4e-5 * bound + 1e-6).all(), (err / (bound + 1e-30)).max().item()
    return want


@pytest.mark.cuda
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_dequant_cuda_is_bit_exact(group, symmetric):
    w = torch.randn(77, 384) * torch.rand(77, 1) * 3
    q = quantize_int4(w, group, symmetric)
    got = dequantize_int4_kernel(_cuda(q)).cpu()
    assert torch.equal(got.view(torch.int32), dequantize_int4(q).view(torch.int32))


@pytest.mark.cuda
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("M", [1, 5, 16, 17, 100])
@pytest.mark.parametrize("NK", [(97, 384), (8, 128), (300, 4224)])
def test_int4_linear_cuda(group, M, NK):
    N, K = NK
    w = torch.randn(N, K) * torch.rand(N, 1) * 2
    q = quantize_int4(w, group, symmetric=M % 2 == 0)
    x = torch.randn(M, K)
    y = int4_linear(x.cuda(), _cuda(q)).cpu()
    assert y.dtype == torch.float32 and y.shape == (M, N)
    want = _close_bf16_operands(y, x.bfloat16().double(), dequantize_int4(q).bfloat16().double())
    assert _sqnr_db(y, int4_linear_reference(x, q)) > 40
    yb = int4_linear(x.bfloat16().cuda(), _cuda(q)).cpu()
    assert yb.dtype == torch.bfloat16 and _sqnr_db(yb, want) > 45


@pytest.mark.cuda
@pytest.mark.parametrize("M", [1, 7, 16, 17, 70])
def test_int4_cuda_writes_every_output_and_is_deterministic(M):
    N, K, G = 97, 224, 32  # N and K not multiples of the 64-row / 128-wide tiles
    q = _cuda(quantize_int4(torch.randn(N, K), G))
    x = torch.randn(M, K, device="cuda").bfloat16()
    outs = []
    for _ in range(2):
        y = torch.full((M, N), float("nan"), device="cuda")
        ws = torch.full((max(_C.int4_cuda_workspace_floats(M, N), 1),), float("nan"), device="cuda")
        _C.int4_matmul_cuda(x, q["packed"], q["scales"], q["zeros"], y, ws, G, _stream(x))
        assert not y.isnan().any()
        outs.append(y)
    assert torch.equal(outs[0], outs[1])  # split-K partials are summed in a fixed order
    dx = torch.full((M, K), float("nan"), device="cuda")
    _C.int4_grad_x_cuda(torch.randn(M, N, device="cuda").bfloat16(), q["packed"], q["scales"], q["zeros"], dx, G,
                        _stream(x))
    assert not dx.isnan().any()


@pytest.mark.cuda
@pytest.mark.parametrize("M", [1, 33])
@pytest.mark.parametrize("NK", [(97, 224), (130, 1024)])
def test_int4_grad_x_cuda_qlora(M, NK):
    N, K = NK
    q = quantize_int4(torch.randn(N, K), 64 if K % 64 == 0 else 32)
    x = torch.randn(M, K, device="cuda", requires_grad=True)
    dy = torch.randn(M, N)
    int4_linear(x, _cuda(q)).backward(dy.cuda())
    got = x.grad.cpu()
    _close_bf16_operands(got, dy.bfloat16().double(), dequantize_int4(q).bfloat16().double().t())
    assert _sqnr_db(got, dy.double() @ dequantize_int4(q).double()) > 40


@pytest.mark.cuda
@pytest.mark.parametrize("M", [1, 7, 16, 33])
@pytest.mark.parametrize("NK", [(97, 160), (256, 2048)])
def test_int8_linear_cuda(M, NK):
    N, K = NK
    q = quantize_int8(torch.randn(N, K))
    x = torch.randn(M, K)
    y = int8_linear(x.cuda(), _cuda(q)).cpu()
    _close_bf16_operands(y, x.bfloat16().double(), dequantize_int8(q).bfloat16().double())
    assert _sqnr_db(y, int8_linear_reference(x, q)) > 40
    yn = torch.full((M, N), float("nan"), device="cuda")
    ws = torch.empty(max(_C.int8_cuda_workspace_floats(M, N), 1), device="cuda")
    xb = x.cuda().bfloat16()
    _C.int8_matmul_cuda(xb, _cuda(q)["q"], _cuda(q)["scale"], yn, ws, _stream(xb))
    assert not yn.isnan().any()


@pytest.mark.cuda
@pytest.mark.parametrize("M", [1, 64, 130])
@pytest.mark.parametrize("NK", [(8, 64), (97, 200), (128, 77)])
def test_w8a8_cuda_matches_int32_reference(M, NK):
    N, K = NK
    q = quantize_int8(torch.randn(N, K))
    x = torch.randn(M, K) * 3
    y = w8a8_linear(x.cuda(), _cuda(q)).cpu()
    # int32 accumulation is exact; only the two float32 scalings round
    torch.testing.assert_close(y.double(), w8a8_linear_reference(x, q), rtol=1e-6, atol=1e-6)
    xq, xs = quantize_activations_int8(x)
    yn = torch.full((M, N), float("nan"), device="cuda")
    _C.w8a8_matmul_cuda(xq.cuda(), xs.cuda(), q["q"].cuda(), q["scale"].cuda(), yn, 0)
    torch.cuda.synchronize()
    assert not yn.isnan().any()


@pytest.mark.cuda
def test_cuda_bad_input():
    q = _cuda(quantize_int4(torch.randn(8, 64), 32))
    with pytest.raises(ValueError, match="on cpu but x is on cuda|device"):
        int4_linear(torch.randn(2, 64, device="cuda"), {**q, "packed": q["packed"].cpu()})
    q8 = _cuda(quantize_int8(torch.randn(8, 24)))
    with pytest.raises(ValueError, match="multiple of 16"):
        int8_linear(torch.randn(2, 24, device="cuda"), q8)
    with pytest.raises(ValueError, match="aligned"):  # a view 2 bytes into its storage
        y = torch.empty(1, 8, device="cuda")
        xb = torch.randn(1, 65, device="cuda").bfloat16()[:, 1:]
        _C.int4_matmul_cuda(xb, q["packed"], q["scales"], q["zeros"], y, torch.empty(256, device="cuda"), 32, 0)


def test_cuda_entry_points_reject_cpu_tensors():
    # runs without a GPU: the adapter's checks come before any CUDA call
    q = quantize_int4(torch.randn(8, 64), 32)
    x, y = torch.randn(2, 64).bfloat16(), torch.empty(2, 8)
    with pytest.raises(ValueError, match="CUDA tensor"):
        _C.int4_matmul_cuda(x, q["packed"], q["scales"], q["zeros"], y, torch.empty(256), 32, 0)
    with pytest.raises(ValueError, match="CUDA tensor"):
        _C.int4_grad_x_cuda(torch.randn(2, 8).bfloat16(), q["packed"], q["scales"], q["zeros"], torch.empty(2, 64), 32, 0)
    with pytest.raises(ValueError, match="CUDA tensor"):
        _C.int4_dequant_cuda(q["packed"], q["scales"], q["zeros"], torch.empty(8, 64), 0, 32, 0)
    q8 = quantize_int8(torch.randn(8, 64))
    with pytest.raises(ValueError, match="CUDA tensor"):
        _C.int8_matmul_cuda(x, q8["q"], q8["scale"], y, torch.empty(256), 0)
    with pytest.raises(ValueError, match="CUDA tensor"):
        _C.w8a8_matmul_cuda(q8["q"][:2].contiguous(), torch.ones(2), q8["q"], q8["scale"], y, 0)
    assert _C.int4_cuda_workspace_floats(16, 10) == 16 * 16 * 10 and _C.int4_cuda_workspace_floats(17, 10) == 0
