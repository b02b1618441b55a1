"""Checks shared by the config dataclasses (PretrainConfig, SFTConfig, DPOConfig, ModelConfig, ...),
called from their __post_init__: a recipe value of the wrong type or out of range raises there,
naming the config and the field, instead of failing deep inside a run (a string lr) or silently
training on nonsense (a negative lr is gradient ascent).

    check_config(self, positive=("steps", "lr"), fractions=("heldout",))

Every field is checked against its annotation (int, float, bool, str, tuple, list, dict, a nested
config, or a union of these with None): an int where a float is annotated is fine (TOML `lr = 1`),
a bool is never taken for a number. Numbers must be finite and >= 0 unless named in `signed`;
`positive` ones > 0; `fractions` in [0, 1].
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _allowed(t) -> tuple:
    """The runtime types a field annotated t may hold (empty: not checked)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        out = ()
        for a in typing.get_args(t):
            out += _allowed(a)
        return out
    if origin is not None:  # tuple[int, ...], list[str], dict[str, int]: the container type
        t = origin
    if t is type(None):
        return (type(None),)
    if t is float:
        return (int, float)
    if t is tuple:
        return (tuple, list)  # TOML arrays arrive as lists
    if isinstance(t, type) and (t in (int, bool, str, list, dict) or dataclasses.is_dataclass(t)):
        return (t,)
    return ()  # typing.Any, callables, ...: not checked


def check_config(cfg, positive=(), fractions=(), signed=()) -> None:
    name = type(cfg).__name__
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        allowed = _allowed(hints.get(f.name))
        if allowed and (not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)):
            want = " or ".join(sorted({"float" if a is int and float in allowed else a.__name__ for a in allowed}))
            raise TypeError(f"{name}.{f.name} must be {want}, got {v!r} ({type(v).__name__})")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"{name}.{f.name} must be finite, got {v!r}")
        if f.name in positive and not v > 0:
            raise ValueError(f"{name}.{f.name} must be > 0, got {v!r}")
        if f.name in fractions and not 0 <= v <= 1:
            raise ValueError(f"{name}.{f.name} must be in [0, 1], got {v!r}")
        if f.name not in signed and v < 0:
            raise ValueError(f"{name}.{f.name} must be >= 0, got {v!r}")
