"""torchrun with gloo on CPU, 2 processes: DDP and FSDP2 match one process with the same global batch,
and a distributed run resumes from its checkpoint."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from .test_pretrain import _data, _losses

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "dist_run.py")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(mode, out, data, steps):
    if mode == "single":
        cmd = [sys.executable, SCRIPT, mode, str(out), str(data), str(steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _ in range(3):  # the free port found here can be taken before torchrun binds it: try another
        if mode != "single":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(_port()), SCRIPT, mode, str(out), str(data), str(steps)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode == 0 or "address already in use" not in r.stderr.lower():
            break
    assert r.returncode == 0, r.stderr[-3000:]
    return _losses(os.path.join(out, "metrics.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_matches_single_process(tmp_path, mode):
    data = _data(tmp_path / "d")
    single = _run("single", tmp_path / "single", data, 8)
    multi = _run(mode, tmp_path / mode, data, 8)
    assert [s for s, _ in multi] == [s for s, _ in single]
    for (_, a), (_, b) in zip(single, multi):
        assert abs(a - b) <= 1e-4 * abs(a), (single, multi)
    assert multi[-1][1] < multi[0][1]
    # resume: extend the finished run by 4 steps from its last checkpoint
    single_more = _run("single", tmp_path / "single", data, 12)
    multi_more = _run(mode, tmp_path / mode, data, 12)
    for (_, a), (_, b) in zip(single_more, multi_more):
        assert abs(a - b) <= 1e-4 * abs(a)
    assert len(multi_more) == 12
