"""Atomic, complete checkpoints: a killed run resumes exactly.

    save_checkpoint(dir, step=..., model=..., optimizer=..., extra={...})   # dir/step_000100/
    state = load_checkpoint(latest_checkpoint(dir), model, optimizer)

A checkpoint is a directory written under a temporary name and renamed into place
(rename is atomic on POSIX), then `latest` is updated the same way; a run killed at any
moment leaves either the previous checkpoint or the new one, never a partial one.
Contents: model.safetensors (weights), optim.pt (optimizer state: tensors and numbers
only, read back with torch.load(weights_only=True), so loading executes no pickled
code), state.json (step, RNG states of python/numpy/torch, data position, metrics).
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import torch


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(root: str, step: int, model, optimizer=None, extra: dict | None = None, keep: int = 2) -> str:
    """model / optimizer: modules or their (full) state dicts."""
    from safetensors.torch import save_file

    os.makedirs(root, exist_ok=True)
    name = f"step_{step:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp_{name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    msd = model if isinstance(model, dict) else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in msd.items()}
    save_file(state, os.path.join(tmp, "model.safetensors"))
    if optimizer is not None:
        torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), os.path.join(tmp, "optim.pt"))
    meta = {"step": step, "rng": rng_state(), **(extra or {})}
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(meta, f)
    for fn in os.listdir(tmp):
        with open(os.path.join(tmp, fn), "rb") as fh:
            os.fsync(fh.fileno())
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    latest_tmp = os.path.join(root, f".latest_{os.getpid()}")
    with open(latest_tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(root, "latest"))
    _fsync_dir(root)
    # keep the newest `keep` checkpoints
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    for old in steps[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def latest_checkpoint(root: str) -> str | None:
    p = os.path.join(root, "latest")
    if not os.path.isfile(p):
        return None
    name = open(p).read().strip()
    path = os.path.join(root, name)
    return path if os.path.isdir(path) else None


def load_checkpoint(path: str, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore RNG states and return state.json's content. With model/optimizer given, load
    them in place; with None, their state dicts come back as meta["model_state"] and
    meta["optim_state"] (for sharded models that load through torch.distributed)."""
    from safetensors.torch import load_file

    try:
        state = load_file(os.path.join(path, "model.safetensors"))
    except Exception as e:  # corrupt or missing file: say which
        raise ValueError(f"{path}: cannot read model.safetensors: {e}") from None
    opath = os.path.join(path, "optim.pt")
    osd = None
    if os.path.exists(opath):
        try:  # weights_only: tensors and plain containers, never code
            osd = torch.load(opath, weights_only=True)
        except Exception as e:  # damaged pickle/zip: RuntimeError, UnpicklingError, KeyError, ...
            raise ValueError(f"{path}: cannot read optim.pt: {type(e).__name__}: {str(e)[:200]}") from None
        if not (isinstance(osd, dict) and isinstance(osd.get("state"), dict) and isinstance(osd.get("param_groups"), list)):
            raise ValueError(f"{path}: optim.pt holds {type(osd).__name__}, not an optimizer state dict")
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            meta = json.load(f)
        rng = meta["rng"]
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: state.json is not a checkpoint's state ({type(e).__name__}: {e})") from None
    if optimizer is not None and osd is None:
        raise ValueError(f"{path}: an optimizer was given but the checkpoint has no optim.pt")
    if model is None:
        meta["model_state"], meta["optim_state"] = state, osd
    else:
        try:
            model.load_state_dict(state)
            if optimizer is not None:
                optimizer.load_state_dict(osd)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: the checkpoint does not fit the model/optimizer: {type(e).__name__}: "
                             f"{str(e)[:300]}") from None
    try:
        set_rng_state(rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: state.json's RNG states are damaged: {type(e).__name__}: {e}") from None
    return meta
