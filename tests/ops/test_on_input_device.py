"""ops._native.on_input_device: the CUDA ops run with their input's GPU current (the kernels
launch on the current device), and the decorator keeps the custom ops' schemas intact."""
from __future__ import annotations

import pytest
import torch

import llmforge.ops  # noqa: F401  (registers torch.ops.llmforge.*)
from llmforge.ops import int4_linear, quantize_int4, rmsnorm, swiglu
from llmforge.ops._native import on_input_device


def test_schemas_keep_argument_names_and_types():
    assert str(torch.ops.llmforge.swiglu_fwd.default._schema) == "llmforge::swiglu_fwd(Tensor gate, Tensor up) -> Tensor"
    s = str(torch.ops.llmforge.rmsnorm_fwd.default._schema)
    assert s.startswith("llmforge::rmsnorm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)"), s


def test_cpu_tensors_pass_through():
    seen = []

    @on_input_device
    def f(n: int, x: torch.Tensor) -> torch.Tensor:
        seen.append(n)
        return x * n

    x = torch.randn(3, 5)
    assert torch.equal(f(3, x), x * 3) and seen == [3]


@pytest.mark.cuda
def test_tensors_on_a_gpu_that_is_not_current_cuda():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.manual_seed(0)
    x, w = torch.randn(37, 256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16)
    g, u = torch.randn(37, 300, dtype=torch.bfloat16), torch.randn(37, 300, dtype=torch.bfloat16)
    q = quantize_int4(torch.randn(96, 256), 64)
    with torch.cuda.device(0):
        outs = []
        for dev in ("cuda:0", "cuda:1"):
            qd = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in q.items()}
            outs.append([rmsnorm(x.to(dev), w.to(dev)).cpu(), swiglu(g.to(dev), u.to(dev)).cpu(),
                         int4_linear(x.to(dev), qd).cpu()])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
