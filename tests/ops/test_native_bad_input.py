"""The native module (llmforge._C) takes every spoiled argument without crashing: each call the
public API makes, replayed with one argument of the wrong dtype, shape, stride, value or kind,
raises a Python exception or computes what the unspoiled call computes (strided copies). The
replay runs in a subprocess (tests/ops/native_spoil.py) so that a crash is this test failing."""
from __future__ import annotations

import os
import subprocess
import sys


def test_native_calls_survive_every_spoiled_argument():
    script = os.path.join(os.path.dirname(__file__), "native_spoil.py")
    p = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines and lines[-1].startswith("DONE"), \
        f"exit {p.returncode}; last lines:\n" + "\n".join(lines[-5:]) + "\n" + p.stderr[-3000:]
    raised = sum(": raise " in line for line in lines)
    assert int(lines[-1].split()[1]) > 2500 and raised > 0.8 * len(lines), (len(lines), raised)
