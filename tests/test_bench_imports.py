"""Every benchmark module imports against the current package (a renamed function once left
`python -m bench train` broken with the tests green) and names a run() entry point."""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench.ops  # noqa: E402

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.ops.__path__) if m.name.startswith("bench_"))


def test_there_are_benchmarks():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports(name):
    mod = importlib.import_module(f"bench.ops.{name}")
    assert callable(getattr(mod, "run", None)), f"bench/ops/{name}.py has no run()"


@pytest.mark.parametrize("name", ["bench.harness", "bench.reference_llama", "bench.align_memory",
                                  "bench.align_pipeline", "bench.quant_ladder"])
def test_bench_helpers_import(name):
    importlib.import_module(name)
