"""Shared test setup: `cuda` tests skip without a usable GPU; helpers for ISA coverage."""
from __future__ import annotations

import pytest
import torch

import llmforge
from llmforge import _C

HAS_CUDA = llmforge.cuda_available() and torch.cuda.is_available()

ISAS = [isa for isa in ("scalar", "avx2", "avx512")
        if ["scalar", "avx2", "avx512"].index(isa) <= ["scalar", "avx2", "avx512"].index(_C.cpu_best_isa())]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and llmforge built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=ISAS)
def cpu_isa(request):
    """Run the test once per CPU vector path this machine supports."""
    before = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
