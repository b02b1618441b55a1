"""Fused q/k/v projection + RoPE (heads-first output) against the unfused float64 composition:
forward, gradients at x, the concatenated weight and bias, positions, gradcheck, bad input;
and the strided RoPE call it is built on."""
from __future__ import annotations

import pytest
import torch

from llmforge.ops import apply_rope_reference, qkv_rope, qkv_rope_reference, rope_cos_sin
from llmforge.ops.rope import rope_strided_

TOLS = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 2e-2), torch.float64: (1e-12, 1e-12)}


def _case(B, T, D, H, Hkv, hd, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype)
    ws = [(torch.randn(h * hd, D, generator=g, dtype=torch.float64) / D ** 0.5).to(dtype) for h in (H, Hkv, Hkv)]
    bs = [torch.randn(h * hd, generator=g, dtype=torch.float64).to(dtype) if bias else None for h in (H, Hkv, Hkv)]
    td = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = rope_cos_sin(T + 3, hd, base=500.0, dtype=td)
    return x, ws, bs, cos, sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("B,T,D,H,Hkv,hd,bias,packed", [
    (2, 37, 48, 6, 2, 16, False, False), (1, 5, 20, 3, 3, 10, True, False), (3, 19, 33, 4, 1, 6, True, True),
    (2, 64, 64, 2, 1, 32, False, True)])
def test_matches_unfused_float64(B, T, D, H, Hkv, hd, bias, packed, dtype):
    x, ws, bs, cos, sin = _case(B, T, D, H, Hkv, hd, dtype, bias)
    pos = None
    if packed:  # packed documents: positions restart inside a row
        pos = torch.cat([torch.arange(T // 2), torch.arange(T - T // 2)]).expand(B, T).contiguous()
    w = torch.cat(ws).requires_grad_(True)
    b = torch.cat(bs).requires_grad_(True) if bias else None
    xs = x.clone().requires_grad_(True)
    q, k, v = qkv_rope(xs, w, b, cos, sin, pos, H, Hkv)
    assert q.shape == (B, H, T, hd) and k.shape == v.shape == (B, Hkv, T, hd)
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and q.dtype == dtype

    x64 = x.double().requires_grad_(True)
    w64 = [t.double().requires_grad_(True) for t in ws]
    b64 = [t.double().requires_grad_(True) if bias else None for t in bs]
    rq, rk, rv = qkv_rope_reference(x64, *w64, *b64, cos, sin, pos, H, Hkv)
    atol, rtol = TOLS[dtype]
    for o, r in ((q, rq), (k, rk), (v, rv)):
        torch.testing.assert_close(o.double(), r, atol=atol, rtol=rtol)

    gq, gk, gv = (torch.randn(t.shape, dtype=torch.float64) for t in (q, k, v))
    torch.autograd.backward([q, k, v], [gq.to(dtype), gk.to(dtype), gv.to(dtype)])
    torch.autograd.backward([rq, rk, rv], [gq, gk, gv])
    scale = 4 if dtype == torch.bfloat16 else 1
    torch.testing.assert_close(xs.grad.double(), x64.grad, atol=atol * scale, rtol=rtol * scale)
    torch.testing.assert_close(w.grad.double(), torch.cat([t.grad for t in w64]), atol=atol * scale * T,
                               rtol=rtol * scale)
    if bias:
        torch.testing.assert_close(b.grad.double(), torch.cat([t.grad for t in b64]), atol=atol * scale * T,
                                   rtol=rtol * scale)


def test_unused_output_gets_zero_gradient():
    x, ws, _, cos, sin = _case(2, 7, 12, 2, 1, 4, torch.float64, False)
    w = torch.cat(ws).requires_grad_(True)
    q, k, v = qkv_rope(x, w, None, cos, sin, None, 2, 1)
    v.sum().backward()  # q and k receive no gradient
    assert bool((w.grad[: 3 * 4] == 0).all()) and w.grad[3 * 4:].abs().sum() > 0


def test_gradcheck_float64():
    x, ws, bs, cos, sin = _case(2, 5, 6, 2, 1, 4, torch.float64, True)
    w, b = torch.cat(ws).requires_grad_(True), torch.cat(bs).requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: qkv_rope(x, w, b, cos, sin, None, 2, 1), (x, w, b))


def test_rope_strided_heads_first():
    # read heads out of a wider buffer, write them heads-first; and back with the inverse
    B, T, Htot, hd = 2, 9, 5, 8
    cos, sin = rope_cos_sin(T, hd)
    buf = torch.randn(B, T, Htot, hd)
    out = torch.empty(B, 3, T, hd)
    rope_strided_(buf[:, :, 1:4], cos, sin, None, out.transpose(1, 2))
    ref = apply_rope_reference(buf[:, :, 1:4].contiguous(), cos, sin)
    torch.testing.assert_close(out.transpose(1, 2), ref, atol=1e-6, rtol=1e-6)
    back = torch.zeros(B, T, Htot, hd)
    rope_strided_(out.transpose(1, 2), cos, sin, None, back[:, :, 1:4], inverse=True)
    torch.testing.assert_close(back[:, :, 1:4], buf[:, :, 1:4], atol=1e-6, rtol=1e-6)
    assert bool((back[:, :, 0] == 0).all() and (back[:, :, 4] == 0).all())


def test_bad_input():
    x, ws, _, cos, sin = _case(1, 4, 8, 2, 1, 4, torch.float32, False)
    w = torch.cat(ws)
    with pytest.raises(ValueError, match="must be"):
        qkv_rope(x, w[:-1], None, cos, sin, None, 2, 1)
    with pytest.raises(ValueError, match="dtype"):
        qkv_rope(x, w.double(), None, cos, sin, None, 2, 1)
    with pytest.raises(ValueError, match="contiguous"):
        qkv_rope(torch.randn(1, 8, 4).transpose(1, 2), w, None, cos, sin, None, 2, 1)
    with pytest.raises(ValueError, match="exceeds"):
        qkv_rope(x, w, None, cos[:2], sin[:2], None, 2, 1)
    with pytest.raises(ValueError, match="positions"):
        qkv_rope(x, w, None, cos, sin, torch.tensor([[0, 1, 2, 99]]), 2, 1)
    with pytest.raises(ValueError, match="tables"):
        qkv_rope(x, w, None, cos.double(), sin.double(), None, 2, 1)
