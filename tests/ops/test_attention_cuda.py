"""CUDA fused attention (kernels/flash_attn_fwd.cu, kernels/flash_attn_bwd.cu) and the packed
variable-length API, against float64 references.

Accuracy rule (flash-attention's tests): on the same rounded inputs, the kernel's largest
error against a float64 reference is at most twice that of plain torch attention computed in
the same dtype (matmuls in fp16/bf16, softmax rounded to it), plus a tiny absolute slack.
`cuda` tests skip without a GPU; the input checks and the CPU varlen path at the bottom run
anywhere. Tests whose names contain "sanitizer" are the small ones bench/gpu_session.sh runs
under compute-sanitizer.
"""
from __future__ import annotations

import pytest
import torch

from llmforge import _C
from llmforge.ops import (attention, attention_reference, attention_varlen, attention_varlen_reference,
                          attention_varlen_with_lse, attention_with_lse)
from llmforge.ops._native import stream

DTYPES = [torch.bfloat16, torch.float16]
# (B, H, Hkv, Sq, Sk): odd lengths, batch 3, GQA, Sq != Sk both ways, a decode row
SHAPES = [(3, 4, 4, 97, 97), (1, 2, 2, 1025, 1025), (2, 8, 2, 128, 128), (2, 4, 1, 97, 211), (2, 4, 2, 211, 97),
          (3, 4, 2, 1, 1025)]


def _mask(Sq, Sk, causal, window, device):
    i = torch.arange(Sq, device=device)[:, None] + (Sk - Sq)
    j = torch.arange(Sk, device=device)[None, :]
    allowed = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window >= 0:
        allowed &= j >= i - window
    return allowed


def _torch_same_dtype(q, k, v, causal, window=-1):
    """Plain torch attention in q's dtype: the baseline whose error the kernel may double."""
    H, Hkv, Sq, Sk, D = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    k = k.repeat_interleave(H // Hkv, 1)
    v = v.repeat_interleave(H // Hkv, 1)
    s = (q * D ** -0.5) @ k.transpose(-1, -2)
    s = s.masked_fill(~_mask(Sq, Sk, causal, window, q.device), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


def _inputs(B, H, Hkv, Sq, Sk, D, dtype):
    q = torch.randn(B, H, Sq, D, device="cuda", dtype=dtype)
    k = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=dtype)
    v = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=dtype)
    return q, k, v


def _assert_rule(name, got, pt, ref, slack=1e-4):
    err = (got.double() - ref).abs().max().item()
    err_pt = (pt.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 2 * err_pt + slack * max(scale, 1.0), f"{name}: kernel error {err:.3e} vs torch {err_pt:.3e}"


# ---- forward -------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_cuda(shape, causal, D, dtype):
    B, H, Hkv, Sq, Sk = shape
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, dtype)
    out, lse = attention_with_lse(q, k, v, causal=causal)
    ref, lse_ref = attention_reference(q, k, v, causal=causal)
    _assert_rule("out", out, _torch_same_dtype(q, k, v, causal), ref)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=2e-3, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("window", [0, 40])
@pytest.mark.parametrize("shape", [(2, 4, 2, 97, 97), (1, 2, 1, 70, 300)])
def test_forward_window_cuda(shape, window):
    B, H, Hkv, Sq, Sk = shape
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, 128, torch.bfloat16)
    out = attention(q, k, v, causal=True, window=window)
    ref, _ = attention_reference(q, k, v, causal=True, window=window)
    _assert_rule("out", out, _torch_same_dtype(q, k, v, True, window), ref)


@pytest.mark.cuda
@pytest.mark.parametrize("D", [40, 96])
def test_forward_padded_head_dim_cuda(D):
    q, k, v = _inputs(2, 4, 2, 97, 97, D, torch.bfloat16)
    out = attention(q, k, v, causal=True)
    ref, _ = attention_reference(q, k, v, causal=True)
    assert out.shape == q.shape
    _assert_rule("out", out, _torch_same_dtype(q, k, v, True), ref)


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_writes_every_element_sanitizer(causal, D):
    """out and lse start as NaN sentinels; afterwards every element is finite (or lse = -inf
    exactly where the query sees no key: causal with Sq > Sk)."""
    B, H, Hkv, Sq, Sk = 2, 4, 2, 70, 45
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, torch.float16)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Sq), float("nan"), device="cuda")
    _C.flash_attn_fwd(q, k, v, out, lse, None, None, Sq, Sk, causal, D ** -0.5, -1, stream(q))
    torch.cuda.synchronize()
    _, lse_ref = attention_reference(q, k, v, causal=causal)
    assert torch.isfinite(out).all()
    assert not torch.isnan(lse).any()
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref))
    empty = torch.isinf(lse_ref)
    if causal:
        assert empty.any()  # rows before the first key exist here
        assert (out[empty] == 0).all()


# ---- backward ------------------------------------------------------------------------------
def _grads_all(q, k, v, dout, causal, window=-1):
    """(kernel grads, same-dtype torch grads, float64 reference grads) for q, k, v."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    got = torch.autograd.grad(attention(*leaves, causal=causal, window=window), leaves, dout)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    pt = torch.autograd.grad(_torch_same_dtype(*leaves, causal, window), leaves, dout)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref = torch.autograd.grad(attention_reference(*leaves, causal=causal, window=window)[0], leaves, dout.double())
    return got, pt, ref


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_cuda(shape, causal, D, dtype):
    B, H, Hkv, Sq, Sk = shape
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, dtype)
    dout = torch.randn_like(q)
    got, pt, ref = _grads_all(q, k, v, dout, causal)
    for name, g, p, r in zip(("dq", "dk", "dv"), got, pt, ref):
        assert g.dtype == dtype and g.shape == r.shape
        _assert_rule(name, g, p, r, slack=2e-4)


@pytest.mark.cuda
def test_backward_window_and_lse_grad_cuda():
    """A gradient arriving at lse too (d lse / d s = softmax), with a sliding window."""
    q, k, v = _inputs(2, 4, 2, 97, 130, 64, torch.bfloat16)
    dout, dl = torch.randn_like(q), torch.randn(2, 4, 97, device="cuda")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attention_with_lse(*leaves, causal=True, window=50)
    got = torch.autograd.grad((out.float() * dout).sum() + (lse * dl).sum(), leaves)
    leaves64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    o64, l64 = attention_reference(*leaves64, causal=True, window=50)
    ref = torch.autograd.grad((o64 * dout.double()).sum() + (l64 * dl.double()).sum(), leaves64)
    for g, r in zip(got, ref):
        err = (g.double() - r).abs().max().item()
        assert err <= 2e-2 * max(r.abs().max().item(), 1.0), err


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
def test_backward_deterministic_cuda(D):
    q, k, v = _inputs(2, 8, 2, 1025, 1025, D, torch.bfloat16)
    dout = torch.randn_like(q)

    def grads():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        return torch.autograd.grad(attention(*leaves, causal=True), leaves, dout)

    a, b = grads(), grads()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
def test_backward_writes_every_element_sanitizer(D):
    B, H, Hkv, Sq, Sk = 2, 4, 2, 45, 70
    q, k, v = _inputs(B, H, Hkv, Sq, Sk, D, torch.bfloat16)
    out, lse = attention_with_lse(q, k, v, causal=True)
    dout = torch.randn_like(q)
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
    delta = torch.full_like(lse, float("nan"))
    _C.flash_attn_bwd(dout, q, k, v, out, lse, None, dq, dk, dv, delta, None, None, Sq, Sk, True, D ** -0.5, -1,
                      stream(q))
    torch.cuda.synchronize()
    for t in (dq, dk, dv, delta):
        assert torch.isfinite(t).all()
    got, pt, ref = _grads_all(q, k, v, dout, True)
    for name, g, p, r in zip(("dq", "dk", "dv"), (dq, dk, dv), pt, ref):
        _assert_rule(name, g, p, r, slack=2e-4)


# ---- packed variable-length batches --------------------------------------------------------
def _packed(lens_q, lens_k, H, Hkv, D, dtype, device):
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32, device=device)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32, device=device)
    q = torch.randn(sum(lens_q), H, D, dtype=dtype, device=device)
    k = torch.randn(sum(lens_k), Hkv, D, dtype=dtype, device=device)
    v = torch.randn(sum(lens_k), Hkv, D, dtype=dtype, device=device)
    return q, k, v, cu_q, cu_k


def _varlen_same_dtype(q, k, v, cu_q, cu_k, causal):
    out = torch.zeros_like(q)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        if cq[b + 1] > cq[b] and ck[b + 1] > ck[b]:
            qb = q[cq[b]:cq[b + 1]].transpose(0, 1)[None]
            kb = k[ck[b]:ck[b + 1]].transpose(0, 1)[None]
            vb = v[ck[b]:ck[b + 1]].transpose(0, 1)[None]
            out[cq[b]:cq[b + 1]] = _torch_same_dtype(qb, kb, vb, causal)[0].transpose(0, 1)
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", [([97, 0, 1, 130], [97, 0, 1, 130]), ([97, 5, 64], [40, 0, 200])])
def test_varlen_cuda(lens, causal, D):
    lens_q, lens_k = lens
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, 4, 2, D, torch.bfloat16, "cuda")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attention_varlen_with_lse(*leaves, cu_q, cu_k, causal=causal)
    ref, lse_ref = attention_varlen_reference(q, k, v, cu_q, cu_k, causal=causal)
    _assert_rule("out", out.detach(), _varlen_same_dtype(q, k, v, cu_q, cu_k, causal), ref)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=2e-3, rtol=1e-3)
    dout = torch.randn_like(q)
    got = torch.autograd.grad(out, leaves, dout)
    l64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref_g = torch.autograd.grad(attention_varlen_reference(*l64, cu_q, cu_k, causal=causal)[0], l64, dout.double())
    lpt = [t.clone().requires_grad_(True) for t in (q, k, v)]
    pt_g = torch.autograd.grad(_varlen_same_dtype(*lpt, cu_q, cu_k, causal), lpt, dout)
    for name, g, p, r in zip(("dq", "dk", "dv"), got, pt_g, ref_g):
        _assert_rule(name, g, p, r, slack=2e-4)


@pytest.mark.cuda
def test_varlen_no_queries_cuda():
    """Every packed sequence without queries: dK and dV are zeros (the kernel writes them), not
    whatever torch.empty held."""
    q, k, v, cu_q, cu_k = _packed([0, 0], [5, 9], 4, 2, 64, torch.bfloat16, "cuda")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attention_varlen(*leaves, cu_q, cu_k, causal=False)
    assert out.shape == (0, 4, 64)
    dq, dk, dv = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert dq.shape == q.shape and torch.equal(dk, torch.zeros_like(k)) and torch.equal(dv, torch.zeros_like(v))


@pytest.mark.cuda
def test_nan_and_wide_window_cuda():
    """A NaN score propagates to out and lse (as on the CPU), not an lse of -inf; a window wider
    than any distance (even >= 2^30) is the same as no window."""
    q, k, v = _inputs(1, 2, 2, 33, 33, 64, torch.bfloat16)
    q[0, 1, 5, 3] = float("nan")
    out, lse = attention_with_lse(q, k, v, causal=True)
    assert torch.isnan(lse[0, 1, 5]) and torch.isnan(out[0, 1, 5]).all()
    fine = torch.ones_like(lse, dtype=torch.bool)
    fine[0, 1, 5] = False
    assert torch.isfinite(lse[fine]).all()
    q[0, 1, 5, 3] = 0.5
    full = attention(q, k, v, causal=True)
    for w in (40, 1 << 30, 1 << 40):
        torch.testing.assert_close(attention(q, k, v, causal=True, window=w), full)


@pytest.mark.cuda
def test_varlen_matches_padded_sanitizer():
    """Packing sequences changes nothing: each one equals the padded kernel on it alone."""
    lens = [33, 70, 1]
    q, k, v, cu_q, cu_k = _packed(lens, lens, 4, 2, 64, torch.float16, "cuda")
    out = attention_varlen(q, k, v, cu_q, cu_k, causal=True)
    for b, n in enumerate(lens):
        s = sum(lens[:b])
        one = attention(q[s:s + n].transpose(0, 1)[None].contiguous(), k[s:s + n].transpose(0, 1)[None].contiguous(),
                        v[s:s + n].transpose(0, 1)[None].contiguous(), causal=True)
        assert torch.equal(out[s:s + n], one[0].transpose(0, 1))


@pytest.mark.cuda
def test_model_uses_cuda_attention(monkeypatch):
    """A bf16 Llama on the GPU: plain and packed-document batches through the fused kernels
    match the same model run through torch SDPA (dense document mask)."""
    from llmforge.model import llama
    from llmforge.model.config import ModelConfig

    q = torch.randn(1, 4, 8, 64, device="cuda", dtype=torch.bfloat16)
    assert llama.use_cuda_attention(q)
    assert not llama.use_cuda_attention(q.float())
    cfg = ModelConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq_len=256)
    model = llama.Transformer(cfg).cuda().to(torch.bfloat16)
    tokens = torch.randint(0, 512, (2, 97), device="cuda")
    pos = torch.cat([torch.arange(40), torch.arange(57)]).expand(2, -1).contiguous().cuda()
    pos[1] = torch.arange(97)
    got_plain, got_packed = model(tokens), model(tokens, position_ids=pos)
    monkeypatch.setattr(llama, "use_cuda_attention", lambda q: False)
    monkeypatch.setattr(llama, "_packed_on_cuda", lambda x, hd: False)
    want_plain, want_packed = model(tokens), model(tokens, position_ids=pos)
    for got, want in ((got_plain, want_plain), (got_packed, want_packed)):
        err = (got.float() - want.float()).abs().max().item()
        assert err <= 0.05 * want.float().abs().max().item(), err


@pytest.mark.cuda
def test_opcheck_cuda():
    q, k, v = _inputs(2, 4, 2, 97, 97, 64, torch.bfloat16)
    torch.library.opcheck(torch.ops.llmforge.attention_fwd.default, (q, k, v, True, 0.125, -1))
    out, lse = attention_with_lse(q, k, v, causal=True)
    torch.library.opcheck(torch.ops.llmforge.attention_bwd.default,
                          (torch.randn_like(q), q, k, v, out, lse, None, True, 0.125, -1))
    qp, kp, vp, cu_q, cu_k = _packed([5, 70], [9, 60], 4, 2, 128, torch.float16, "cuda")
    torch.library.opcheck(torch.ops.llmforge.attention_varlen_fwd.default,
                          (qp, kp, vp, cu_q, cu_k, 70, 60, True, 128 ** -0.5, -1))


# ---- input checks (run anywhere) -------------------------------------------------------------
def test_flash_attn_rejects_cpu_tensors():
    q = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    lse = torch.empty(1, 2, 8)
    with pytest.raises(ValueError, match="CUDA"):
        _C.flash_attn_fwd(q, q, q, torch.empty_like(q), lse, None, None, 8, 8, True, 0.125, -1, 0)
    with pytest.raises(ValueError, match="CUDA"):
        _C.flash_attn_bwd(q, q, q, q, q, lse, None, torch.empty_like(q), torch.empty_like(q), torch.empty_like(q),
                          torch.empty_like(lse), None, None, 8, 8, True, 0.125, -1, 0)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_cpu_matches_reference(causal):
    """The CPU path (a loop over the sequences) against the float64 reference, with an empty
    sequence and one that has queries but no keys; gradients too."""
    lens_q, lens_k = [7, 0, 1, 13, 4], [9, 3, 1, 13, 0]
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, 4, 2, 16, torch.float32, "cpu")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attention_varlen_with_lse(*leaves, cu_q, cu_k, causal=causal)
    ref, lse_ref = attention_varlen_reference(q, k, v, cu_q, cu_k, causal=causal)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=1e-5, rtol=1e-5)
    assert (out[-4:] == 0).all()  # the last sequence has no keys
    dout = torch.randn_like(q)
    got = torch.autograd.grad(out, leaves, dout)
    l64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref_g = torch.autograd.grad(attention_varlen_reference(*l64, cu_q, cu_k, causal=causal)[0], l64, dout.double())
    for g, r in zip(got, ref_g):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_varlen_rejects_bad_offsets():
    q, k, v, cu_q, cu_k = _packed([5, 6], [5, 6], 2, 2, 16, torch.float32, "cpu")
    with pytest.raises(TypeError, match="int32"):
        attention_varlen(q, k, v, cu_q.long(), cu_k)
    with pytest.raises(ValueError, match="rise from 0"):
        attention_varlen(q, k, v, torch.tensor([1, 5, 11], dtype=torch.int32), cu_k)
    with pytest.raises(ValueError, match="rise from 0"):
        attention_varlen(q, k, v, torch.tensor([0, 5, 10], dtype=torch.int32), cu_k)  # 11 tokens
    with pytest.raises(ValueError, match="rise from 0"):
        attention_varlen(q, k, v, torch.tensor([0, 7, 5, 11], dtype=torch.int32),
                         torch.tensor([0, 5, 5, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="entries"):
        attention_varlen(q, k, v, cu_q, torch.tensor([0, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="tokens, heads, head_dim"):
        attention_varlen(q[None], k, v, cu_q, cu_k)
    with pytest.raises(ValueError, match="divide"):
        attention_varlen(q, k[:, :1].expand(-1, 3, -1).contiguous(), v[:, :1].expand(-1, 3, -1).contiguous(),
                         cu_q, cu_k)


def test_internal_varlen_ops_guard_their_offsets():
    """The internal ops (torch.ops.llmforge.attention_varlen_fwd/bwd, which the public API feeds
    checked offsets) assert them on the device before a kernel runs; on CPU tensors the same
    assertion raises at once, which is how it is tested without a GPU."""
    from llmforge.ops.attention import _assert_offsets

    cu = torch.tensor([0, 5, 5, 11], dtype=torch.int32)
    _assert_offsets(cu, 11, 6, "cu")                                      # valid: passes
    for bad, total, max_len in ((torch.tensor([1, 5, 11], dtype=torch.int32), 11, 6),   # not from 0
                                (torch.tensor([0, 5, 10], dtype=torch.int32), 11, 6),   # not to the total
                                (torch.tensor([0, 7, 5, 11], dtype=torch.int32), 11, 7),  # falls
                                (cu, 11, 5)):                                             # longer than max
        with pytest.raises(RuntimeError, match="must rise from 0"):
            _assert_offsets(bad, total, max_len, "cu")
    with pytest.raises(ValueError, match="outside"):
        _assert_offsets(cu, 11, 12, "cu")
