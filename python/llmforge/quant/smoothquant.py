"""SmoothQuant (Xiao et al. 2023): W8A8 with the activation outliers migrated into the weights.

    act = calibrate_act_absmax(model, calib_batches)     # {linear name: max|X_j| per input channel}
    explicit = smooth_model(model, act, alpha=0.5)       # fp, in place: outputs unchanged
    quantize_w8a8(model, explicit)                       # block linears -> W8A8Linear, in place
    smoothquant(model, calib_batches, alpha=0.5)         # the three steps above

A few input channels of a transformer's linears carry activations 10-100x larger than the
rest, so per-token int8 activations waste their grid on them. For each group of linears that
share one input X, per input channel j:

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          (max|W_j| over the group's rows)
    X W^T = (X diag(1/s)) (diag(s) W^T)

alpha = 0 leaves the activations as they are up to 1/max|W_j| (all difficulty on them); alpha = 1
flattens the activations and moves their range into the weights. 0.5 is the paper's default.

Where the 1/s goes (exact in floating point, so the fp model's outputs do not change):
- q/k/v: into input_layernorm's weight (X = rmsnorm(h) * w, so w / s gives X / s).
- gate/up: into the norm in front of the FFN (block.mlp_norm: post_attention_layernorm, Gemma 2 / 3's
  pre_feedforward_layernorm).
- o_proj: into v_proj's output rows (and bias). Attention output is a convex combination of v
  rows, so scaling v's channels scales o_proj's input channels. With GQA a kv head feeds
  n_heads / n_kv_heads query heads, so s is shared across those heads (the maxima are taken
  over the group).
- down_proj: into up_proj's output rows (its input silu(gate) * up is linear in up).
Row scalings commute with per-output-channel int8, so folding into v_proj/up_proj costs their
own quantisation nothing. No fold is possible for MoE experts (the norm also feeds the router
and the other experts), for OLMo 2 / 3 (no norm in front of attention and the FFN) or with
fold=False: those linears keep s as an explicit input scale (W8A8Linear.smooth: x / s at run
time, one extra elementwise op).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .linear import W8A8Linear


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (migration strength) must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def block_linears(model) -> list[tuple[str, nn.Linear]]:
    """(full name, module) of every nn.Linear inside the transformer blocks (not lm_head)."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith("model.layers.")]


@torch.no_grad()
def calibrate_act_absmax(model, calib_batches) -> dict[str, torch.Tensor]:
    """max |x_j| over all calibration tokens, per input channel j, at the input of every block linear."""
    batches = list(calib_batches) if calib_batches is not None else []
    if not batches:
        raise ValueError("SmoothQuant needs calibration data (calib_batches is empty)")
    layers = block_linears(model)
    amax = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in layers}

    def hook(mod, inp, out, name):
        x = inp[0].detach().reshape(-1, inp[0].shape[-1])
        if x.shape[0]:
            amax[name] = torch.maximum(amax[name], x.abs().amax(0).double().cpu())

    hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: hook(mod, inp, out, name)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        for tokens in batches:
            model(tokens)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for n, a in amax.items():
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"{n}: calibration activations contain NaN or infinity")
    return amax


def smooth_scales(act_absmax: torch.Tensor, weights, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), float64; 1 for channels that never fire
    (or whose weights are all zero), so nothing is divided by zero."""
    alpha = _check_alpha(alpha)
    w_max = torch.stack([w.detach().abs().double().amax(0) for w in weights]).amax(0)
    a = act_absmax.double()
    s = a.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return torch.where((a > 0) & (w_max > 0), s, torch.ones_like(s))


def _scale_cols(lin: nn.Linear, s):
    lin.weight.data.copy_((lin.weight.double() * s[None]).to(lin.weight.dtype))


def _scale_rows(lin: nn.Linear, inv):
    lin.weight.data.copy_((lin.weight.double() * inv[:, None]).to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.data.copy_((lin.bias.double() * inv).to(lin.bias.dtype))


@torch.no_grad()
def smooth_model(model, act_absmax: dict, alpha: float = 0.5, fold: bool = True) -> dict[str, torch.Tensor]:
    """Apply SmoothQuant's scales to the fp model in place. Returns {linear name: s} for the
    linears that need an explicit input scale (not folded); empty when everything folded."""
    alpha = _check_alpha(alpha)
    cfg = model.cfg
    explicit = {}
    for i, block in enumerate(model.model.layers):
        pre = f"model.layers.{i}."
        at = block.self_attn
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if pre + "self_attn." + n not in act_absmax:
                raise ValueError(f"no calibration statistics for {pre}self_attn.{n}")
        qkv = (at.q_proj, at.k_proj, at.v_proj)
        s = smooth_scales(act_absmax[pre + "self_attn.q_proj"], [l.weight for l in qkv], alpha)
        if fold and block.attn_norm is not None:   # OLMo 2 / 3 have no norm in front: explicit scales
            w = block.attn_norm.weight
            w.data.copy_((w.double() / s).to(w.dtype))
            for l in qkv:
                _scale_cols(l, s)
        else:
            explicit.update({pre + "self_attn." + n: s for n in ("q_proj", "k_proj", "v_proj")})
        # o_proj: one s per kv channel, shared by the query heads that read that kv head
        h, kv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        a = act_absmax[pre + "self_attn.o_proj"].double().reshape(kv, h // kv, hd).amax(1)            # (kv, hd)
        wmax = at.o_proj.weight.detach().abs().double().reshape(-1, kv, h // kv, hd).amax(dim=(0, 2))  # (kv, hd)
        s_kv = smooth_scales(a.reshape(-1), [wmax.reshape(1, -1)], alpha)                             # (kv*hd,)
        s_o = s_kv.reshape(kv, 1, hd).expand(kv, h // kv, hd).reshape(-1)                              # (h*hd,)
        if fold:
            _scale_rows(at.v_proj, 1 / s_kv)
            _scale_cols(at.o_proj, s_o)
        else:
            explicit[pre + "self_attn.o_proj"] = s_o
        mlps = list(block.mlp.experts) if cfg.n_experts else [block.mlp]
        for e, mlp in enumerate(mlps):
            mp = pre + ("mlp." if not cfg.n_experts else f"mlp.experts.{e}.")
            gu = (mlp.gate_proj, mlp.up_proj)
            s_gu = smooth_scales(act_absmax[mp + "gate_proj"], [l.weight for l in gu], alpha)
            s_d = smooth_scales(act_absmax[mp + "down_proj"], [mlp.down_proj.weight], alpha)
            if fold and not cfg.n_experts and block.mlp_norm is not None:
                w = block.mlp_norm.weight
                w.data.copy_((w.double() / s_gu).to(w.dtype))
                for l in gu:
                    _scale_cols(l, s_gu)
                _scale_rows(mlp.up_proj, 1 / s_d)
                _scale_cols(mlp.down_proj, s_d)
            else:  # an MoE norm also feeds the router and every other expert (or no norm, OLMo): no fold
                explicit.update({mp + "gate_proj": s_gu, mp + "up_proj": s_gu, mp + "down_proj": s_d})
    return explicit


@torch.no_grad()
def quantize_w8a8(model, explicit: dict | None = None) -> list[str]:
    """Replace every block linear (not the MoE router or shared-expert gate, not lm_head) by a W8A8Linear, with the
    explicit input scale from `explicit` where given. In place; returns the swapped names."""
    explicit = explicit or {}
    swapped = []
    for name, lin in block_linears(model):
        if name.endswith((".router", ".shared_expert_gate")):   # routing decisions stay exact
            continue
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, W8A8Linear.from_linear(lin, smooth=explicit.get(name)))
        swapped.append(name)
    unknown = set(explicit) - set(swapped)
    if unknown:
        raise ValueError(f"explicit scales for unknown linears: {sorted(unknown)[:3]}")
    return swapped


def smoothquant(model, calib_batches, alpha: float = 0.5, fold: bool = True) -> dict:
    """Calibrate, smooth and quantise to W8A8, in place. Returns {"act_absmax", "explicit"}."""
    alpha = _check_alpha(alpha)
    act = calibrate_act_absmax(model, calib_batches)
    explicit = smooth_model(model, act, alpha, fold)
    quantize_w8a8(model, explicit)
    return {"act_absmax": act, "explicit": explicit}
