"""Replays every llmforge._C call the public API makes with one argument spoiled; run by
test_native_bad_input.py in a subprocess, so a crash fails that test instead of killing pytest.

    python tests/ops/native_spoil.py

Prints one line per spoiled call ('<function> arg<i> <how>: raise <Type> | ok') and a last line
'DONE <calls>'; exits 1 at the first exception that is not TypeError/ValueError (what the
native boundary raises for bad input), RuntimeError (torch's own errors on the way), IndexError
or KeyError (a missing entry of DecodeModel's dicts), and when a strided copy of an argument is
accepted but changes what the call writes.
"""
from __future__ import annotations

import copy
import faulthandler
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import llmforge._C as C  # noqa: E402

CLEAN = (TypeError, ValueError, RuntimeError, IndexError, KeyError)  # KeyError: a missing dict entry
# not reached from the CPU API, or plain queries/setters without buffers
NOT_RECORDED = {"DecodeModel", "TypeError", "ValueError", "cpu_best_isa", "cpu_bf16_dot", "cpu_isa", "cpu_vnni",
                "set_cpu_isa", "set_cpu_vnni", "rmsnorm_bwd_workspace_rows", "flash_attn_fwd", "flash_attn_bwd",
                "built_with_cuda", "cuda_device_count", "tok_pretokenize"}


def record() -> dict[str, tuple]:
    """The first call of each _C function while the public API runs on random, odd-sized input."""
    calls, real = {}, {}

    def keep(x):
        return x.detach().clone() if isinstance(x, torch.Tensor) else x.copy() if isinstance(x, np.ndarray) else x

    for name in dir(C):
        f = getattr(C, name)
        if name.startswith("_") or not callable(f) or "cuda" in name or isinstance(f, type):
            continue
        real[name] = f

        def spy(*a, _name=name, _f=f):
            calls.setdefault(_name, tuple(keep(x) for x in a))
            return _f(*a)
        setattr(C, name, spy)
    try:
        from tests.ops.test_op_bad_input import _record

        import llmforge.ops as o
        from llmforge.export import ggml_quants as gq
        from llmforge.tokenizer import Tokenizer

        _record()
        g = torch.Generator().manual_seed(3)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        o.gemm(r(13, 29), r(29, 17))
        o.linear(r(2, 5, 32).requires_grad_(), r(24, 32).requires_grad_()).sum().backward()
        h, w = r(9, 32).requires_grad_(), r(50, 32).requires_grad_()
        o.linear_cross_entropy(h, w, torch.randint(0, 50, (9,), generator=g)).sum().backward()
        o.int4_linear(r(40, 128), o.quantize_int4(r(24, 128), 64))  # the dequantised-panel path
        wq = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
        for fmt in sorted(gq.FORMATS):
            gq.dequantize(gq.quantize(wq, fmt), fmt, 512)
        tok = Tokenizer.train(["To be, or not to be, that is the question. " * 20], vocab_size=280)
        tok.decode(tok.encode("whether 'tis nobler"))
    finally:
        for name, f in real.items():
            setattr(C, name, f)
    return calls, set(real)


def spoils(a):
    """(how, value) pairs: a with one thing wrong."""
    if isinstance(a, np.ndarray):
        return [(how, v.numpy()) for how, v in spoils(torch.from_numpy(a.copy()))
                if v is not None and v.dtype != torch.bfloat16]
    if isinstance(a, torch.Tensor):
        from tests.ops.test_op_bad_input import _reshapes  # the ops-level test's shape changes

        out = ([("int32", a.to(torch.int32)), ("float64", a.double()), ("float16", a.half())] if a.is_floating_point()
               else [("float32", a.float()), ("int64", a.long()), ("uint8", a.to(torch.uint8))])
        out += list(_reshapes(a))
        if a.dim() >= 1 and a.shape[-1] > 1:
            s = torch.empty(*a.shape[:-1], 2 * a.shape[-1], dtype=a.dtype)[..., ::2]
            s.copy_(a)
            out.append(("strided", s))
        if a.dim() >= 2:
            out.append(("transposed", a.transpose(0, 1)))
        out.append(("none", None))
        if not a.is_floating_point() and a.numel():
            info = torch.iinfo(a.dtype)
            for v in (-1, 1000, 2**31 - 1):
                b = a.clone().contiguous()
                b.view(-1)[-1] = max(min(v, info.max), info.min)
                out.append((f"an entry {v}", b))
        return out
    if isinstance(a, list) and a and all(isinstance(x, int) for x in a):
        return [("an entry -1", a[:-1] + [-1]), ("an entry 2**31", a[:-1] + [2**31]), ("empty list", []),
                ("one entry more", a + a[-1:]), ("one entry fewer", a[:-1]), ("floats", [float(x) for x in a])]
    if isinstance(a, bool):
        return [("flipped", not a)]
    if isinstance(a, int):
        return [("-3", -3), ("0", 0), ("2**40", 2**40), ("+7", a + 7)]
    if isinstance(a, float):
        return [("nan", float("nan")), ("-1.0", -1.0)]
    if a is None:
        return [("a tensor", torch.randn(3))]
    return []


def decode_model_spoils():
    """DecodeModel's constructor arguments (config dict, weights, nested layer dicts), one leaf
    changed or removed at a time, for a float32, an int4, a Qwen3 (query/key norms), an MoE (two
    experts and a shared expert, Qwen2-MoE), a Gemma (every Gemma 2 / 3 part at once), an OLMo and a SmolLM3
    (a layer without RoPE) tiny model."""
    from llmforge.generate import native
    from llmforge.generate.load import quantize_for_inference
    from llmforge.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=61, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=32)
    extra = {"qwen3": {"qk_norm": True},
             "moe": {"n_experts": 2, "moe_top_k": 1, "moe_shared_ffn_dim": 96, "attention_bias": True,
                     "moe_norm_topk": False},
             "gemma": {"hidden_act": "gelu_tanh", "embed_scale": True, "norm_plus_one": True, "sandwich_norm": True,
                       "attn_scale": 0.3, "attn_softcap": 20.0, "final_softcap": 15.0, "sliding_window": 8,
                       "layer_types": ["sliding_attention", "full_attention"], "qk_norm": True,
                       "local_rope_theta": 1e4},
             "olmo": {"pre_norm": False, "sandwich_norm": True, "qk_norm": True, "qk_norm_full": True,
                      "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                      "local_rope_theta": 1e4},
             "smollm3": {"rope_layers": [1, 0]}}
    for quant in (None, "int4", "qwen3", "moe", "gemma", "olmo", "smollm3"):
        torch.manual_seed(0)
        m = Transformer(ModelConfig(**{**cfg.to_dict(), **extra.get(quant, {})})).eval()
        if quant == "int4":
            quantize_for_inference(m, quant)
        seen, real = [], C.DecodeModel
        native._C.DecodeModel = lambda *a: seen.append(a) or real(*a)
        try:
            native.NativeDecoder(m, 16)
        finally:
            native._C.DecodeModel = real
        args = list(seen[0])

        def leaves(obj, path=()):
            items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else None
            if items is None:
                yield path, obj
                return
            for k, v in items:
                yield from leaves(v, path + (k,))

        for path, leaf in leaves(args):
            for how, value in spoils(leaf) + ([("removed", KeyError)] if isinstance(path[-1], str) else []):
                spoilt = copy.deepcopy(args)
                parent = spoilt
                for p in path[:-1]:
                    parent = parent[p]
                if value is KeyError:
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = value
                yield f"DecodeModel[{quant or 'f32'}] {path}", how, real, spoilt


def _fresh(x):
    """A copy with x's strides (clone() would make a strided tensor contiguous)."""
    from tests.ops.test_op_bad_input import _copy

    if isinstance(x, torch.Tensor):
        return _copy(x)
    if isinstance(x, np.ndarray):
        return _fresh(torch.from_numpy(x)).numpy()
    return x


def _same_writes(fn, good, spoilt) -> bool:
    """The buffers of a call with contiguous arguments hold what those of the strided call do."""
    good = [_fresh(x) for x in good]
    fn(*good)
    as_t = lambda x: torch.as_tensor(np.asarray(x)).contiguous().nan_to_num(1.5)  # noqa: E731
    return all(torch.equal(as_t(a), as_t(b)) for a, b in zip(good, spoilt) if isinstance(a, (torch.Tensor, np.ndarray)))


def decode_step_spoils():
    """A built DecodeModel's steps: forward (a contiguous cache), forward_paged (pools and a block
    table), truncate and load_cache, one argument spoiled at a time; each case on a fresh decoder."""
    from llmforge.generate.native import NativeDecoder
    from llmforge.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=61, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=32)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    pools = [torch.zeros(cfg.n_layers, 6, 4, cfg.n_kv_heads, cfg.head_dim) for _ in range(2)]
    table = torch.tensor([[0, 1, 2], [3, 4, -1]], dtype=torch.int32)
    steps = {"forward": [[3, 7, 11], torch.empty(3, 61), True],
             "forward_paged": [[5, 9, 2], [0, 1, 0], [0, 0, 1], table, *pools, torch.empty(3, 61), [0, 1, 2]],
             "truncate": [0],
             "load_cache": [torch.randn(cfg.n_layers, cfg.n_kv_heads, 5, cfg.head_dim),
                            torch.randn(cfg.n_layers, cfg.n_kv_heads, 5, cfg.head_dim)]}
    for method, args in steps.items():
        for i, a in enumerate(args):
            for how, v in spoils(a):
                dec = NativeDecoder(model, 16)
                dec._m.forward([1, 2], torch.empty(1, 61), False)  # two cached tokens
                yield f"DecodeModel.{method} arg{i}", how, getattr(dec._m, method), [*args[:i], v, *args[i + 1:]]


def main() -> int:
    faulthandler.enable()
    calls, have = record()
    missing = have - set(calls) - NOT_RECORDED
    if missing:
        print(f"not recorded: {sorted(missing)}")
        return 1
    n = 0
    cases = ((f"{name} arg{i}", how, getattr(C, name), [*args[:i], v, *args[i + 1:]], args)
             for name, args in sorted(calls.items()) for i, a in enumerate(args) for how, v in spoils(a))
    more = (*decode_model_spoils(), *decode_step_spoils())
    for what, how, fn, args, good in (*cases, *((*c, None) for c in more)):
        args = [_fresh(x) for x in args]
        print(f"{what} {how}: ", end="", flush=True)
        try:
            out = fn(*args)
            if isinstance(out, C.DecodeModel):  # built: one step must work too
                out.forward([1, 5, 60], torch.empty(3, 61), True)
            if how == "strided" and good is not None and not _same_writes(fn, good, args):
                print("a strided argument changed the result")
                return 1
            print("ok", flush=True)
        except CLEAN as e:
            print(f"raise {type(e).__name__}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"UNCLEAN {type(e).__name__}: {e}", flush=True)
            return 1
        n += 1
    print(f"DONE {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
