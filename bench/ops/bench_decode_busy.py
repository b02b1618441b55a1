"""Batch-1 decode on a busy machine: the native step with its ThreadChooser (generate/threads.py)
against the same step pinned to every thread, idle and next to a competing job.

    python -m bench decode_busy [--record]

~11M-parameter float32 model (the engine bench's), 64 tokens decoded one at a time after a
16-token prompt; figure: ms per token. The competing job is another process multiplying
1024x1024 matrices with as many threads as torch uses here (a training job on the same cores).
"""
from __future__ import annotations

import subprocess
import sys
import time

import torch

from bench.harness import finish, row, time_fn
from bench.ops.bench_engine import model_11m
from llmforge.generate.native import NativeDecoder

HOG = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    model = model_11m()
    threads = torch.get_num_threads()
    rows = []
    for load in ("idle", "next to a busy job"):
        hog = None
        if load != "idle":
            hog = subprocess.Popen([sys.executable, "-c", HOG])
            time.sleep(1.0)
        try:
            for impl in ("chosen threads", f"always {threads} threads"):
                dec = NativeDecoder(model, max_len=128)
                if impl != "chosen threads":
                    dec.chooser.pick = lambda rows: threads

                def go():
                    dec.reset()
                    dec.forward(list(range(16)))
                    for t in range(64):
                        dec.forward([t])

                t = time_fn(go, warmup=1, iters=3 if quick else 5, min_time_s=0)
                per = tuple(x / 64 for x in t)
                rows.append(row(f"~11M float32, batch 1, {load}, ms/token", impl, per,
                                tokens_per_s=f"{1e3 / per[0]:,.0f}"))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return finish(rows, baseline=f"always {threads} threads")
