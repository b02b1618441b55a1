"""Every llmforge custom op (torch.ops.llmforge.*), called directly with one argument spoiled,
raises a clear TypeError/ValueError or gives a well-defined result — never a crash, never
uninitialised memory.

The valid argument lists are recorded from the public API (forward and backward, random inputs,
odd sizes), so the backward ops get exactly what autograd passes them. Each test then spoils one
argument at a time: a tensor on another device, the wrong dtype, a strided copy, a NaN, a
different shape. The per-op tests check the messages; this file checks that no op or argument
was forgotten.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import llmforge.ops as o

ns = torch.ops.llmforge
CLEAN = (TypeError, ValueError)
CUDA_ONLY = {"attention_varlen_fwd", "attention_varlen_bwd"}
# shape changes a backward op cannot tell from a valid call: no forward tensor fixes these dims
FREE_BACKWARD_SHAPES = {
    ("int4_linear_grad_x", 0): {"shrink dim 0", "grow dim 0", "empty dim 0", "extra leading dim"},  # any batch
    ("cross_entropy_bwd", 1): {"shrink dim 1", "grow dim 1"},  # lse does not pin the vocabulary width
}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns_name, _, name = func._schema.name.partition("::")
        if ns_name == "llmforge" and name not in self.calls:
            keep = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
            self.calls[name] = (tuple(keep(a) for a in args), {k: keep(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def _record() -> dict[str, tuple]:
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    pull = lambda y: y.backward(r(*y.shape))  # noqa: E731  (random incoming gradients)
    rec = _Recorder()
    with rec:
        x, w = r(3, 5, 37).requires_grad_(), r(37).requires_grad_()
        pull(o.rmsnorm(x, w))
        x, res = r(3, 37).requires_grad_(), r(3, 37).requires_grad_()
        y, h = o.rmsnorm_residual(x, res, w)
        torch.autograd.backward([y, h], [r(*y.shape), r(*h.shape)])
        gate, up = r(4, 29).requires_grad_(), r(4, 29).requires_grad_()
        pull(o.swiglu(gate, up))
        pull(o.swiglu_packed(r(4, 58).requires_grad_()))
        cos, sin = o.rope_cos_sin(7, 16)
        pull(o.apply_rope(r(2, 3, 7, 16).requires_grad_(), cos, sin))
        q, k, v = (r(2, h, 13, 32).requires_grad_() for h in (4, 2, 2))
        pull(o.attention(q, k, v, causal=True))
        pull(o.cross_entropy(r(11, 53).requires_grad_(), torch.randint(0, 53, (11,), generator=g)))
        o.linear_cross_entropy(r(11, 24).requires_grad_(), r(53, 24).requires_grad_(),
                               torch.randint(0, 53, (11,), generator=g)).backward()
        cos, sin = o.rope_cos_sin(9, 8)
        qkv = o.qkv_rope(r(2, 9, 20).requires_grad_(), r((3 + 2) * 8, 20).requires_grad_(), None, cos, sin, None, 3, 1)
        torch.autograd.backward(qkv, [r(*t.shape) for t in qkv])
        ns.gemm(r(5, 7), r(7, 3))   # what torch.compile records of ops.gemm
        xn, nw, W = r(5, 40).requires_grad_(), r(40).requires_grad_(), r(24, 40).requires_grad_()
        pull(o.rmsnorm_linear(xn, nw, W))
        pull(o.int4_linear(r(3, 128).requires_grad_(), o.quantize_int4(r(24, 128), group_size=64)))
        q8 = o.quantize_int8(r(24, 96))
        o.int8_linear(r(3, 96), q8)
        o.w8a8_linear(r(3, 96), q8)
        kp, vp = r(9, 4, 2, 16), r(9, 4, 2, 16)
        table = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=torch.int32)
        lens = torch.tensor([5, 9], dtype=torch.int32)
        o.paged_kv_append(kp, vp, table, lens, r(2, 3, 2, 16), r(2, 3, 2, 16))
        lens = lens + 3
        o.paged_kv_gather(kp, table, lens)
        o.paged_decode_attention(r(2, 4, 16), kp, vp, table, lens)
        o.contiguous_decode_attention(r(2, 4, 16), r(2, 2, 12, 16), r(2, 2, 12, 16),
                                      torch.tensor([7, 12], dtype=torch.int32))
    return rec.calls


CALLS = _record()
OPS = sorted(CALLS)


def _copy(a):
    """A copy with a's strides (clone() would make a strided tensor contiguous)."""
    if not isinstance(a, torch.Tensor) or a.device.type == "meta":
        return a
    return torch.empty_strided(a.size(), a.stride(), dtype=a.dtype).copy_(a)


def _run(name, args, kwargs) -> tuple:
    args = [_copy(a) for a in args]
    out = getattr(ns, name)(*args, **kwargs)
    if out is None:  # in-place ops: what they wrote
        out = tuple(a for a in args if isinstance(a, torch.Tensor))
    return out if isinstance(out, tuple) else (out,)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        x.device == y.device and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x.nan_to_num(1.5), y.nan_to_num(1.5))
        for x, y in zip(a, b))


def _spoil(name, i, value):
    args, kwargs = CALLS[name]
    args = list(args)
    args[i] = value
    return _run(name, args, kwargs)


def _tensor_args(name):
    return [(i, a) for i, a in enumerate(CALLS[name][0]) if isinstance(a, torch.Tensor)]


def test_every_cpu_op_is_covered():
    registered = {n for n in dir(ns) if not n.startswith("_") and isinstance(getattr(ns, n), torch._ops.OpOverloadPacket)}
    assert registered - CUDA_ONLY == set(OPS), "an op is missing from _record()"


@pytest.mark.parametrize("name", OPS)
def test_a_tensor_on_another_device_raises(name):
    """One argument on the meta device among CPU ones: the dispatcher would pick the fake
    implementation, whose empty_like(cpu tensor) is uninitialised memory."""
    tensors = _tensor_args(name)
    if len(tensors) < 2:
        pytest.skip("one tensor argument: nothing to mix")
    for i, a in tensors:
        with pytest.raises(ValueError, match="device"):
            _spoil(name, i, a.to("meta"))


@pytest.mark.parametrize("name", OPS)
def test_wrong_dtype_raises(name):
    for i, a in _tensor_args(name):
        wrong = a.to(torch.int32) if a.is_floating_point() else a.to(torch.float32)
        with pytest.raises(CLEAN):
            _spoil(name, i, wrong)
        if not a.is_floating_point() and a.dtype != torch.int64:
            with pytest.raises(CLEAN):
                _spoil(name, i, a.to(torch.int64))


@pytest.mark.parametrize("name", OPS)
def test_strided_input_is_rejected_or_gives_the_same_result(name):
    base = _run(name, *CALLS[name])
    for i, a in _tensor_args(name):
        if a.dim() == 0 or a.shape[-1] < 2:
            continue
        strided = torch.empty(*a.shape[:-1], 2 * a.shape[-1], dtype=a.dtype)[..., ::2]
        strided.copy_(a)
        try:
            out = _spoil(name, i, strided)
        except CLEAN:
            continue
        assert _same(out, base), f"arg {i}: a strided copy changed the result"


@pytest.mark.parametrize("name", OPS)
def test_nan_is_rejected_or_reaches_the_output(name):
    """A NaN in a used element must not vanish into finite numbers (silent garbage)."""
    base = _run(name, *CALLS[name])
    for i, a in _tensor_args(name):
        if not a.is_floating_point() or a.numel() == 0:
            continue
        for spot in (0, a.numel() // 2, a.numel() - 1):
            bad = a.clone().contiguous()
            bad.view(-1)[spot] = float("nan")
            try:
                out = _spoil(name, i, bad)
            except CLEAN:
                continue
            nonfinite = any(x.is_floating_point() and not torch.isfinite(x).all() for x in out)
            assert nonfinite or _same(out, base), f"arg {i}: a NaN at {spot} gave a different, finite result"


def _reshapes(a: torch.Tensor):
    for d in range(a.dim()):
        if a.shape[d] > 1:
            yield f"shrink dim {d}", a.narrow(d, 0, a.shape[d] - 1).contiguous()
        yield f"grow dim {d}", torch.cat([a, a.narrow(d, 0, 1)], d)
        yield f"empty dim {d}", a.narrow(d, 0, 0).contiguous()
    yield "extra leading dim", a.unsqueeze(0)
    if a.dim() >= 2:
        yield "first dims merged", a.reshape(-1, *a.shape[2:])
    if a.dim() >= 1:
        yield "scalar", a.reshape(-1)[0].clone()


@pytest.mark.parametrize("name", OPS)
def test_any_shape_gives_a_clean_error_or_a_result(name):
    for i, a in _tensor_args(name):
        for what, b in _reshapes(a):
            try:
                out = _spoil(name, i, b)
            except CLEAN:
                continue
            assert all(isinstance(x, torch.Tensor) and x.device.type == "cpu" for x in out), (i, what)


@pytest.mark.parametrize("name", [n for n in OPS if n.endswith("_bwd") or n.endswith("_grad_x")])
def test_backward_rejects_shapes_its_forward_cannot_make(name):
    """A backward op's tensors come from one forward call, so each dimension is pinned by another
    argument: any single reshaped argument is an inconsistent call."""
    for i, a in _tensor_args(name):
        free = FREE_BACKWARD_SHAPES.get((name, i), set())
        for what, b in _reshapes(a):
            if what in free:
                continue
            with pytest.raises(CLEAN):
                _spoil(name, i, b)
                pytest.fail(f"arg {i} ({what}) accepted")
