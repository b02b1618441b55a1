"""AWQ (Lin et al. 2024): activation-aware weight quantisation. Input channels that see large
activations matter more; scaling them up before quantisation (and the activations down by the
same factor) protects them. Per group of linears sharing one input, search alpha in [0, 1]:
s = mean|x|^alpha (normalised), minimise || x W^T - (x / s) Q(W s)^T || on calibration data.

    quantize_model_awq(model, calib_batches, bits=4, group_size=64)     # in place

The 1/s is folded into the op that produces the shared input, so the model stays a plain
Llama: into input_layernorm for q/k/v, into post_attention_layernorm for gate/up, and into
up_proj's rows for down_proj. o_proj (whose input comes from attention) gets no scale.
MoE blocks: every expert's (and the shared expert's) gate/up share one scale, searched on all
tokens, folded into post_attention_layernorm, and the router and shared-expert gate (kept in
float: they pick experts) take s on their columns so that routing is unchanged; each expert's
down_proj gets its own scale from the tokens routed to it (an expert no calibration token
reaches is rounded to nearest).

clip=True adds AWQ's clipping search: per output row and group, shrink the quantisation range
to r * [min, max] with r in [max_shrink, 1], picking the r that minimises that group's output
error sum_n (x_g . (w_g - Q(clip(w_g))))^2 on (a subsample of) the calibration inputs. Every
linear of the block is clipped, o_proj included.
"""
from __future__ import annotations

import torch

from .rtn import rtn


@torch.no_grad()
def _inputs(model, modules, calib_batches):
    """Input activations (rows) seen by each module, concatenated over calibration batches."""
    store = {id(m): [] for m in modules}
    hooks = [m.register_forward_hook(lambda mod, inp, out: store[id(mod)].append(
        inp[0].reshape(-1, inp[0].shape[-1]).float())) for m in modules]
    try:
        for t in calib_batches:
            model(t)
    finally:
        for h in hooks:
            h.remove()
    return {id(m): torch.cat(store[id(m)]) if store[id(m)] else torch.zeros(0, m.in_features) for m in modules}


@torch.no_grad()
def search_scales(x, linears, bits, group_size, symmetric, grid: int = 20):
    """The best per-input-channel scale for linears sharing input x (rows, in)."""
    act = x.abs().mean(0).clamp(min=1e-8)
    ref = [x @ l.weight.float().t() for l in linears]
    best, best_err = torch.ones_like(act), float("inf")
    for i in range(grid + 1):
        a = i / grid
        s = act.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for l, r in zip(linears, ref):
            wq = rtn(l.weight.float() * s, bits, group_size, symmetric) / s
            err += float(((x @ wq.t()) - r).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


@torch.no_grad()
def search_clip(x, w, bits, group_size, symmetric, grid: int = 20, max_shrink: float = 0.5,
                n_tokens: int = 1024) -> torch.Tensor:
    """The clipped weight (same shape as w): per (row, group) the range shrink r in
    [max_shrink, 1] with the smallest output error on inputs x (rows, in)."""
    out, n = w.shape
    ng = n // group_size
    if x.shape[0] > n_tokens:
        x = x[torch.linspace(0, x.shape[0] - 1, n_tokens).long()]
    xg = x.double().reshape(-1, ng, group_size)                                   # (t, ng, gs)
    wg = w.double().reshape(out, ng, group_size)                                  # (out, ng, gs)
    hi, lo = wg.amax(-1, keepdim=True), wg.amin(-1, keepdim=True)
    if symmetric:
        hi = torch.maximum(hi, -lo)
        lo = -hi
    best = wg.clone()
    best_err = torch.full((out, ng), float("inf"), dtype=torch.float64)
    for i in range(grid + 1):
        r = 1 - (1 - max_shrink) * i / grid
        wc = torch.minimum(torch.maximum(wg, lo * r), hi * r)
        q = rtn(wc.reshape(out, n), bits, group_size, symmetric).reshape(out, ng, group_size)
        err = torch.einsum("tgk,ogk->tog", xg, wg - q).pow(2).sum(0)               # (out, ng)
        better = err < best_err
        best = torch.where(better[..., None], wc, best)
        best_err = torch.where(better, err, best_err)
    return best.reshape(out, n).to(w.dtype)


def _quantize(l, x, bits, group_size, symmetric, clip):
    w = l.weight.float()
    if clip:
        w = search_clip(x, w, bits, group_size, symmetric)
    l.weight.data.copy_(rtn(w, bits, group_size, symmetric).to(l.weight.dtype))


@torch.no_grad()
def quantize_model_awq(model, calib_batches, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                       grid: int = 20, clip: bool = True) -> dict:
    from ..model.llama import MoE

    model.eval()
    if any(b.attn_norm is None for b in model.model.layers):
        raise ValueError("AWQ folds its scales into the RMSNorm in front of q/k/v and gate/up; this model "
                         "(OLMo 2 / 3) has none: use GPTQ or RTN")
    chosen = {}
    for bi, block in enumerate(model.model.layers):
        at, mlp = block.self_attn, block.mlp
        post = block.mlp_norm.weight
        # (linears sharing one input, the module whose input that is, the norm weight or the rows
        # that produce it, float weights that read it and take s on their columns, tag).
        # down before gate/up: its 1/s folds into up_proj's rows, which must happen before
        # up_proj is itself quantised (so its codes stay on the integer grid)
        groups = [((at.q_proj, at.k_proj, at.v_proj), at.q_proj, block.attn_norm.weight, None, (), "qkv")]
        if isinstance(mlp, MoE):
            experts = [*mlp.experts, *([mlp.shared_expert] if hasattr(mlp, "shared_expert") else [])]
            readers = (mlp.router.weight, *((mlp.shared_expert_gate.weight,) if hasattr(mlp, "shared_expert") else ()))
            groups += [((e.down_proj,), e.down_proj, None, e.up_proj.weight, (), f"down.{j}") for j, e in enumerate(experts)]
            groups.append((tuple(l for e in experts for l in (e.gate_proj, e.up_proj)), mlp.router, post, None, readers,
                           "gate_up"))
        else:
            groups += [((mlp.down_proj,), mlp.down_proj, None, mlp.up_proj.weight, (), "down"),
                       ((mlp.gate_proj, mlp.up_proj), mlp.gate_proj, post, None, (), "gate_up")]
        for linears, probe, norm_w, prev_rows, readers, tag in groups:
            x = _inputs(model, [probe], calib_batches)[id(probe)]
            if not len(x):   # an expert no calibration token was routed to
                for l in linears:
                    _quantize(l, None, bits, group_size, symmetric, False)
                continue
            s = search_scales(x, linears, bits, group_size, symmetric, grid)
            for l in linears:
                l.weight.data.mul_(s.to(l.weight.dtype))
                _quantize(l, x / s, bits, group_size, symmetric, clip)
            if norm_w is not None:
                norm_w.data.div_(s.to(norm_w.dtype))
                for r in readers:
                    r.data.mul_(s.to(r.dtype))
            else:
                prev_rows.data.div_(s.to(prev_rows.dtype)[:, None])
            chosen[f"{bi}.{tag}"] = s
        x = _inputs(model, [at.o_proj], calib_batches)[id(at.o_proj)] if clip else None
        _quantize(at.o_proj, x, bits, group_size, symmetric, clip)
    return chosen
