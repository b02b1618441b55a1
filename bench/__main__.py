"""python -m bench <op> [<op> ...] | all   [--record] [--quick] [--device cpu|cuda] [--system-malloc]

Runs bench/ops/bench_<op>.py, prints a table and appends CSV rows (date, machine,
commit) to bench/results/<device>.csv; --record also appends the table to
bench/results/<device>.md.

CPU runs re-execute themselves with glibc's malloc told to keep freed memory
(mmap_max=0, a huge trim threshold), the steady state that jemalloc/tcmalloc give
and PyTorch recommends for CPU work: otherwise every large output tensor is a fresh
mmap whose page faults cost more than the kernel itself, for llmforge and torch
alike. --system-malloc measures with the default allocator instead; the table
header says which was used.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import os
import sys

from . import harness

CACHING_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("ops", nargs="+", help="op names (bench/ops/bench_<op>.py) or 'all'")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--record", action="store_true", help="append the table to bench/results/<device>.md")
    p.add_argument("--quick", action="store_true", help="fewer shapes and iterations")
    p.add_argument("--system-malloc", action="store_true", help="keep glibc's default allocator settings")
    a = p.parse_args(argv)
    if a.device == "cpu" and not a.system_malloc and os.environ.get("GLIBC_TUNABLES") != CACHING_MALLOC:
        os.environ["GLIBC_TUNABLES"] = CACHING_MALLOC
        os.execv(sys.executable, [sys.executable, "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    import bench.ops as ops_pkg

    names = a.ops
    if names == ["all"]:
        names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(ops_pkg.__path__) if m.name.startswith("bench_"))
    for name in names:
        mod = importlib.import_module(f"bench.ops.bench_{name}")
        rows = mod.run(device=a.device, quick=a.quick)
        harness.report(name, rows, device=a.device, record=a.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
