"""RoPE: tables (plain, linear, YaRN) against independent float64 formulas; the CPU kernel per ISA
against complex-number rotation in float64; autograd, gradcheck, opcheck, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from llmforge.ops import apply_rope, apply_rope_reference, rope_cos_sin

# (dtype, atol, rtol): bf16 output rounding is 2^-9 relative.
TOLS = [(torch.float32, 2e-6, 2e-6), (torch.bfloat16, 1e-5, 2**-8), (torch.float64, 1e-13, 1e-13)]
SHAPES = [(1, 1, 1, 2), (2, 7, 3, 64), (1, 97, 2, 80), (2, 5, 4, 128), (3, 1, 2, 6), (1, 9, 1, 18)]


def _rotate64(x, theta, style):
    """Independent reference: pairs as complex numbers times exp(i * theta); theta (B, S, D/2)."""
    B, S, H, D = x.shape
    xf = x.double()
    if style == "neox":
        z = torch.complex(xf[..., : D // 2], xf[..., D // 2:])
    else:
        z = torch.complex(xf[..., 0::2], xf[..., 1::2])
    z = z * torch.polar(torch.ones_like(theta), theta)[:, :, None, :]
    if style == "neox":
        return torch.cat([z.real, z.imag], -1)
    return torch.stack([z.real, z.imag], -1).flatten(-2)


def _theta(B, S, D, base, positions=None):
    inv = torch.tensor([base ** (-2.0 * i / D) for i in range(D // 2)], dtype=torch.float64)
    p = torch.arange(S, dtype=torch.float64) if positions is None else positions.double()
    p = p[None].expand(B, S) if p.dim() == 1 else p
    return p[..., None] * inv


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("style", ["neox", "norm"])
def test_forward_cpu(cpu_isa, shape, dtype, atol, rtol, style):
    B, S, H, D = shape
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    cos, sin = rope_cos_sin(S + 3, D, base=500.0, dtype=torch.float64)
    out = apply_rope(x, cos, sin, style=style)
    assert out.dtype == dtype and out.shape == x.shape
    # tables rounded to float32 for float32/bf16 x: rotation error <= 2^-24 per factor
    tol = atol if dtype == torch.float64 else max(atol, 4e-7 * x.double().abs().max().item())
    torch.testing.assert_close(out.double(), _rotate64(x, _theta(B, S, D, 500.0), style), atol=tol, rtol=rtol)


@pytest.mark.parametrize("style", ["neox", "norm"])
@pytest.mark.parametrize("batched", [False, True])
def test_explicit_positions(cpu_isa, style, batched):
    B, S, H, D = 3, 11, 2, 80
    x = torch.randn(B, S, H, D, dtype=torch.float64)
    cos, sin = rope_cos_sin(100, D, dtype=torch.float64)
    pos = torch.randint(0, 100, (B, S) if batched else (S,))
    out = apply_rope(x, cos, sin, positions=pos.to(torch.int32), style=style)
    torch.testing.assert_close(out, _rotate64(x, _theta(B, S, D, 10000.0, pos), style), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, apply_rope_reference(x, cos, sin, pos, style), atol=1e-13, rtol=1e-13)


def test_neox_matches_hf_rotate_half():
    B, S, H, D = 2, 13, 3, 64
    x = torch.randn(B, S, H, D, dtype=torch.float64)
    cos, sin = rope_cos_sin(S, D, dtype=torch.float64)
    c, s = torch.cat([cos, cos], -1)[None, :, None], torch.cat([sin, sin], -1)[None, :, None]
    rot = torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1)
    torch.testing.assert_close(apply_rope(x, cos, sin), x * c + rot * s)


@pytest.mark.parametrize("style", ["neox", "norm"])
def test_inverse_and_norm_preserved(style):
    x = torch.randn(2, 33, 4, 128)
    cos, sin = rope_cos_sin(33, 128)
    y = apply_rope(x, cos, sin, style=style)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    back = torch.ops.llmforge.rope(y, cos, sin, None, style, True)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


# ---- tables ----------------------------------------------------------------------------
def test_tables_plain_and_linear():
    cos, sin = rope_cos_sin(50, 64, base=10000.0, dtype=torch.float64)
    th = _theta(1, 50, 64, 10000.0)[0]
    torch.testing.assert_close(cos, th.cos(), atol=1e-15, rtol=0)
    torch.testing.assert_close(sin, th.sin(), atol=1e-15, rtol=0)
    cl, sl = rope_cos_sin(50, 64, scaling={"type": "linear", "factor": 4.0}, dtype=torch.float64)
    thl = _theta(1, 50, 64, 10000.0, torch.arange(50) / 4.0)[0]
    torch.testing.assert_close(cl, thl.cos(), atol=1e-14, rtol=0)
    torch.testing.assert_close(sl, thl.sin(), atol=1e-14, rtol=0)
    c32, _ = rope_cos_sin(torch.tensor([0, 7, 3]), 64)
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.double(), cos[[0, 7, 3]], atol=1e-7, rtol=0)


def _yarn64(d, base, factor, orig, beta_fast=32.0, beta_slow=1.0):
    """Hugging Face's YaRN frequencies, element by element in Python floats."""
    def dim_of(rot):
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), d - 1)
    out = []
    for i in range(d // 2):
        f = 1.0 / base ** (2 * i / d)
        ramp = min(max((i - lo) / ((hi - lo) or 0.001), 0.0), 1.0)
        out.append(f / factor * ramp + f * (1 - ramp))
    return out, 0.1 * math.log(factor) + 1.0


@pytest.mark.parametrize("d,base,factor,orig", [(128, 10000.0, 4.0, 4096), (64, 500000.0, 8.0, 8192),
                                                 (80, 10000.0, 2.5, 2048)])
def test_tables_yarn(d, base, factor, orig):
    inv, att = _yarn64(d, base, factor, orig)
    pos = torch.tensor([0, 1, 17, 1000, 16383])
    cos, sin = rope_cos_sin(pos, d, base, scaling={"type": "yarn", "factor": factor,
                                                    "original_max_position_embeddings": orig}, dtype=torch.float64)
    ang = pos.double()[:, None] * torch.tensor(inv, dtype=torch.float64)
    # angles reach ~2e4 rad: a few float64 ulps of the angle (~4e-12) separate two correct formulas
    torch.testing.assert_close(cos, ang.cos() * att, atol=1e-10, rtol=0)
    torch.testing.assert_close(sin, ang.sin() * att, atol=1e-10, rtol=0)
    # the paper's regimes: pairs turning > beta_fast times in the original context are kept,
    # pairs turning < beta_slow times are interpolated by the factor
    for i in range(d // 2):
        f = base ** (-2 * i / d)
        turns = orig * f / (2 * math.pi)
        if turns > 32 * 1.5:
            assert math.isclose(inv[i], f, rel_tol=1e-12)
        if turns < 1 / 1.5:
            assert math.isclose(inv[i], f / factor, rel_tol=1e-12)


def test_yarn_attention_factor_options():
    s = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    c0, s0 = rope_cos_sin(8, 16, scaling=s, dtype=torch.float64)
    torch.testing.assert_close(c0.pow(2) + s0.pow(2), torch.full_like(c0, (0.1 * math.log(4) + 1) ** 2))
    c1, _ = rope_cos_sin(8, 16, scaling={**s, "attention_factor": 1.0}, dtype=torch.float64)
    torch.testing.assert_close(c0, c1 * (0.1 * math.log(4) + 1))
    c2, _ = rope_cos_sin(8, 16, scaling={**s, "mscale": 1.0, "mscale_all_dim": 1.0}, dtype=torch.float64)
    torch.testing.assert_close(c2, c1)  # equal mscales cancel


# ---- autograd ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("style", ["neox", "norm"])
def test_backward(cpu_isa, dtype, style):
    B, S, H, D = 2, 17, 3, 80
    x = torch.randn(B, S, H, D, dtype=torch.float64).to(dtype)
    dy = torch.randn(B, S, H, D, dtype=torch.float64).to(dtype)
    pos = torch.randint(0, 64, (B, S))
    cos, sin = rope_cos_sin(64, D, base=1000.0, dtype=torch.float64)
    xs = x.clone().requires_grad_(True)
    apply_rope(xs, cos, sin, pos, style).backward(dy)
    x64 = x.double().requires_grad_(True)
    apply_rope_reference(x64, cos, sin, pos, style).backward(dy.double())
    atol, rtol = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-5, 2**-8), torch.float64: (1e-13, 1e-13)}[dtype]
    torch.testing.assert_close(xs.grad.double(), x64.grad, atol=atol * 10, rtol=rtol)


@pytest.mark.parametrize("style", ["neox", "norm"])
def test_gradcheck_float64(cpu_isa, style):
    x = torch.randn(2, 5, 3, 10, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(9, 10, dtype=torch.float64, scaling={"type": "yarn", "factor": 2.0,
                                                                  "original_max_position_embeddings": 4})
    pos = torch.tensor([8, 0, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda a: apply_rope(a, cos, sin, pos, style), (x,))
    assert torch.autograd.gradgradcheck(lambda a: apply_rope(a, cos, sin, None, style), (x,))


def test_opcheck():
    x = torch.randn(2, 5, 3, 16, requires_grad=True)
    cos, sin = rope_cos_sin(8, 16)
    for style in ("neox", "norm"):
        torch.library.opcheck(torch.ops.llmforge.rope.default, (x, cos, sin, None, style, False))
        torch.library.opcheck(torch.ops.llmforge.rope.default, (x, cos, sin, torch.tensor([1, 2, 0, 7, 7]), style, True))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 6, 2, 32)
    cos, sin = rope_cos_sin(6, 32)
    f = torch.compile(lambda a: apply_rope(a, cos, sin) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), apply_rope(x, cos, sin) * 2)


def test_zero_size_is_a_noop():
    cos, sin = rope_cos_sin(4, 8)
    assert apply_rope(torch.randn(0, 3, 2, 8), cos, sin).shape == (0, 3, 2, 8)


# ---- bad input -------------------------------------------------------------------------------
def test_rejects_bad_inputs():
    cos, sin = rope_cos_sin(16, 8)
    x = torch.randn(2, 4, 3, 8)
    with pytest.raises(TypeError, match="dtype"):
        apply_rope(x.half(), cos, sin)
    with pytest.raises(ValueError, match="batch, seq, heads, head_dim"):
        apply_rope(x[0], cos, sin)
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(2, 4, 3, 7), cos, sin)
    with pytest.raises(ValueError, match="head_dim / 2"):
        apply_rope(torch.randn(2, 4, 3, 10), cos, sin)
    with pytest.raises(ValueError, match="contiguous"):
        apply_rope(x.transpose(1, 2), cos, sin)
    with pytest.raises(ValueError, match="style"):
        apply_rope(x, cos, sin, style="gptj")
    with pytest.raises(ValueError, match="exceeds"):
        apply_rope(torch.randn(1, 17, 1, 8), cos, sin)
    with pytest.raises(ValueError, match="positions"):
        apply_rope(x, cos, sin, positions=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="outside"):
        apply_rope(x, cos, sin, positions=torch.tensor([0, 1, 2, 16]))
    with pytest.raises(ValueError, match="outside"):
        apply_rope(x, cos, sin, positions=torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        apply_rope(x, cos, sin, positions=torch.tensor([0.0, 1, 2, 3]))
    with pytest.raises((ValueError, RuntimeError)):
        apply_rope(x, cos.to("meta"), sin.to("meta"))
    with pytest.raises(ValueError, match="head_dim"):
        rope_cos_sin(4, 7)
    with pytest.raises(ValueError, match="scaling type"):
        rope_cos_sin(4, 8, scaling={"type": "ntk", "factor": 2.0})
    with pytest.raises(ValueError, match="factor"):
        rope_cos_sin(4, 8, scaling={"type": "linear", "factor": -1.0})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        rope_cos_sin(4, 8, scaling={"type": "yarn", "factor": 2.0})


def test_native_boundary_rejects_bad_arguments():
    from llmforge import _C
    cos, sin = rope_cos_sin(16, 8)
    x = torch.randn(2, 4, 3, 8)
    y = torch.empty_like(x)
    with pytest.raises(TypeError, match="cos"):
        _C.rope_apply(x, cos.double(), sin, None, y, "neox", False, 1)
    with pytest.raises(ValueError, match="y has shape"):
        _C.rope_apply(x, cos, sin, None, y[:1], "neox", False, 1)
    with pytest.raises(TypeError, match="positions"):
        _C.rope_apply(x, cos, sin, torch.zeros(4, dtype=torch.int32), y, "neox", False, 1)
    with pytest.raises(ValueError, match="threads"):
        _C.rope_apply(x, cos, sin, None, y, "neox", False, 0)
    with pytest.raises(ValueError, match="style"):
        _C.rope_apply(x, cos, sin, None, y, "x", False, 1)


# ---- CUDA (kernels/rope.cu) ---------------------------------------------------------------------
CUDA_TOLS = [(torch.float32, 2e-6, 2e-6), (torch.bfloat16, 1e-5, 2**-8), (torch.float16, 1e-5, 2**-10)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol,rtol", CUDA_TOLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("style", ["neox", "norm"])
@pytest.mark.parametrize("pos_kind", [None, "seq", "batch"])
def test_cuda_matches_float64(shape, dtype, atol, rtol, style, pos_kind):
    B, S, H, D = shape
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    cos, sin = rope_cos_sin(S + 3, D, base=500.0, dtype=torch.float64)
    pos = None if pos_kind is None else torch.randint(0, S + 3, (S,) if pos_kind == "seq" else (B, S))
    out = apply_rope(x.cuda(), cos.cuda(), sin.cuda(), positions=None if pos is None else pos.cuda(), style=style)
    assert out.dtype == dtype and out.device.type == "cuda"
    tol = max(atol, 4e-7 * x.double().abs().max().item())
    want = _rotate64(x, _theta(B, S, D, 500.0, pos), style)
    torch.testing.assert_close(out.cpu().double(), want, atol=tol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("style", ["neox", "norm"])
def test_cuda_backward_is_the_inverse_rotation(style):
    B, S, H, D = 2, 9, 3, 64
    cos, sin = rope_cos_sin(S, D, device="cuda")
    x = torch.randn(B, S, H, D, device="cuda", requires_grad=True)
    dy = torch.randn(B, S, H, D, device="cuda")
    apply_rope(x, cos, sin, style=style).backward(dy)
    # the rotation is orthogonal: grad = R^T dy, and R (R^T dy) = dy
    torch.testing.assert_close(apply_rope(x.grad, cos, sin, style=style), dy, atol=1e-5, rtol=1e-5)
    # and it matches the float64 reference's autograd
    x64 = x.detach().cpu().double().requires_grad_(True)
    apply_rope_reference(x64, cos.cpu(), sin.cpu(), style=style).backward(dy.cpu().double())
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_rejects_positions_outside_the_table():
    cos, sin = rope_cos_sin(8, 16, device="cuda")
    x = torch.randn(1, 4, 1, 16, device="cuda")
    with pytest.raises(ValueError, match="positions"):
        apply_rope(x, cos, sin, positions=torch.tensor([0, 1, 8, 2], device="cuda"))
    with pytest.raises(ValueError, match="positions"):
        apply_rope(x, cos, sin, positions=torch.tensor([0, -1, 2, 3], device="cuda"))
