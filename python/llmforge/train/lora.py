"""LoRA adapters (Hu et al. 2021): y = base(x) + (alpha / r) * dropout(x) @ A^T @ B^T.

    names = apply_lora(model, r=8, alpha=16, targets=("q_proj", "v_proj"))   # freezes everything else
    with adapters_disabled(model): ...          # the base model (e.g. the DPO reference)
    merge_lora(model)                           # fold B@A into the base weights, plain nn.Linear again
    save_adapters(model, dir) / load_adapters(model, dir)   # PEFT-style safetensors + adapter_config.json

The base may be an nn.Linear or any module with in_features/out_features whose forward is
x -> x @ W^T (e.g. an int4 linear for QLoRA); merging needs a float .weight.
A starts Kaiming-uniform and B at zero, so a fresh adapter leaves the model unchanged.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        dev = next(base.parameters(), torch.empty(0)).device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x):
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        a = self.lora_A.to(x.dtype)
        b = self.lora_B.to(x.dtype)
        return y + (self.dropout(x) @ a.t() @ b.t()) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self._base_weight().add_(self.delta_weight().to(self._base_weight().dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self._base_weight().sub_(self.delta_weight().to(self._base_weight().dtype))
            self.merged = False

    def _base_weight(self) -> torch.Tensor:
        w = getattr(self.base, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError("merging needs a base with a floating-point .weight (dequantise a QLoRA base first)")
        return w


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets=DEFAULT_TARGETS) -> list[str]:
    """Wrap every linear whose attribute name is in `targets`; freeze all other parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and not isinstance(child, LoRALinear) and hasattr(child, "in_features"):
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no module named any of {targets} was found")
    return wrapped


def lora_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    mods = [m for _, m in lora_modules(model)]
    before = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            m.disabled = b


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain base module back."""
    for name, m in lora_modules(model):
        m.merge()
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], m.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state_dict(model: nn.Module) -> dict:
    return {f"{n}.{k}": v.detach().cpu() for n, m in lora_modules(model) for k, v in
            (("lora_A.weight", m.lora_A), ("lora_B.weight", m.lora_B))}


def save_adapters(model: nn.Module, path: str) -> None:
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters")
    os.makedirs(path, exist_ok=True)
    # each file written under a temporary name and renamed: a killed save keeps the previous one
    weights = os.path.join(path, "adapter_model.safetensors")
    save_file(adapter_state_dict(model), weights + ".tmp")
    os.replace(weights + ".tmp", weights)
    m0 = mods[0][1]
    cfg = {"peft_type": "LORA", "r": m0.r, "lora_alpha": m0.alpha,
           "target_modules": sorted({n.rsplit(".", 1)[-1] for n, _ in mods}), "bias": "none",
           "task_type": "CAUSAL_LM"}
    config = os.path.join(path, "adapter_config.json")
    with open(config + ".tmp", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    os.replace(config + ".tmp", config)


def load_adapters(model: nn.Module, path: str) -> list[str]:
    """Apply LoRA as described by adapter_config.json and load the saved A/B matrices. Every
    adapter of the model must be in the file with its shape; a damaged or mismatched file
    raises ValueError before anything is copied."""
    from safetensors.torch import load_file

    cpath, wpath = os.path.join(path, "adapter_config.json"), os.path.join(path, "adapter_model.safetensors")
    try:
        with open(cpath, encoding="utf-8") as f:
            cfg = json.load(f)
        r, alpha, targets = cfg["r"], cfg["lora_alpha"], tuple(cfg["target_modules"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{cpath}: not a LoRA adapter config ({type(e).__name__}: {e})") from None
    if not lora_modules(model):
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)) \
                or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{cpath}: r must be a positive int, lora_alpha a number and target_modules names")
        apply_lora(model, r, alpha, 0.0, targets)
    try:
        state = load_file(wpath)
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ValueError(f"{wpath}: cannot read safetensors file: {e}") from None
    mods = dict(lora_modules(model))
    want = {f"{n}.{w}.weight": getattr(m, w) for n, m in mods.items() for w in ("lora_A", "lora_B")}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{path}: the adapters do not match the model's LoRA modules: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for key, target in want.items():
        if target.shape != state[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}")
    with torch.no_grad():
        for key, target in want.items():
            target.copy_(state[key])
    return list(mods)
