"""Merge methods. Every function checks that the state dicts have the same keys and shapes,
works in float32 (float64 inputs stay float64) and returns tensors in the first input's dtype.

linear:          sum_i w_i * theta_i (weights normalised to sum 1 unless normalize=False)
slerp:           spherical interpolation per tensor between two models (linear when nearly parallel)
task arithmetic: base + scale * sum_i (theta_i - base)            (Ilharco et al. 2023)
TIES:            per task vector keep the top-`density` magnitudes, elect a sign per entry by the
                 sign of the summed trimmed vectors, average the entries that agree with it
                 (Yadav et al. 2023)
DARE:            drop each delta entry with probability `drop`, rescale the rest by 1/(1-drop),
                 then add (optionally TIES-style sign election) (Yu et al. 2024)
"""
from __future__ import annotations

import torch


def _check(sds):
    if len(sds) < 1:
        raise ValueError("need at least one state dict")
    keys = set(sds[0])
    for i, sd in enumerate(sds[1:], 1):
        if set(sd) != keys:
            diff = sorted(keys ^ set(sd))[:5]
            raise ValueError(f"state dict {i} has different keys: {diff}")
        for k in keys:
            if sd[k].shape != sds[0][k].shape:
                raise ValueError(f"{k}: shape {tuple(sd[k].shape)} in state dict {i}, {tuple(sds[0][k].shape)} in 0")
    for sd in sds:
        for k, v in sd.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"{k}: contains NaN or infinity")


def _f(t):
    return t.double() if t.dtype == torch.float64 else t.float()


def merge_linear(sds, weights=None, normalize: bool = True):
    _check(sds)
    w = torch.tensor(weights if weights is not None else [1.0] * len(sds), dtype=torch.float64)
    if w.numel() != len(sds):
        raise ValueError("one weight per state dict")
    if normalize:
        if w.sum() == 0:
            raise ValueError("weights sum to zero")
        w = w / w.sum()
    out = {}
    for k, ref in sds[0].items():
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        out[k] = sum(float(wi) * _f(sd[k]) for wi, sd in zip(w, sds)).to(ref.dtype)
    return out


def merge_slerp(a, b, t: float = 0.5, eps: float = 1e-6):
    _check([a, b])
    if not 0.0 <= t <= 1.0:
        raise ValueError("t must be in [0, 1]")
    out = {}
    for k, ref in a.items():
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        x, y = _f(a[k]).reshape(-1), _f(b[k]).reshape(-1)
        nx, ny = x.norm(), y.norm()
        if nx < eps or ny < eps:
            r = (1 - t) * x + t * y
        else:
            cos = torch.clamp((x / nx) @ (y / ny), -1.0, 1.0)
            omega = torch.arccos(cos)
            if omega.abs() < 1e-4:
                r = (1 - t) * x + t * y
            else:
                so = torch.sin(omega)
                r = torch.sin((1 - t) * omega) / so * x + torch.sin(t * omega) / so * y
        out[k] = r.view_as(a[k]).to(ref.dtype)
    return out


def _deltas(base, sds, k):
    return [(_f(sd[k]) - _f(base[k])) for sd in sds]


def merge_task_arithmetic(base, sds, scale: float = 1.0):
    _check([base, *sds])
    out = {}
    for k, ref in base.items():
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        out[k] = (_f(ref) + scale * sum(_deltas(base, sds, k))).to(ref.dtype)
    return out


def _trim(d, density):
    if density >= 1.0:
        return d
    n = d.numel()
    keep = max(1, int(round(density * n)))
    thr = d.abs().reshape(-1).kthvalue(n - keep + 1).values
    return torch.where(d.abs() >= thr, d, torch.zeros_like(d))


def _elect(ds):
    stacked = torch.stack(ds)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return total / count


def merge_ties(base, sds, density: float = 0.2, scale: float = 1.0):
    _check([base, *sds])
    if not 0 < density <= 1:
        raise ValueError("density must be in (0, 1]")
    out = {}
    for k, ref in base.items():
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        ds = [_trim(d, density) for d in _deltas(base, sds, k)]
        out[k] = (_f(ref) + scale * _elect(ds)).to(ref.dtype)
    return out


def merge_dare(base, sds, drop: float = 0.9, scale: float = 1.0, seed: int = 0, ties: bool = False):
    _check([base, *sds])
    if not 0 <= drop < 1:
        raise ValueError("drop must be in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, ref in base.items():
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        ds = []
        for d in _deltas(base, sds, k):
            keep = torch.rand(d.shape, generator=g) >= drop
            ds.append(torch.where(keep, d / (1 - drop), torch.zeros_like(d)))
        merged = _elect(ds) if ties else sum(ds)
        out[k] = (_f(ref) + scale * merged).to(ref.dtype)
    return out
