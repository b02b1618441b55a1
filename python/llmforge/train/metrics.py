"""Progress line, JSONL metrics and PNG curves for long-running commands.

    log = MetricsLog(out_dir)            # appends to out_dir/metrics.jsonl
    log.write(step=10, loss=3.2, lr=1e-3)
    bar = Progress(total=1000)           # prints "step 10/1000 | loss 3.2000 | 12,345 tok/s | ETA 1m02s"
    plot_curves(out_dir/"metrics.jsonl", out_dir/"curves.png", keys=("loss", "lr", "grad_norm"))
"""
from __future__ import annotations

import json
import os
import sys
import time


class MetricsLog:
    def __init__(self, out_dir: str, name: str = "metrics.jsonl"):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, name)

    def write(self, **kv) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(kv) + "\n")

    def truncate_after(self, step: int, keep_events: bool = False) -> None:
        """Drop records beyond `step` (resuming from an earlier checkpoint: those steps run again);
        keep_events keeps the event records (a rollback's skipped steps and the rollback itself)."""
        if not os.path.exists(self.path):
            return
        recs = [(line, json.loads(line)) for line in open(self.path, encoding="utf-8") if line.strip()]
        keep = [line for line, r in recs if r.get("step", -1) <= step or (keep_events and "event" in r)]
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(self.path + ".tmp", self.path)


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, stream=None, every_s: float = 1.0):
        self.total, self.start, self.stream = total, start, stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.every_s = every_s

    def update(self, step: int, force: bool = False, **kv) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        done = step - self.start
        rate = done / max(1e-9, now - self.t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step}/{self.total}"]
        for k, v in kv.items():
            parts.append(f"{k} {v:,.0f}" if k.endswith("/s") else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        parts.append(f"ETA {_fmt_time(eta) if eta != float('inf') else '?'}")
        self.stream.write("\r" + " | ".join(parts) + ("\n" if step >= self.total else ""))
        self.stream.flush()


def plot_curves(jsonl: str, png: str, keys=("loss", "lr", "grad_norm"), x: str = "step") -> str | None:
    """Draw one panel per key that appears in the log; returns the PNG path (None without data)."""
    recs = [json.loads(l) for l in open(jsonl, encoding="utf-8") if l.strip()] if os.path.exists(jsonl) else []
    keys = [k for k in keys if any(k in r for r in recs)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r[x], r[k]) for r in recs if k in r and x in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(k)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if k in ("loss", "eval_loss", "grad_norm") and pts and min(p[1] for p in pts) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
    return png
