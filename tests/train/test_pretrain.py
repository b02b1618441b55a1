"""Pretraining: the loss falls; schedules and optimisers; a SIGKILLed run resumes bit-identically."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from llmforge.data.pack import PackedDataset, write_packed
from llmforge.model import ModelConfig, Transformer
from llmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llmforge.train.optim import Lion, cosine_lr, make_optimizer
from llmforge.train import pretrain as pretrain_mod
from llmforge.train.pretrain import PretrainConfig, pretrain, resolve_dtype

HERE = os.path.dirname(os.path.abspath(__file__))


def _data(tmp_path, n_docs=400, seed=0):
    """Learnable synthetic documents: noisy counting sequences mod 97."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, step, n = rng.integers(0, 97), rng.integers(1, 4), rng.integers(10, 60)
        docs.append([int((start + step * i) % 96) + 1 for i in range(n)])
    write_packed(tmp_path, docs, seq_len=64, eos_id=0, vocab_size=97)
    return tmp_path


def _losses(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path)) if "loss" in r and "event" not in r]


def test_cosine_schedule():
    assert cosine_lr(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert cosine_lr(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)


def test_lion_matches_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    m = torch.zeros_like(p)
    ref = p.detach().clone()
    for _ in range(3):
        g = torch.randn_like(p)
        p.grad = g.clone()
        opt.step()
        ref = ref * (1 - 0.1 * 0.01) - 0.1 * torch.sign(0.9 * m + 0.1 * g)
        m = 0.99 * m + 0.01 * g
    torch.testing.assert_close(p.detach(), ref)
    with pytest.raises(ValueError):
        make_optimizer(torch.nn.Linear(2, 2), "sgdx")


@pytest.mark.parametrize("opt_name,dtype", [("adamw", "float32"), ("lion", "float32"), ("adamw", "bfloat16"),
                                            ("adamw", "auto")])
def test_loss_falls(tmp_path, opt_name, dtype):
    torch.manual_seed(0)
    data = PackedDataset(_data(tmp_path / "d"), seed=0)
    model = Transformer(ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64))
    cfg = PretrainConfig(out_dir=str(tmp_path / "run"), steps=60, batch_size=8, lr=3e-3 if opt_name == "adamw" else 1e-3,
                         warmup=5, log_every=5, checkpoint_every=30, optimizer=opt_name, dtype=dtype, progress=False,
                         eval_every=30, eval_batches=2)
    res = pretrain(model, data, cfg, eval_data=PackedDataset(tmp_path / "d", seed=99))
    assert res["precision"] == resolve_dtype(dtype, torch.device("cpu")) and res["precision"] in ("float32", "bfloat16")
    losses = _losses(os.path.join(cfg.out_dir, "metrics.jsonl"))
    assert losses[-1][1] < 0.6 * losses[0][1], losses
    assert res["eval_loss"] < 3.0
    assert os.path.exists(os.path.join(cfg.out_dir, "curves.png"))
    assert latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")).endswith("step_00000060")


def test_compiled_training_follows_eager(tmp_path):
    """compile=True trains through torch.compile (packed documents: position_ids on) and logs
    eager's losses; the checkpoint holds the model's own parameter names."""
    data_dir = _data(tmp_path / "d")
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64))
        cfg = PretrainConfig(out_dir=str(tmp_path / f"run{compiled}"), steps=8, batch_size=4, lr=3e-3, warmup=2,
                             log_every=1, checkpoint_every=8, compile=compiled, progress=False)
        pretrain(model, PackedDataset(data_dir, seed=0), cfg)
        runs[compiled] = _losses(os.path.join(cfg.out_dir, "metrics.jsonl"))
        meta = load_checkpoint(latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")), None, None)
        assert set(meta["model_state"]) == set(model.state_dict())
    torch._dynamo.reset()
    assert len(runs[True]) == len(runs[False]) == 8
    for (s0, l0), (s1, l1) in zip(runs[False], runs[True]):
        assert s0 == s1 and l1 == pytest.approx(l0, rel=1e-4)
    assert runs[True][-1][1] < runs[True][0][1]


def test_dtype_auto_follows_the_hardware(monkeypatch):
    """"auto" is bf16 autocast only where the CPU multiplies bf16 natively; explicit choices stand."""
    if os.path.exists("/proc/cpuinfo"):   # the native check against Linux's own list of CPU flags
        flags = next((line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
        assert pretrain_mod.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(pretrain_mod, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu) == ("bfloat16" if native else "float32")
        assert resolve_dtype("float32", cpu) == "float32" and resolve_dtype("bfloat16", cpu) == "bfloat16"
        with pretrain_mod._autocast(PretrainConfig(dtype="auto", progress=False), cpu):
            assert torch.is_autocast_enabled("cpu") == native
    with pytest.raises(ValueError, match="dtype"):
        PretrainConfig(dtype="float16")


def test_checkpoint_roundtrip_restores_rng_and_weights(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model, "adamw")
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    save_checkpoint(str(tmp_path), 7, model, opt, {"data": {"pos": 3}})
    expect = (random.random(), np.random.rand(), torch.rand(1))
    w = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    meta = load_checkpoint(latest_checkpoint(str(tmp_path)), model, opt)
    assert meta["step"] == 7 and meta["data"] == {"pos": 3}
    assert torch.equal(model.weight, w)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expect
    # a corrupt weights file raises, naming the checkpoint
    st = os.path.join(latest_checkpoint(str(tmp_path)), "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="cannot read model.safetensors"):
        load_checkpoint(latest_checkpoint(str(tmp_path)), model, opt)


def _run(out, data, steps, slow=False):
    cmd = [sys.executable, os.path.join(HERE, "tiny_run.py"), str(out), str(data), str(steps)] + (["--slow"] if slow else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_resume_is_bit_identical(tmp_path):
    data = _data(tmp_path / "d")
    steps = 16
    ref = _run(tmp_path / "ref", data, steps)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    want = _losses(tmp_path / "ref" / "metrics.jsonl")
    assert len(want) == steps
    rng = random.Random(0)
    for attempt in range(2):
        out = tmp_path / f"killed{attempt}"
        p = _run(out, data, steps, slow=True)
        # kill once the run is under way (after the first checkpoint), at a random moment
        deadline = time.time() + 120
        while latest_checkpoint(str(out / "checkpoints")) is None and time.time() < deadline and p.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = _run(out, data, steps)
        assert r.wait(timeout=300) == 0, r.stderr.read().decode()
        got = _losses(out / "metrics.jsonl")
        assert got == want, (got, want)
