"""Fused attention (FlashAttention-style, CPU): softmax(scale * q k^T + mask) v without the score matrix.

    from llmforge.ops import attention, attention_with_lse
    out = attention(q, k, v, causal=True)                  # q: (B, H, Sq, D); k, v: (B, Hkv, Sk, D)
    out, lse = attention_with_lse(q, k, v, causal=True, window=255)

Layout is (batch, heads, seq, head_dim), contiguous, as torch's scaled_dot_product_attention
takes it. On CPU the output is stored token-major: (batch, seq, heads, head_dim) memory returned
as its (1, 2) transpose, so out.transpose(1, 2).reshape(batch, seq, heads * head_dim), the output
projection's input, needs no copy; its gradient is read with whatever row strides it has.
Grouped-query attention: Hkv divides H and q head h reads kv head h // (H // Hkv).
Sq may differ from Sk: query i sits at position i + Sk - Sq (bottom-right aligned, as in
flash-attn), so a decode step (Sq = 1) sees every key. Masks:
    causal:     query i sees key j only if j <= i + Sk - Sq
    window=w:   query i sees key j only if j >= i + Sk - Sq - w   (left window; -1 = none)
A query row that sees no key returns zeros and lse = -inf. scale defaults to 1/sqrt(D).

Kernels: csrc/cpu/attention.cpp (float32 and bfloat16 computed in float32, log-sum-exp in
float32; float64 on a plain double path, for gradcheck). Tiled with an online softmax; the
backward (FlashAttention-2 order) is deterministic for a given thread count and also takes
a gradient at lse. NaN in q/k/v propagates to the affected rows.

On CUDA tensors the same ops run kernels/flash_attn_fwd.cu and kernels/flash_attn_bwd.cu
(float16 / bfloat16, tensor-core mma.sync, fp32 softmax statistics and lse). Head dims 64
and 128 run as they are; smaller head dims are zero-padded to 64 or 128 (same result, the
padding costs time). The CUDA backward is deterministic: no atomics, dq in its own pass.

Packed variable-length batches (flash-attn's cu_seqlens convention, no padding):

    out = attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=True)
    # q: (Tq, H, D), k, v: (Tk, Hkv, D); cu_seqlens_*: int32 (B + 1,), [0, len0, len0 + len1, ...]

Sequence b is q[cu_q[b]:cu_q[b+1]] against k[cu_k[b]:cu_k[b+1]] with the masks above. On
CUDA it is one fused kernel launch (forward and backward); on CPU a loop over the sequences.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._native import C, arg, on_input_device, register_fake, require, same_device, stream, threads

_CUDA_DTYPES = (torch.float16, torch.bfloat16)
_CUDA_HEAD_DIMS = (64, 128)


def _check(q: Tensor, k: Tensor, v: Tensor, window: int) -> None:
    """Checks shared by the kernels and the fake implementations."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require(isinstance(t, Tensor), f"attention: {name} must be a tensor")
        require(t.dim() == 4, f"attention: {name} must be (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        require(t.numel() > 0, f"attention: {name} must not be empty, got shape {tuple(t.shape)}")
        require(t.is_contiguous(), f"attention: {name} must be contiguous; call .contiguous() first")
    same_device(q, k=k, v=v)
    require(k.shape == v.shape, f"attention: k has shape {tuple(k.shape)} but v has {tuple(v.shape)}")
    require(k.shape[0] == q.shape[0] and k.shape[3] == q.shape[3],
            f"attention: k has shape {tuple(k.shape)}, expected batch {q.shape[0]} and head dim {q.shape[3]} as q")
    require(q.shape[1] % k.shape[1] == 0,
            f"attention: the number of kv heads ({k.shape[1]}) must divide the number of q heads ({q.shape[1]})")
    require(window >= -1, f"attention: window must be -1 (none) or >= 0, got {window}")
    if q.device.type == "cuda":
        _check_cuda(q)


def _check_cuda(q: Tensor) -> None:
    if q.dtype not in _CUDA_DTYPES:
        raise TypeError(f"attention: the CUDA kernels take float16 or bfloat16, got {q.dtype}")
    require(q.shape[-1] <= 128, f"attention: the CUDA kernels take head dim <= 128, got {q.shape[-1]}")


def _padded_dim(d: int) -> int:
    return 64 if d <= 64 else 128


def _pad(t: Tensor | None, d: int) -> Tensor | None:
    """Zero-pads the last dimension to d (the CUDA kernels' head dims); no-op when it fits."""
    if t is None or t.shape[-1] == d:
        return t
    return torch.nn.functional.pad(t, (0, d - t.shape[-1])).contiguous()


def _cuda_window(q, k, window, cu_q):
    """A window wider than every query-key distance means no window; the kernels take < 2^30."""
    axis = 2 if cu_q is None else 0   # the tokens: (B, H, S, D) padded, (T, H, D) packed
    span = q.shape[axis] + k.shape[axis]
    return int(window) if window < 0 else min(int(window), span)


def _cuda_fwd(q, k, v, causal, scale, window, cu_q=None, cu_k=None, max_q=0, max_k=0):
    """(out, lse) from kernels/flash_attn_fwd.cu; padded (4-D) or packed (3-D with cu_seqlens)."""
    D = q.shape[-1]
    Dp = _padded_dim(D)
    qp, kp, vp = _pad(q, Dp), _pad(k, Dp), _pad(v, Dp)
    out = torch.empty_like(qp)
    window = _cuda_window(q, k, window, cu_q)
    if cu_q is None:
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        max_q, max_k = q.shape[2], k.shape[2]
    else:
        lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device):  # launch on q's GPU, whichever is current
        C.flash_attn_fwd(arg(qp), arg(kp), arg(vp), out, lse, cu_q, cu_k, int(max_q), int(max_k), bool(causal),
                         float(scale), int(window), stream(q))
    return (out if Dp == D else out[..., :D].contiguous()), lse


def _cuda_bwd(grad_out, q, k, v, out, lse, grad_lse, causal, scale, window, cu_q=None, cu_k=None, max_q=0, max_k=0):
    """(dq, dk, dv) from kernels/flash_attn_bwd.cu."""
    D = q.shape[-1]
    Dp = _padded_dim(D)
    qp, kp, vp, op = _pad(q, Dp), _pad(k, Dp), _pad(v, Dp), _pad(out.contiguous(), Dp)
    dop = _pad(grad_out.to(q.dtype).contiguous(), Dp)
    dq, dk, dv = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
    window = _cuda_window(q, k, window, cu_q)
    delta = torch.empty_like(lse)
    dlse = None if grad_lse is None else grad_lse.to(torch.float32).contiguous()
    if cu_q is None:
        max_q, max_k = q.shape[2], k.shape[2]
    with torch.cuda.device(q.device):
        C.flash_attn_bwd(dop, arg(qp), arg(kp), arg(vp), arg(op), arg(lse), dlse, dq, dk, dv, delta, cu_q, cu_k,
                         int(max_q), int(max_k), bool(causal), float(scale), int(window), stream(q))
    if Dp != D:
        dq, dk, dv = (t[..., :D].contiguous() for t in (dq, dk, dv))
    return dq, dk, dv


def _token_major_like(q: Tensor) -> Tensor:
    """(B, H, S, D) view of (B, S, H, D) storage: the CPU kernels' output layout, so that
    out.transpose(1, 2).reshape(B, S, H * D) (the output projection's input) is free."""
    B, H, S, D = q.shape
    return q.new_empty(B, S, H, D).transpose(1, 2)


def _floating_grads(op: str, **grads: Tensor | None) -> None:
    for name, t in grads.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; gradients are floating point")


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _scale(q: Tensor, scale: float | None) -> float:
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    require(math.isfinite(s) and s > 0, f"attention: scale must be finite and > 0, got {s}")
    return s


# ---- ops ------------------------------------------------------------------------------
@torch.library.custom_op("llmforge::attention_fwd", mutates_args=())
@on_input_device
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int) -> tuple[Tensor, Tensor]:
    """Returns (out, lse): out like q, lse (B, H, Sq) in float32 (float64 for float64 q)."""
    _check(q, k, v, window)
    if q.device.type == "cuda":
        return _cuda_fwd(q, k, v, causal, scale, window)
    out = _token_major_like(q)
    lse = torch.empty(q.shape[:3], dtype=_lse_dtype(q), device=q.device)
    C.attention_fwd(arg(q), arg(k), arg(v), out, lse, bool(causal), float(scale), int(window), threads())
    return out, lse


@register_fake(attention_fwd)
def _(q, k, v, causal, scale, window):
    _check(q, k, v, window)
    out = torch.empty_like(q) if q.device.type == "cuda" else _token_major_like(q)
    return out, q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


@torch.library.custom_op("llmforge::attention_bwd", mutates_args=())
@on_input_device
def attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  grad_lse: Tensor | None, causal: bool, scale: float, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (grad_q, grad_k, grad_v); grad_lse (optional) is the gradient arriving at lse."""
    _check(q, k, v, window)
    require(isinstance(grad_out, Tensor) and grad_out.dim() == 4,
            f"attention_backward: grad_out must be (batch, heads, seq_q, head_dim) like q, got {tuple(grad_out.shape)}")
    _floating_grads("attention_backward", grad_out=grad_out, grad_lse=grad_lse)
    if q.device.type == "cuda":
        return _cuda_bwd(grad_out, q, k, v, out, lse, grad_lse, causal, scale, window)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dlse = None if grad_lse is None else grad_lse.to(lse.dtype).contiguous()
    g = grad_out.to(q.dtype)
    g = g if g.stride(-1) == 1 and min(g.stride()) >= 0 else g.contiguous()  # the kernel reads any row strides
    C.attention_bwd(arg(g), arg(q), arg(k), arg(v), arg(out), arg(lse), dlse,
                    dq, dk, dv, bool(causal), float(scale), int(window), threads())
    return dq, dk, dv


@register_fake(attention_bwd)
def _(grad_out, q, k, v, out, lse, grad_lse, causal, scale, window):
    _check(q, k, v, window)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, causal, scale, window = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, scale, window)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_bwd(grad_out, q, k, v, out, lse, grad_lse, *ctx.args)
    return dq, dk, dv, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup)


# ---- public API ------------------------------------------------------------------------
def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                       window: int = -1) -> tuple[Tensor, Tensor]:
    """Fused attention returning (out, lse); both are differentiable. See the module docstring."""
    return attention_fwd(q, k, v, bool(causal), _scale(q, scale), int(window))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
              window: int = -1) -> Tensor:
    """Fused attention: (B, H, Sq, D) x (B, Hkv, Sk, D) -> (B, H, Sq, D). See the module docstring."""
    return attention_with_lse(q, k, v, causal, scale, window)[0]


def attention_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                        window: int = -1) -> tuple[Tensor, Tensor]:
    """Pure-torch attention in float64 that materialises the scores; returns (out, lse) in float64.

    Same masks and conventions as `attention` (rows that see no key: zeros and lse = -inf).
    """
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    s = _scale(q, scale)
    qf, kf, vf = (t.to(torch.float64) for t in (q, k, v))
    kf = kf.repeat_interleave(H // Hkv, dim=1)
    vf = vf.repeat_interleave(H // Hkv, dim=1)
    scores = s * qf @ kf.transpose(-1, -2)                       # (B, H, Sq, Sk)
    i = torch.arange(Sq).view(-1, 1) + (Sk - Sq)
    j = torch.arange(Sk).view(1, -1)
    allowed = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window >= 0:
        allowed &= j >= i - window
    scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                         # -inf on empty rows
    p = torch.exp(scores - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    return p @ vf, lse


# ---- packed variable-length batches ---------------------------------------------------------
def _check_cu(name: str, cu: Tensor, total: int, ref: Tensor) -> None:
    require(isinstance(cu, Tensor), f"attention_varlen: {name} must be a tensor")
    if cu.dtype != torch.int32:
        raise TypeError(f"attention_varlen: {name} has dtype {cu.dtype}, expected torch.int32")
    require(cu.dim() == 1 and cu.numel() >= 2,
            f"attention_varlen: {name} must be (batch + 1,) with batch >= 1, got shape {tuple(cu.shape)}")
    require(cu.device == ref.device, f"attention_varlen: {name} is on {cu.device} but q is on {ref.device}")
    require(cu.is_contiguous(), f"attention_varlen: {name} must be contiguous")


def _check_varlen(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, window: int) -> None:
    """Shape/dtype/device checks shared by the kernels and the fake implementations."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require(isinstance(t, Tensor), f"attention_varlen: {name} must be a tensor")
        require(t.dim() == 3, f"attention_varlen: {name} must be (tokens, heads, head_dim), got shape {tuple(t.shape)}")
        require(t.is_contiguous(), f"attention_varlen: {name} must be contiguous; call .contiguous() first")
    same_device(q, k=k, v=v)
    require(k.shape == v.shape, f"attention_varlen: k has shape {tuple(k.shape)} but v has {tuple(v.shape)}")
    require(k.shape[2] == q.shape[2], f"attention_varlen: k has head dim {k.shape[2]} but q has {q.shape[2]}")
    require(k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0,
            f"attention_varlen: the number of kv heads ({k.shape[1]}) must divide the number of q heads ({q.shape[1]})")
    require(window >= -1, f"attention_varlen: window must be -1 (none) or >= 0, got {window}")
    _check_cu("cu_seqlens_q", cu_q, q.shape[0], q)
    _check_cu("cu_seqlens_k", cu_k, k.shape[0], q)
    require(cu_q.numel() == cu_k.numel(),
            f"attention_varlen: cu_seqlens_q has {cu_q.numel()} entries but cu_seqlens_k has {cu_k.numel()}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"attention_varlen: q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}; they must match")
    if q.device.type == "cuda":
        _check_cuda(q)


def _seq_lengths(cu: Tensor, total: int, name: str) -> Tensor:
    """Checks the offsets' contents (one device read on CUDA); returns the lengths (CPU int64)."""
    c = cu.to("cpu", torch.int64)
    n = c[1:] - c[:-1]
    require(int(c[0]) == 0 and int(c[-1]) == total and bool((n >= 0).all()),
            f"attention_varlen: {name} must rise from 0 to the token count {total} without decreasing, "
            f"got {c.tolist()[:16]}{'...' if c.numel() > 16 else ''}")
    return n


def _assert_offsets(cu: Tensor, total: int, max_len: int, name: str) -> None:
    """The internal varlen ops' guard for offsets the public API did not check: cu must rise from
    0 to total with no sequence longer than max_len (the kernels' grid covers max_len rows per
    sequence and index memory with the offsets). Checked on cu's device without a host sync
    (torch._assert_async): a violation stops with a device-side assert before the kernel reads
    out of bounds; on CPU tensors it raises RuntimeError at once."""
    require(0 <= max_len <= max(total, 0), f"attention_varlen: max length {max_len} is outside [0, {total}]")
    c = cu.to(torch.int64)
    n = c[1:] - c[:-1]
    ok = (c[0] == 0) & (c[-1] == total) & (n >= 0).all() & (n.max() <= max_len)
    torch._assert_async(ok, f"attention_varlen: {name} must rise from 0 to the token count {total} with no "
                            f"sequence longer than {max_len}")


@torch.library.custom_op("llmforge::attention_varlen_fwd", mutates_args=())
@on_input_device
def attention_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int,
                         causal: bool, scale: float, window: int) -> tuple[Tensor, Tensor]:
    """CUDA only: (out (Tq, H, D), lse (H, Tq) float32). The public attention_varlen checks the offsets."""
    _check_varlen(q, k, v, cu_q, cu_k, window)
    require(q.device.type == "cuda", "attention_varlen_fwd: the fused varlen kernel runs on CUDA tensors")
    _assert_offsets(cu_q, q.shape[0], max_q, "cu_seqlens_q")
    _assert_offsets(cu_k, k.shape[0], max_k, "cu_seqlens_k")
    return _cuda_fwd(q, k, v, causal, scale, window, cu_q, cu_k, max_q, max_k)


@register_fake(attention_varlen_fwd)
def _(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window):
    _check_varlen(q, k, v, cu_q, cu_k, window)
    return torch.empty_like(q), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)


@torch.library.custom_op("llmforge::attention_varlen_bwd", mutates_args=())
@on_input_device
def attention_varlen_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                         grad_lse: Tensor | None, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int, causal: bool,
                         scale: float, window: int) -> tuple[Tensor, Tensor, Tensor]:
    _check_varlen(q, k, v, cu_q, cu_k, window)
    require(q.device.type == "cuda", "attention_varlen_bwd: the fused varlen kernel runs on CUDA tensors")
    _assert_offsets(cu_q, q.shape[0], max_q, "cu_seqlens_q")
    _assert_offsets(cu_k, k.shape[0], max_k, "cu_seqlens_k")
    _floating_grads("attention_varlen_bwd", grad_out=grad_out, grad_lse=grad_lse)
    return _cuda_bwd(grad_out, q, k, v, out, lse, grad_lse, causal, scale, window, cu_q, cu_k, max_q, max_k)


@register_fake(attention_varlen_bwd)
def _(grad_out, q, k, v, out, lse, grad_lse, cu_q, cu_k, max_q, max_k, causal, scale, window):
    _check_varlen(q, k, v, cu_q, cu_k, window)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_varlen(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, scale, window)


def _backward_varlen(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_varlen_bwd(grad_out, q, k, v, out, lse, grad_lse, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_varlen_fwd.register_autograd(_backward_varlen, setup_context=_setup_varlen)


def attention_varlen_with_lse(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                              causal: bool = False, scale: float | None = None,
                              window: int = -1) -> tuple[Tensor, Tensor]:
    """Packed-batch attention returning (out (Tq, H, D), lse (H, Tq)); see the module docstring."""
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, int(window))
    nq = _seq_lengths(cu_seqlens_q, q.shape[0], "cu_seqlens_q")
    nk = _seq_lengths(cu_seqlens_k, k.shape[0], "cu_seqlens_k")
    s = _scale(q, scale)
    if q.device.type == "cuda":
        return attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, int(nq.max()), int(nk.max()), bool(causal),
                                    s, int(window))
    outs, lses = [], []
    cq, ck = torch.cat([nq.new_zeros(1), nq.cumsum(0)]), torch.cat([nk.new_zeros(1), nk.cumsum(0)])
    H, D = q.shape[1], q.shape[2]
    for b in range(nq.numel()):
        qb = q[int(cq[b]):int(cq[b + 1])].transpose(0, 1).unsqueeze(0)   # (1, H, Sq, D)
        kb = k[int(ck[b]):int(ck[b + 1])].transpose(0, 1).unsqueeze(0)
        vb = v[int(ck[b]):int(ck[b + 1])].transpose(0, 1).unsqueeze(0)
        if qb.shape[2] == 0:
            continue
        if kb.shape[2] == 0:  # nothing to attend to: zeros, lse = -inf
            outs.append(q.new_zeros(qb.shape[2], H, D))
            lses.append(torch.full((H, qb.shape[2]), float("-inf"), dtype=_lse_dtype(q)))
            continue
        o, l = attention_fwd(qb.contiguous(), kb.contiguous(), vb.contiguous(), bool(causal), s, int(window))
        outs.append(o[0].transpose(0, 1))
        lses.append(l[0])
    if not outs:
        return torch.empty_like(q), q.new_empty(H, 0, dtype=_lse_dtype(q))
    return torch.cat(outs, 0), torch.cat(lses, 1)


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     causal: bool = False, scale: float | None = None, window: int = -1) -> Tensor:
    """Packed-batch attention: (Tq, H, D) x (Tk, Hkv, D) -> (Tq, H, D); see the module docstring."""
    return attention_varlen_with_lse(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, window)[0]


def attention_varlen_reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                               causal: bool = False, scale: float | None = None,
                               window: int = -1) -> tuple[Tensor, Tensor]:
    """Pure torch, float64: attention_reference per sequence; returns (out (Tq, H, D), lse (H, Tq))."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    H, D = q.shape[1], q.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    lse = torch.full((H, q.shape[0]), float("-inf"), dtype=torch.float64, device=q.device)
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b] or ck[b + 1] == ck[b]:
            continue
        qb = q[cq[b]:cq[b + 1]].transpose(0, 1).unsqueeze(0)
        kb = k[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        vb = v[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        o, l = attention_reference(qb, kb, vb, causal, scale, window)
        out[cq[b]:cq[b + 1]] = o[0].transpose(0, 1)
        lse[:, cq[b]:cq[b + 1]] = l[0]
    return out, lse
