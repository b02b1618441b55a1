"""The shared benchmark harness.

An op's benchmark (bench/ops/bench_<op>.py) defines ``run(device, quick) -> list[Row]``:
for each shape it times the llmforge kernel and its baselines with ``time_fn`` and
builds rows with ``row(...)``, giving bytes moved and/or flops so the table shows
GB/s, TFLOP/s and % of the machine's measured peak (``peak_bandwidth``: a large
tensor copy on this device, counted as bytes read + written, like every op's GB/s).

Timings are medians over repeated calls after warm-up; CSV rows carry date,
machine, torch version, CPU ISA and git commit.
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    case: str            # shape / configuration, e.g. "8192x4096 fp32"
    impl: str            # "llmforge", "torch eager", ...
    ms: float
    p10_ms: float
    p90_ms: float
    gbps: float | None = None
    tflops: float | None = None
    pct_peak: float | None = None
    speedup: float | None = None   # baseline ms / this ms, filled by finish()
    extra: dict = field(default_factory=dict)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str = "cpu", warmup: int = 3, iters: int = 20, min_time_s: float = 0.5) -> tuple[float, float, float]:
    """Median, p10 and p90 of fn() in milliseconds. On CUDA, timed with events."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - start_all < min_time_s and len(times) < 10 * iters):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times)


def _stats(times: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 of times."""
    times = sorted(times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return statistics.median(times), q(0.1), q(0.9)


def time_fns_interleaved(fns, device: str = "cpu", warmup: int = 2, iters: int = 10) -> list[tuple[float, float, float]]:
    """time_fn for several functions at once, one call of each in turn per round, so that a drift
    of the machine's speed (this VM's shifts by up to 1.5x within minutes) reaches all of them alike
    and their ratio stays fair. Returns (median, p10, p90) in ms per function."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [_stats(ts) for ts in times]


@functools.lru_cache(maxsize=None)
def peak_bandwidth(device: str = "cpu") -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written) on a 256 MiB buffer."""
    n = (256 << 20) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = time_fn(lambda: dst.copy_(src), device, warmup=3, iters=20)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def row(case: str, impl: str, timing: tuple[float, float, float], device: str = "cpu",
        bytes_moved: float | None = None, flops: float | None = None, peak_tflops: float | None = None, **extra) -> Row:
    ms, p10, p90 = timing
    r = Row(case, impl, ms, p10, p90, extra=extra)
    if bytes_moved:
        r.gbps = bytes_moved / (ms * 1e-3) / 1e9
        r.pct_peak = 100 * r.gbps / peak_bandwidth(device)
    if flops:
        r.tflops = flops / (ms * 1e-3) / 1e12
        if peak_tflops:
            r.pct_peak = 100 * r.tflops / peak_tflops
    return r


def finish(rows: list[Row], baseline: str) -> list[Row]:
    """Fill speedup = baseline ms / ms for every row of the same case."""
    base = {r.case: r.ms for r in rows if r.impl == baseline}
    for r in rows:
        if r.case in base:
            r.speedup = base[r.case] / r.ms
    return rows


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """The checkout's commit (+ "-dirty"); LLMFORGE_COMMIT where the tree has no .git (a lent GPU
    machine gets a copy of the working tree: bench/gpu_session.sh's caller passes it)."""
    if os.environ.get("LLMFORGE_COMMIT"):
        return os.environ["LLMFORGE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.stdout.strip() else "unknown"
    except Exception:
        return "unknown"


@functools.lru_cache(maxsize=None)
def machine(device: str = "cpu") -> str:
    import llmforge

    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, isa={llmforge._C.cpu_isa()}"


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    notes = any(r.extra for r in rows)
    head = ("| case | impl | ms (p10-p90) | GB/s | TFLOP/s | % peak | speedup |" + (" notes |" if notes else "")
            + "\n|---|---|---|---|---|---|---|" + ("---|" if notes else "") + "\n")
    lines = [
        f"| {r.case} | {r.impl} | {r.ms:.3f} ({r.p10_ms:.3f}-{r.p90_ms:.3f}) | {_fmt(r.gbps, '.1f')} | "
        f"{_fmt(r.tflops, '.3f')} | {_fmt(r.pct_peak, '.0f')} | {_fmt(r.speedup, '.2f')}{'x' if r.speedup else ''} |"
        + ((" " + ", ".join(f"{k}={v}" for k, v in r.extra.items()) + " |") if notes else "")
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def report(op: str, rows: list[Row], device: str = "cpu", record: bool = False) -> None:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    peak = peak_bandwidth(device)
    malloc = ("caching (glibc mmap_max=0)" if "mmap_max=0" in os.environ.get("GLIBC_TUNABLES", "")
              else "system default")
    header = (f"### {op} — {date}\n\nmachine: {machine(device)}; torch {torch.__version__}; commit {git_commit()}; "
              f"measured copy bandwidth {peak:.1f} GB/s (read+write)"
              + (f"; malloc: {malloc}" if device == "cpu" else "") + "\n\n")
    text = header + table(rows)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{device}.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "machine", "torch", "commit", "op", "case", "impl", "ms", "p10_ms", "p90_ms",
                        "gbps", "tflops", "pct_peak", "speedup", "copy_gbps"])
        for r in rows:
            w.writerow([date, machine(device), torch.__version__, git_commit(), op, r.case, r.impl, f"{r.ms:.4f}",
                        f"{r.p10_ms:.4f}", f"{r.p90_ms:.4f}", _fmt(r.gbps, ".2f"), _fmt(r.tflops, ".4f"),
                        _fmt(r.pct_peak, ".1f"), _fmt(r.speedup, ".3f"), f"{peak:.1f}"])
    if record:
        with open(RESULTS / f"{device}.md", "a") as f:
            f.write("\n" + text)
