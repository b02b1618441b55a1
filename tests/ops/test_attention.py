"""Fused attention (CPU per ISA) against a float64 reference; GQA, causal, window, Sq != Sk;
autograd (including through lse); gradcheck; opcheck; determinism; bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmforge import _C
from llmforge.ops import attention, attention_reference, attention_with_lse

# (dtype, atol, rtol) together. Inputs are O(1); outputs are convex combinations of v rows.
# bf16 outputs are rounded to 8 bits (2^-9 relative) after a float32 computation.
FWD_TOLS = [(torch.float32, 2e-5, 1e-5), (torch.bfloat16, 2e-2, 2**-7), (torch.float64, 1e-12, 1e-12)]

# (B, Hq, Hkv, Sq, Sk, D, causal, window): odd lengths, tails of every tile, GQA, decode shapes
CASES = [
    (1, 1, 1, 1, 1, 64, True, -1),
    (2, 4, 2, 97, 97, 64, True, -1),
    (1, 2, 1, 97, 97, 80, False, -1),
    (1, 3, 3, 33, 130, 96, True, -1),       # Sq < Sk: bottom-right causal
    (1, 2, 1, 130, 70, 128, True, -1),      # Sq > Sk: the first rows see nothing
    (1, 2, 2, 1, 1025, 128, True, -1),      # decode step
    (1, 2, 1, 1025, 1025, 64, True, 100),   # sliding window, MQA
    (1, 2, 1, 200, 150, 59, False, 17),     # odd head dim, window without causal
    (2, 2, 2, 65, 65, 3, True, 0),          # window 0: only the diagonal
    (1, 8, 2, 7, 300, 64, True, -1),        # GQA decode chunk: 4 heads x 7 rows stacked in one tile
    (2, 4, 1, 5, 200, 80, True, 50),        # stacked rows with a window
]


def _ids(c):
    B, H, Hkv, Sq, Sk, D, causal, w = c
    return f"B{B}H{H}kv{Hkv}q{Sq}k{Sk}d{D}{'c' if causal else ''}{'w' + str(w) if w >= 0 else ''}"


def _inputs(B, H, Hkv, Sq, Sk, D, dtype):
    q = torch.randn(B, H, Sq, D, dtype=torch.float64).to(dtype)
    k = torch.randn(B, Hkv, Sk, D, dtype=torch.float64).to(dtype)
    v = torch.randn(B, Hkv, Sk, D, dtype=torch.float64).to(dtype)
    return q, k, v


def _ref64(q, k, v, causal, window, scale=None):
    return attention_reference(q.double(), k.double(), v.double(), causal=causal, scale=scale, window=window)


def _close_lse(lse, ref, atol):
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(lse.double()[fin], ref[fin], atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype,atol,rtol", FWD_TOLS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward(cpu_isa, case, dtype, atol, rtol):
    B, H, Hkv, Sq, Sk, D, causal, window = case
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, dtype)
    out, lse = attention_with_lse(q, k, v, causal=causal, window=window)
    ref, ref_lse = _ref64(q, k, v, causal, window)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    _close_lse(lse, ref_lse, 1e-12 if dtype == torch.float64 else 1e-5)


def _grad_tol(dtype):
    return {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 2**-6), torch.float64: (1e-10, 1e-10)}[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES[1:], ids=_ids)
def test_backward(cpu_isa, case, dtype):
    B, H, Hkv, Sq, Sk, D, causal, window = case
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, dtype)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out, lse = attention_with_lse(qs, ks, vs, causal=causal, window=window)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse).masked_fill(torch.isneginf(lse), 0.0)  # gradient through lse too
    torch.autograd.backward((out, lse), (dout, dlse))
    q6, k6, v6 = (t.double().requires_grad_(True) for t in (q, k, v))
    ro, rl = attention_reference(q6, k6, v6, causal=causal, window=window)
    torch.autograd.backward((ro, rl.masked_fill(torch.isneginf(rl), 0.0)), (dout.double(), dlse.double()))
    atol_rel, rtol = _grad_tol(dtype)
    for got, ref in ((qs.grad, q6.grad), (ks.grad, k6.grad), (vs.grad, v6.grad)):
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, atol=atol_rel * max(ref.abs().max().item(), 1e-3), rtol=rtol)


def test_error_within_2x_of_torch_sdpa_float32():
    """flash-attn's criterion: the kernel's float32 error vs float64 is at most 2x torch's."""
    q, k, v = _inputs(2, 4, 2, 257, 257, 96, torch.float32)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    qt, kt, vt = (t.clone().requires_grad_(True) for t in (q, k, v))
    ours = attention(qs, ks, vs, causal=True)
    theirs = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
    q6, k6, v6 = (t.double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(q6, k6, v6, causal=True)[0]
    dout = torch.randn_like(ours)
    ours.backward(dout)
    theirs.backward(dout)
    ref.backward(dout.double())
    pairs = [(ours, theirs, ref), (qs.grad, qt.grad, q6.grad), (ks.grad, kt.grad, k6.grad), (vs.grad, vt.grad, v6.grad)]
    for a, b, r in pairs:
        err_ours = (a.double() - r).abs().max().item()
        err_torch = (b.double() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)


def test_matches_torch_sdpa_default_scale_and_custom_scale():
    q, k, v = _inputs(1, 4, 4, 70, 70, 64, torch.float32)
    torch.testing.assert_close(attention(q, k, v, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=2e-5, rtol=1e-5)


def test_gradcheck_float64(cpu_isa):
    for causal, window, (Sq, Sk) in ((True, -1, (5, 7)), (False, 1, (4, 4))):
        q = torch.randn(1, 2, Sq, 5, dtype=torch.float64, requires_grad=True)
        k = torch.randn(1, 1, Sk, 5, dtype=torch.float64, requires_grad=True)
        v = torch.randn(1, 1, Sk, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, c: attention_with_lse(a, b, c, causal=causal, window=window),
                                        (q, k, v))


def test_opcheck():
    q, k, v = _inputs(1, 4, 2, 37, 45, 64, torch.float32)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.llmforge.attention_fwd.default, (q, k, v, True, 0.125, -1))
    torch.library.opcheck(torch.ops.llmforge.attention_fwd.default, (q, k, v, False, 0.2, 5))
    out, lse = torch.ops.llmforge.attention_fwd(q.detach(), k.detach(), v.detach(), True, 0.125, -1)
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), out, lse)
    torch.library.opcheck(torch.ops.llmforge.attention_bwd.default, (*args, None, True, 0.125, -1))
    torch.library.opcheck(torch.ops.llmforge.attention_bwd.default, (*args, torch.randn_like(lse), True, 0.125, -1))


def test_torch_compile_fullgraph():
    q, k, v = _inputs(1, 2, 1, 20, 20, 64, torch.float32)
    f = torch.compile(lambda a, b, c: attention(a, b, c, causal=True) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(q, k, v), attention(q, k, v, causal=True) * 2)


def test_reference_matches_sdpa():
    q, k, v = _inputs(2, 4, 2, 19, 19, 16, torch.float64)
    ref = attention_reference(q, k, v, causal=True)[0]
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(ref, sdpa)
    # a window is a band of the causal mask
    mask = torch.ones(19, 19, dtype=torch.bool).tril() & ~torch.ones(19, 19, dtype=torch.bool).tril(-4)
    sdpa_w = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    torch.testing.assert_close(attention_reference(q, k, v, causal=True, window=3)[0], sdpa_w)


def test_isas_agree():
    q, k, v = _inputs(1, 2, 1, 150, 150, 80, torch.float32)
    outs = []
    before = _C.cpu_isa()
    try:
        for isa in ("scalar", _C.cpu_best_isa()):
            _C.set_cpu_isa(isa)
            outs.append(attention(q, k, v, causal=True))
    finally:
        _C.set_cpu_isa(before)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("Hkv", [1, 4])
def test_backward_deterministic_and_thread_count_independent_within_tolerance(Hkv):
    q, k, v = _inputs(1, 4, Hkv, 300, 300, 64, torch.float32)
    dout = torch.randn_like(q)

    def grads():
        qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
        attention(qs, ks, vs, causal=True).backward(dout)
        return qs.grad, ks.grad, vs.grad

    a, b = grads(), grads()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = grads()
        torch.set_num_threads(3)  # more chunks than kv heads: partial dq sums
        d = grads()
    finally:
        torch.set_num_threads(before)
    for x, y, z in zip(a, c, d):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-5)


def test_empty_rows_give_zeros_and_zero_grads():
    q, k, v = _inputs(1, 1, 1, 10, 4, 16, torch.float32)   # causal, Sq > Sk: rows 0..5 see nothing
    qs = q.clone().requires_grad_(True)
    out, lse = attention_with_lse(qs, k, v, causal=True)
    assert torch.equal(out[0, 0, :6], torch.zeros(6, 16)) and torch.isneginf(lse[0, 0, :6]).all()
    assert torch.isfinite(lse[0, 0, 6:]).all()
    out.sum().backward()
    assert torch.equal(qs.grad[0, 0, :6], torch.zeros(6, 16))


def test_nan_propagates_to_its_rows():
    q, k, v = _inputs(1, 2, 1, 40, 40, 64, torch.float32)
    q[0, 1, 7, 3] = float("nan")
    out = attention(q, k, v, causal=True)
    assert torch.isnan(out[0, 1, 7]).all()
    assert torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1, :7]).all()


def test_large_logits_numerically_stable():
    # logits of a few hundred: exp overflows float32 unless the running max is subtracted
    q, k, v = _inputs(1, 1, 1, 600, 600, 32, torch.float32)
    out, lse = attention_with_lse(q * 8, k * 8, v)
    assert lse.max() > 100
    ref, ref_lse = _ref64(q * 8, k * 8, v, False, -1)
    torch.testing.assert_close(out.double(), ref, atol=1e-3, rtol=1e-3)
    _close_lse(lse, ref_lse, 1e-5)


# ---- bad input: a Python exception, never a crash -----------------------------------
def test_rejects_wrong_dtype():
    q, k, v = _inputs(1, 2, 1, 8, 8, 16, torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        attention(q.half(), k.half(), v.half())
    with pytest.raises(TypeError, match="must match"):
        attention(q, k.double(), v)
    with pytest.raises(TypeError, match="dtype"):
        attention(q.int(), k.int(), v.int())


def test_rejects_bad_shapes():
    q, k, v = _inputs(1, 4, 2, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="divide"):
        attention(q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k[..., :8].contiguous(), v[..., :8].contiguous())
    with pytest.raises(ValueError, match="v has"):
        attention(q, k, v[:, :, :4].contiguous())
    with pytest.raises(ValueError, match="batch, heads, seq, head_dim"):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="empty"):
        attention(q[:, :, :0], k, v)
    with pytest.raises(ValueError, match="empty"):
        attention(q, k[:, :, :0], v[:, :, :0])


def test_rejects_non_contiguous_and_bad_args():
    q, k, v = _inputs(1, 2, 2, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        attention(q.transpose(1, 2), k, v)
    with pytest.raises(ValueError, match="contiguous"):
        attention(q, k, v.transpose(2, 3))
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=-2)
    for s in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            attention(q, k, v, scale=s)


def test_rejects_wrong_device():
    q, k, v = _inputs(1, 2, 2, 8, 8, 16, torch.float32)
    with pytest.raises((ValueError, RuntimeError)):
        attention(q, k.to("meta"), v)


def test_native_boundary_rejects_bad_arguments():
    q, k, v = _inputs(1, 2, 1, 8, 9, 16, torch.float32)
    out, lse = torch.empty_like(q), torch.empty(1, 2, 8)
    with pytest.raises(TypeError, match="not a tensor"):
        _C.attention_fwd([1.0], k, v, out, lse, True, 0.25, -1, 1)
    with pytest.raises(ValueError, match="lse has shape"):
        _C.attention_fwd(q, k, v, out, torch.empty(1, 2, 9), True, 0.25, -1, 1)
    with pytest.raises(TypeError, match="lse"):
        _C.attention_fwd(q, k, v, out, torch.empty(1, 2, 8, dtype=torch.float64), True, 0.25, -1, 1)
    with pytest.raises(ValueError, match="out has shape"):
        _C.attention_fwd(q, k, v, torch.empty(1, 2, 9, 16), lse, True, 0.25, -1, 1)
    with pytest.raises(ValueError, match="threads"):
        _C.attention_fwd(q, k, v, out, lse, True, 0.25, -1, 0)
    with pytest.raises(ValueError, match="scale"):
        _C.attention_fwd(q, k, v, out, lse, True, math.nan, -1, 1)
    with pytest.raises(ValueError, match="window"):
        _C.attention_fwd(q, k, v, out, lse, True, 0.25, -5, 1)
    with pytest.raises(ValueError, match="head dim"):
        big = torch.randn(1, 1, 2, 600)
        _C.attention_fwd(big, big, big, torch.empty_like(big), torch.empty(1, 1, 2), True, 0.25, -1, 1)
    _C.attention_fwd(q, k, v, out, lse, True, 0.25, -1, 1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with pytest.raises(ValueError, match="grad_k has shape"):
        _C.attention_bwd(out, q, k, v, out, lse, None, dq, torch.empty_like(q), dv, True, 0.25, -1, 1)
    with pytest.raises(TypeError, match="grad_out"):
        _C.attention_bwd(out.double(), q, k, v, out, lse, None, dq, dk, dv, True, 0.25, -1, 1)
    with pytest.raises(ValueError, match="grad_lse has shape"):
        _C.attention_bwd(out, q, k, v, out, lse, torch.empty(3), dq, dk, dv, True, 0.25, -1, 1)
    # numpy arrays cross the same boundary
    import numpy as np
    on, ln = np.empty_like(q.numpy()), np.empty((1, 2, 8), dtype=np.float32)
    _C.attention_fwd(q.numpy(), k.numpy(), v.numpy(), on, ln, True, 0.25, -1, 1)
    torch.testing.assert_close(torch.from_numpy(on), out)
