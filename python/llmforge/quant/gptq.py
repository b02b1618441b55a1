"""GPTQ (Frantar et al. 2023): quantise a linear layer column by column, spreading each
column's rounding error over the not-yet-quantised columns with the inverse Hessian of the
layer's inputs, H = 2 X^T X / n.

    w_hat, codes, scales, zeros = gptq_quantize(w, H, bits=4, group_size=64, act_order=False)
    quantize_model_gptq(model, calib_batches, bits=4, group_size=64)      # block by block, in place

Details as in the paper's algorithm: dead inputs (H_jj = 0) are zeroed, H is damped by
percdamp * mean(diag H), the upper Cholesky factor of H^-1 drives the updates, columns go
in blocks of `block_size` with lazy batch updates of the rest. act_order quantises columns
in order of decreasing H_jj; with groups it uses static groups (parameters from the
original weight's groups), so codes stay in the original column order.
"""
from __future__ import annotations

import torch
from torch import nn

from .rtn import _check, dequantize_groups, group_params, quantize_groups, quantize_with


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                  act_order: bool = False, percdamp: float = 0.01, block_size: int = 128):
    _check(w, group_size)
    out, n = w.shape
    if H.shape != (n, n):
        raise ValueError(f"Hessian has shape {tuple(H.shape)}, expected ({n}, {n})")
    if not torch.isfinite(H).all():
        raise ValueError("Hessian contains NaN or infinity (non-finite calibration activations?)")
    W = w.double().clone()
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    # static group parameters when reordering, otherwise computed as each group starts
    static = None
    if act_order:
        g = W.reshape(out, n // group_size, group_size)
        static = group_params(g, bits, symmetric)
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        inv_perm = torch.argsort(perm)
    else:
        perm = inv_perm = None
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError("the damped Hessian is not positive definite: H must be X^T X of calibration "
                         "activations (symmetric, non-negative diagonal); raise percdamp if it is") from None
    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    scales = torch.zeros(out, n // group_size, dtype=torch.float64)
    zeros = torch.zeros_like(scales)
    scale = zero = None
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = perm[col].item() if perm is not None else col
            grp = orig // group_size
            if static is not None:
                scale, zero = static[0][:, grp], static[1][:, grp]
                scales[:, grp], zeros[:, grp] = scale[:, 0], zero[:, 0]
            elif col % group_size == 0:
                # the group's columns as they stand now (earlier error feedback included)
                block = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :group_size]
                scale, zero = group_params(block, bits, symmetric)
                scales[:, grp], zeros[:, grp] = scale[:, 0], zero[:, 0]
            wcol = W1[:, i:i + 1]
            q, deq = quantize_with(wcol, scale, zero, bits)
            Q[:, col] = deq[:, 0]
            codes[:, col] = q[:, 0]
            err = (wcol[:, 0] - deq[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if inv_perm is not None:
        Q, codes = Q[:, inv_perm], codes[:, inv_perm]
    return Q.to(w.dtype), codes.to(torch.uint8), scales.float(), zeros.float()


ROUTING = (".router", ".shared_expert_gate")   # MoE routing stays float


def linear_layers(block: nn.Module):
    """The block's linears to quantise: all but the MoE router and shared-expert gate, whose
    outputs pick experts (quantising them would change which experts run)."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear) and not n.endswith(ROUTING)]


@torch.no_grad()
def collect_hessians(model, layers, calib_batches) -> dict:
    """H = 2 X^T X / n for the inputs of each given nn.Linear, over calibration batches."""
    H, count, hooks = {}, {}, []
    for name, mod in layers:
        H[name] = torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64)
        count[name] = 0

        def hook(m, inp, out, name=name):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            H[name] += 2 * x.t() @ x
            count[name] += x.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    try:
        for tokens in calib_batches:
            model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return {k: v / max(1, count[k]) for k, v in H.items()}, count


@torch.no_grad()
def quantize_model_gptq(model, calib_batches, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                        act_order: bool = False, percdamp: float = 0.01) -> dict:
    """Quantise every linear of every transformer block, block by block (later blocks see the
    already-quantised earlier ones), replacing weights by their dequantised values in place.
    Returns {layer name: (codes, scales, zeros)}. An MoE expert no calibration token was routed
    to has no Hessian (GPTQ would zero it): it is rounded to nearest instead, with a warning."""
    import warnings

    model.eval()
    result, unseen = {}, []
    for bi, block in enumerate(model.model.layers):
        layers = linear_layers(block)
        H, count = collect_hessians(model, layers, calib_batches)
        for name, mod in layers:
            if count[name] == 0:
                codes, s, z = quantize_groups(mod.weight.data, bits, group_size, symmetric)
                mod.weight.data.copy_(dequantize_groups(codes, s, z, group_size).to(mod.weight.dtype))
                unseen.append(f"model.layers.{bi}.{name}")
            else:
                q, codes, s, z = gptq_quantize(mod.weight.data, H[name], bits, group_size, symmetric, act_order,
                                               percdamp)
                mod.weight.data.copy_(q)
            result[f"model.layers.{bi}.{name}"] = (codes, s, z)
    if unseen:
        warnings.warn(f"{len(unseen)} linears saw no calibration tokens (MoE experts never routed to) and were "
                      f"rounded to nearest: {', '.join(unseen[:4])}{' ...' if len(unseen) > 4 else ''}")
    return result
