"""Shared test setup: `cuda` tests skip without a usable GPU; helpers for ISA coverage; no test
reaches the network (nothing is fetched at run time: data and models come from packages and
local files)."""
from __future__ import annotations

import os
import socket

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


_LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")


def _local_only(fn, host_of):
    def guarded(*args, **kwargs):
        host = host_of(*args, **kwargs)
        if isinstance(host, str) and host not in _LOCAL:
            raise RuntimeError(f"a test tried to reach the network ({host!r}); llmforge must work offline")
        return fn(*args, **kwargs)
    return guarded


@pytest.fixture(autouse=True, scope="session")
def _offline():
    """Name lookups and connections to anything but this machine raise (in this process); child
    processes get the Hugging Face libraries' offline switches."""
    patches = {
        (socket, "getaddrinfo"): lambda host, *a, **k: host,
        (socket, "create_connection"): lambda address, *a, **k: address[0],
        (socket.socket, "connect"): lambda self, address: address[0] if isinstance(address, tuple) else None,
        (socket.socket, "connect_ex"): lambda self, address: address[0] if isinstance(address, tuple) else None,
    }
    saved = {key: getattr(*key) for key in patches}
    for (owner, name), host_of in patches.items():
        setattr(owner, name, _local_only(saved[(owner, name)], host_of))
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for (owner, name), fn in saved.items():
        setattr(owner, name, fn)
    for k, v in old_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
