"""CPU attention output layout: stored token-major (the output projection reads it without a
copy), gradients read from any row strides, and the native boundary's layout checks."""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import attention, attention_reference


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)])
@pytest.mark.parametrize("B,H,Hkv,S,D", [(2, 6, 2, 97, 64), (1, 3, 3, 33, 20), (3, 4, 1, 1, 8)])
def test_token_major_output_and_strided_grad(cpu_isa, B, H, Hkv, S, D, dtype, tol):
    q = torch.randn(B, H, S, D, dtype=torch.float64).to(dtype).requires_grad_(True)
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64).to(dtype).requires_grad_(True)
    v = torch.randn(B, Hkv, S, D, dtype=torch.float64).to(dtype).requires_grad_(True)
    out = attention(q, k, v, causal=True)
    flat = out.transpose(1, 2).reshape(B, S, H * D)
    assert flat.data_ptr() == out.data_ptr() and flat.is_contiguous()        # a view, no copy
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, _ = attention_reference(q64, k64, v64, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    # the gradient arrives as the output projection gives it: (B, S, H*D), i.e. token-major rows
    g = torch.randn(B, S, H * D, dtype=torch.float64)
    flat.backward(g.to(dtype))
    ref.transpose(1, 2).reshape(B, S, H * D).backward(g)
    for a, b in ((q, q64), (k, k64), (v, v64)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=tol * 10, rtol=tol * 10)
    # and a gradient with yet other strides (a slice of a wider buffer)
    for t in (q, k, v):
        t.grad = None
    wide = torch.randn(B, H, S, 2 * D, dtype=dtype)
    torch.autograd.backward(attention(q, k, v, causal=True), wide[..., :D])
    dq_sliced = q.grad.clone()
    q.grad = None
    torch.autograd.backward(attention(q, k, v, causal=True), wide[..., :D].contiguous())
    torch.testing.assert_close(dq_sliced, q.grad, atol=0, rtol=0)


def test_native_boundary_checks_out_layout():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    lse = torch.empty(1, 2, 5)
    _C.attention_fwd(q, k, v, torch.empty(1, 5, 2, 8).transpose(1, 2), lse, True, 0.35, -1, 1)  # token-major: ok
    with pytest.raises(ValueError, match="transpose of a contiguous"):
        _C.attention_fwd(q, k, v, torch.empty(1, 2, 8, 5).transpose(2, 3), lse, True, 0.35, -1, 1)
    with pytest.raises(ValueError, match="transpose of a contiguous"):
        _C.attention_fwd(q, k, v, torch.empty(1, 2, 5, 16)[..., :8], lse, True, 0.35, -1, 1)
