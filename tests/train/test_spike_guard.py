"""The pretraining loop's guard: a loss spike or a non-finite gradient skips the step (the weights
do not move), spike_patience skips in a row roll back to the last checkpoint, and a non-finite
loss stops the run with FloatingPointError — never NaN weights in a checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.data.pack import PackedDataset
from llmforge.model import ModelConfig, Transformer
from llmforge.train.pretrain import PretrainConfig, pretrain

from .test_pretrain import _data


class _NaNGrad(torch.autograd.Function):
    """Identity forward; NaN gradient backward (an overflow in the backward pass)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _run(tmp_path, spoil: dict, **cfg_kw):
    """pretrain with the loss of forward call i replaced by spoil[i](loss); returns the summary,
    the metrics records and the model."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=64))
    calls = [0]

    def hook(module, args, kwargs, out):
        i = calls[0]
        calls[0] += 1
        return spoil[i](out) if i in spoil and module.training else out

    model.register_forward_hook(hook, with_kwargs=True)
    cfg = PretrainConfig(out_dir=str(tmp_path / "run"), steps=12, batch_size=4, lr=3e-3, warmup=2, log_every=1,
                         checkpoint_every=4, progress=False, **cfg_kw)
    data = PackedDataset(_data(tmp_path / "d"), seed=1)
    positions, draw = [], data.next_batch

    def next_batch(n):
        positions.append((data.epoch, data.pos))
        return draw(n)
    data.next_batch = next_batch
    res = pretrain(model, data, cfg)
    recs = [json.loads(line) for line in open(res["metrics"])]
    return res, recs, model, positions


def test_spike_and_nonfinite_gradient_skip_the_step(tmp_path):
    res, recs, model, _ = _run(tmp_path, {6: lambda l: l * 50, 8: lambda l: _NaNGrad.apply(l)})
    events = [r["event"] for r in recs if "event" in r]
    assert events == ["loss_spike_skipped", "nonfinite_grad_skipped"]
    assert res["skipped_steps"] == 2 and res["step"] == 12          # 12 applied steps, 14 batches
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_patience_rolls_back_to_the_last_checkpoint(tmp_path):
    res, recs, model, positions = _run(tmp_path, {i: (lambda l: l * 50) for i in (6, 7)}, spike_patience=2)
    events = [r.get("event") for r in recs if "event" in r]
    assert events == ["loss_spike_skipped", "loss_spike_skipped", "rollback"]   # kept in the log
    assert next(r for r in recs if r.get("event") == "rollback")["to"].endswith("step_00000004")
    steps = [r["step"] for r in recs if "event" not in r]
    assert steps == list(range(1, 13))           # the undone steps 5, 6 leave the log; they run again ...
    assert len(set(positions)) == len(positions) == 16    # ... on new batches: the spiky ones are not fed again
    assert res["step"] == 12 and all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_loss_stops_the_run(tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan"):
        _run(tmp_path, {5: lambda l: l * float("nan")})


def test_preference_loop_stops_before_nan_reaches_the_weights(tmp_path):
    from llmforge.align.dpo import DPOConfig
    from llmforge.align.loop import optimize

    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in lin.parameters()]
    cfg = DPOConfig(out_dir=str(tmp_path), steps=4, progress=False)
    x = torch.randn(7, 5)

    def step_fn(step):
        loss = lin(x).pow(2).mean()
        return (_NaNGrad.apply(loss) if step == 2 else loss), {}

    with pytest.raises(FloatingPointError, match="step 3"):
        optimize(lin, cfg, step_fn)
    assert all(torch.isfinite(p).all() for p in lin.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))  # steps 1, 2 did update
