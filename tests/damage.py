"""Seeded damage for file-loading tests: what a disk, a network copy or a killed writer does
to a file."""
from __future__ import annotations

import numpy as np

HUGE = [b"\xff" * 8, (2**31).to_bytes(8, "little"), (2**40).to_bytes(8, "little")]


def spoilt(data: bytes, rng: np.random.Generator, head: int = 20000) -> bytes:
    """data with one random kind of damage: cut short; 1-8 random bytes anywhere; 1-3 random
    bytes in the first `head` bytes (headers, metadata, tables); or 8 header bytes set to a
    huge count."""
    b = bytearray(data)
    kind = rng.integers(4)
    head = max(9, min(len(b), head))
    if kind == 0:
        return bytes(b[: rng.integers(len(b))])
    if kind == 1:
        for off in rng.integers(0, len(b), rng.integers(1, 9)):
            b[off] = rng.integers(256)
    elif kind == 2:
        for off in rng.integers(0, head, rng.integers(1, 4)):
            b[off] = rng.integers(256)
    else:
        off = int(rng.integers(0, head - 8))
        b[off:off + 8] = HUGE[rng.integers(len(HUGE))]
    return bytes(b)


def damaged_copies(src, work, rng: np.random.Generator, n: int, head: int = 2000):
    """n times: a fresh copy of the directory src at work with one of its files spoilt; yields work."""
    import os
    import shutil

    names = sorted(os.listdir(src))
    for _ in range(n):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        f = os.path.join(work, names[rng.integers(len(names))])
        with open(f, "rb") as fh:
            data = fh.read()
        with open(f, "wb") as fh:
            fh.write(spoilt(data, rng, head))
        yield work
