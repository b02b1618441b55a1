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
@pytest.mark.parametrize("M", [1, 3, 17, 64])
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


@pytest.mark.parametrize("M", [1, 2, 9, 40])
def test_int8_and_w8a8_exact(cpu_isa, M):
    N, K = 61, 200
    w = torch.randn(N, K)
    q = quantize_int8(w)
    x = torch.randn(M, K)
    _close(int8_linear(x, q), int8_linear_reference(x, q), K)
    # W8A8 is exact in int32: only the final float scaling rounds
    torch.testing.assert_close(w8a8_linear(x, q).double(), w8a8_linear_reference(x, q), atol=1e-5, rtol=1e-6)
    assert ((dequantize_int8(q) - w).abs() <= q["scale"][:, None] / 2 + 1e-6).all()
    xq, xs = quantize_activations_int8(x)
    assert xq.dtype == torch.int8 and (xq.abs() <= 127).all() and xs.shape == (M,)


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
    with pytest.raises(ValueError, match="float32 or bfloat16"):
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
