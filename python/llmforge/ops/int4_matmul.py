"""Weight-only int4 matmul: y = x @ dequant(W)^T, group-wise scales, symmetric or asymmetric.

    q = quantize_int4(w, group_size=64, symmetric=True)   # {"packed", "scales", "zeros", "group_size"}
    y = int4_linear(x, q, bias=None)                      # x (..., K) float32 / bfloat16
    w_hat = dequantize_int4(q)                            # pure torch, the reference

Packed layout (the single source of truth, also read by csrc/cpu/int4_matmul.cpp): W (N, K),
K a multiple of 32 and of group_size (32, 64, 128). packed uint8 (N, K/2): each run of 32
weights k0..k0+31 is 16 bytes, byte i = q[k0+i] | q[k0+16+i] << 4. scales, zeros float32
(N, K/group_size); dequant = (q - zero) * scale, q in [0, 15]; symmetric: zero = 8,
scale = absmax / 7; asymmetric: scale = (max - min) / 15, zero = round(-min / scale).

Kernels: batches of up to 8 rows at a time stream the packed weights once per block of rows
and unpack nibbles in registers (int4_gemv); larger batches dequantise 256-row panels of W
(int4_dequant, in registers) and multiply them with llmforge's GEMM (ops.gemm.mm). The
backward gives x its gradient (dX = dY @ dequant(W), panel by panel) so QLoRA can train
adapters over a frozen int4 base; the quantised weights get none.

CUDA (kernels/int4_matmul.cu; same packed layout, no repacking): up to 16 rows run a split-K
tensor-core GEMV that streams the weights once with cp.async and dequantises in registers;
more rows run a tiled mma GEMM that dequantises weight tiles into shared memory; the backward
dX = dY @ dequant(W) is the same GEMM with the weight tiles read transposed (no bf16 copy of
W is ever materialised). x and grad_y enter the tensor cores as bfloat16 (float32 inputs are
rounded), the weights as bfloat16(dequant) with dequant bit-identical to dequantize_int4;
accumulation is float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._native import C, on_input_device, register_fake, require, stream, threads
from .gemm import mm

GROUP_SIZES = (32, 64, 128)
GEMV_MAX_ROWS = 16
PANEL = 256


def pack_int4(codes: Tensor) -> Tensor:
    """(N, K) uint8 codes in [0, 15] -> (N, K/2) packed bytes."""
    N, K = codes.shape
    c = codes.to(torch.uint8).view(N, K // 32, 2, 16)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(N, K // 2).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    N, K2 = packed.shape
    p = packed.view(N, K2 // 16, 16)
    return torch.stack([p & 0x0F, p >> 4], 2).reshape(N, K2 * 2)


def quantize_int4(w: Tensor, group_size: int = 64, symmetric: bool = True) -> dict:
    require(isinstance(w, Tensor) and w.dim() == 2, "quantize_int4: w must be a 2-D (out, in) tensor")
    require(w.is_floating_point(), f"quantize_int4: w must be floating point, got {w.dtype}")
    require(group_size in GROUP_SIZES, f"quantize_int4: group_size must be one of {GROUP_SIZES}")
    N, K = w.shape
    require(K % group_size == 0 and K % 32 == 0,
            f"quantize_int4: in_features {K} must be a multiple of group_size {group_size} (and of 32)")
    require(bool(torch.isfinite(w).all()), "quantize_int4: weight contains NaN or infinity")
    g = w.detach().double().reshape(N, K // group_size, group_size)
    if symmetric:
        scale = g.abs().amax(-1) / 7
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale = (hi - lo) / 15
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.round(-lo / scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    codes = torch.clamp(torch.round(g / scale.double()[..., None]) + zero[..., None], 0, 15).to(torch.uint8)
    return {"packed": pack_int4(codes.reshape(N, K)), "scales": scale.contiguous(),
            "zeros": zero.float().contiguous(), "group_size": group_size}


def dequantize_int4(q: dict) -> Tensor:
    codes = unpack_int4(q["packed"]).float()
    N, K = codes.shape
    G = q["group_size"]
    w = (codes.view(N, K // G, G) - q["zeros"][..., None]) * q["scales"][..., None]
    return w.reshape(N, K)


def _check(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int, grad: bool = False) -> None:
    """x (..., in_features), or with grad=True the gradient grad_y (..., out_features) of the
    activation's backward; packed, scales and zeros as quantize_int4 makes them."""
    xn = "grad_y" if grad else "x"
    require(isinstance(x, Tensor) and x.dim() >= 1, f"int4_linear: {xn} must be a tensor with at least 1 dimension")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"int4_linear: {xn} must be float32 or bfloat16, got {x.dtype}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"int4_linear: packed must be uint8, got {packed.dtype}")
    require(packed.dim() == 2, "int4_linear: packed must be (out_features, in_features / 2)")
    require(group_size in GROUP_SIZES, f"int4_linear: group_size must be one of {GROUP_SIZES}")
    K = packed.shape[1] * 2
    want = packed.shape[0] if grad else K
    require(x.shape[-1] == want, f"int4_linear: {xn} has {x.shape[-1]} features, the weight {want}")
    require(K % group_size == 0, f"int4_linear: in_features {K} is not a multiple of group_size {group_size}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t.dtype != torch.float32:
            raise TypeError(f"int4_linear: {name} must be float32, got {t.dtype}")
        require(tuple(t.shape) == (packed.shape[0], K // group_size),
                f"int4_linear: {name} has shape {tuple(t.shape)}, expected {(packed.shape[0], K // group_size)}")
    for name, t in (("packed", packed), ("scales", scales), ("zeros", zeros)):
        require(t.device == x.device, f"int4_linear: {name} is on {t.device} but {xn} is on {x.device}")
    require(x.device.type in ("cpu", "cuda", "meta"), f"int4_linear: CPU or CUDA tensors only, got {x.device}")


def _aligned16(t: Tensor) -> Tensor:
    """t itself when its data is 16-byte aligned (the CUDA kernels' vector loads), else a copy."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _dequant_panels(packed, scales, zeros, G):
    N, K = packed.shape[0], packed.shape[1] * 2
    for r0 in range(0, N, PANEL):
        rows = min(PANEL, N - r0)
        buf = torch.empty(rows, K, dtype=torch.float32)
        C.int4_dequant(packed, scales, zeros, buf, r0, G, threads())
        yield r0, rows, buf


@torch.library.custom_op("llmforge::int4_linear", mutates_args=())
@on_input_device
def int4_linear_op(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    _check(x, packed, scales, zeros, group_size)
    K, N = x.shape[-1], packed.shape[0]
    if x.device.type == "cuda":
        x2 = _aligned16(x.detach().reshape(-1, K).to(torch.bfloat16).contiguous())
        M = x2.shape[0]
        y = torch.empty(M, N, dtype=torch.float32, device=x.device)
        ws = torch.empty(max(C.int4_cuda_workspace_floats(M, N), 1), dtype=torch.float32, device=x.device)
        C.int4_matmul_cuda(x2, packed.contiguous(), scales.contiguous(), zeros.contiguous(), y, ws, group_size,
                           stream(x))
        return y.to(x.dtype).reshape(*x.shape[:-1], N)
    x2 = x.detach().reshape(-1, K).float().contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    if M <= GEMV_MAX_ROWS:
        C.int4_matmul(x2, packed.contiguous(), scales.contiguous(), zeros.contiguous(), y, group_size, threads())
    else:
        for r0, rows, buf in _dequant_panels(packed.contiguous(), scales.contiguous(), zeros.contiguous(), group_size):
            mm(x2, buf.t(), out=y[:, r0:r0 + rows])
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


@register_fake(int4_linear_op)
def _(x, packed, scales, zeros, group_size):
    _check(x, packed, scales, zeros, group_size)
    return x.new_empty(*x.shape[:-1], packed.shape[0])


@torch.library.custom_op("llmforge::int4_linear_grad_x", mutates_args=())
@on_input_device
def int4_linear_grad_x(grad_y: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    _check(grad_y, packed, scales, zeros, group_size, grad=True)
    N, K = packed.shape[0], packed.shape[1] * 2
    if grad_y.device.type == "cuda":
        g2 = _aligned16(grad_y.detach().reshape(-1, N).to(torch.bfloat16).contiguous())
        dx = torch.empty(g2.shape[0], K, dtype=torch.float32, device=grad_y.device)
        C.int4_grad_x_cuda(g2, packed.contiguous(), scales.contiguous(), zeros.contiguous(), dx, group_size,
                           stream(grad_y))
        return dx.to(grad_y.dtype).reshape(*grad_y.shape[:-1], K)
    g2 = grad_y.detach().reshape(-1, N).float()
    dx = torch.zeros(g2.shape[0], K, dtype=torch.float32)
    for r0, rows, buf in _dequant_panels(packed.contiguous(), scales.contiguous(), zeros.contiguous(), group_size):
        mm(g2[:, r0:r0 + rows], buf, out=dx, accumulate=True)
    return dx.to(grad_y.dtype).reshape(*grad_y.shape[:-1], K)


@register_fake(int4_linear_grad_x)
def _(grad_y, packed, scales, zeros, group_size):
    _check(grad_y, packed, scales, zeros, group_size, grad=True)
    return grad_y.new_empty(*grad_y.shape[:-1], packed.shape[1] * 2)


def _setup(ctx, inputs, output):
    _, packed, scales, zeros, group_size = inputs
    ctx.save_for_backward(packed, scales, zeros)
    ctx.group_size = group_size


def _backward(ctx, grad_y):
    packed, scales, zeros = ctx.saved_tensors
    return int4_linear_grad_x(grad_y.contiguous(), packed, scales, zeros, ctx.group_size), None, None, None, None


int4_linear_op.register_autograd(_backward, setup_context=_setup)


def int4_linear(x: Tensor, q: dict, bias: Tensor | None = None) -> Tensor:
    y = int4_linear_op(x, q["packed"], q["scales"], q["zeros"], int(q["group_size"]))
    return y if bias is None else y + bias


def dequantize_int4_kernel(q: dict) -> Tensor:
    """dequant(W) (N, K) float32 from the native dequantiser of q's device (CPU or CUDA) —
    must equal dequantize_int4(q) bit for bit."""
    packed, scales, zeros = q["packed"].contiguous(), q["scales"].contiguous(), q["zeros"].contiguous()
    N, K = packed.shape[0], packed.shape[1] * 2
    w = torch.empty(N, K, dtype=torch.float32, device=packed.device)
    if packed.device.type == "cuda":
        with torch.cuda.device(packed.device):
            C.int4_dequant_cuda(packed, scales, zeros, w, 0, int(q["group_size"]), stream(packed))
    else:
        C.int4_dequant(packed, scales, zeros, w, 0, int(q["group_size"]), threads())
    return w


def int4_linear_reference(x: Tensor, q: dict, bias: Tensor | None = None) -> Tensor:
    y = x.double() @ dequantize_int4(q).double().t()
    return y if bias is None else y + bias.double()
