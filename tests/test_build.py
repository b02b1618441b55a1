"""The native build: module facts, and no AVX code reachable from the scalar path.

Kernels are compiled once per ISA; an inline or template function emitted by an
AVX2/AVX-512 object as a weak (COMDAT) symbol could be picked by the linker for
every caller and crash an older CPU with an illegal instruction. These tests read
the object files of the persistent build directory (build/<wheel tag>/).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
import torch

import llmforge
from llmforge import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJ = os.path.join(ROOT, "build", "*", "CMakeFiles", "lf_cpu_{isa}.dir", "csrc", "cpu", "*.o")
needs_binutils = pytest.mark.skipif(not shutil.which("nm") or not shutil.which("objdump"), reason="binutils missing")


def _objects(isa):
    objs = glob.glob(OBJ.format(isa=isa))
    if not objs:
        pytest.skip("no build directory with object files (not an editable build)")
    return objs


def test_build_info_is_honest():
    info = llmforge.build_info()
    assert info["cpu_isa"] in ("scalar", "avx2", "avx512")
    assert isinstance(info["cuda_kernels"], bool)
    # Without a GPU (or driver) the CUDA runtime errors are read as "no device".
    assert llmforge.cuda_available() == (info["cuda_kernels"] and info["cuda_devices"] > 0)
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]}
        # VNNI is used on the AVX-512 path only (and LLMFORGE_NO_VNNI turns it off)
        assert info["cpu_vnni"] <= ("avx512_vnni" in flags)
        assert info["cpu_bf16_dot"] == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__


def test_set_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="unknown ISA"):
        _C.set_cpu_isa("sse9")
    order = ["scalar", "avx2", "avx512"]
    best = _C.cpu_best_isa()
    for isa in order[order.index(best) + 1:]:
        with pytest.raises(ValueError, match="does not support"):
            _C.set_cpu_isa(isa)


@needs_binutils
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_vector_objects_export_no_shared_weak_code(isa):
    bad = []
    for obj in _objects(isa):
        out = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and parts[1] in "WVu" and not parts[2].startswith(("DW.ref.", f"lf::cpu::{isa}::")):
                bad.append(f"{os.path.basename(obj)}: {parts[2]}")
    assert not bad, "weak symbols outside lf::cpu::%s could leak AVX code into other paths:\n%s" % (isa, "\n".join(bad))


@needs_binutils
def test_scalar_objects_have_no_avx_instructions():
    for obj in _objects("scalar"):
        asm = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True, check=True).stdout
        assert "%ymm" not in asm and "%zmm" not in asm, obj
