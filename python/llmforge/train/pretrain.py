"""Causal-LM pretraining: one function, one config dataclass.

    from llmforge.train.pretrain import PretrainConfig, pretrain
    result = pretrain(model, train_data, PretrainConfig(out_dir="runs/x", steps=1000), eval_data=val)

train_data / eval_data: llmforge.data.pack.PackedDataset (or anything with
next_batch(batch_size) -> {"input_ids", "position_ids", "loss_mask"} and
state_dict()/load_state_dict()). Re-running with the same out_dir resumes from the
latest checkpoint: model, optimizer, schedule, RNG states and data position, so the
losses continue bit-identically on CPU.

Per step: grad_accum micro-batches (losses averaged), optional bf16 autocast, gradient
clipping, warmup + cosine LR. Loss-spike guard: a step whose loss exceeds spike_factor
times the running mean is skipped (no update); spike_patience skips in a row roll back
to the last checkpoint. Writes metrics.jsonl, curves.png and checkpoints/ in out_dir.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsLog, Progress, plot_curves
from .optim import cosine_lr, make_optimizer


@dataclass
class PretrainConfig:
    """Run: out_dir, steps, seed.
    Batch: batch_size (sequences per micro-batch), grad_accum.
    Optimiser: optimizer ("adamw" | "lion"), lr, min_lr, warmup, weight_decay, betas, grad_clip.
    Precision/memory: dtype ("float32" | "bfloat16" autocast), gradient_checkpointing.
    Cadence: log_every, eval_every, eval_batches, checkpoint_every, keep_checkpoints.
    Guard: spike_factor (0 disables), spike_patience.
    """
    out_dir: str = "runs/pretrain"
    steps: int = 1000
    seed: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    spike_factor: float = 3.0
    spike_patience: int = 5
    progress: bool = True

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        for k in ("steps", "batch_size", "grad_accum"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        self.betas = tuple(self.betas)


def _autocast(cfg, device):
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch_loss(model, batch, device):
    tokens = batch["input_ids"].to(device)
    pos = batch.get("position_ids")
    pos = pos.to(device) if pos is not None else None
    labels = tokens.masked_fill(~batch["loss_mask"].to(device), -100) if "loss_mask" in batch else tokens
    return model.loss(tokens, labels, pos)


@torch.no_grad()
def evaluate(model, data, batches: int, batch_size: int, cfg: PretrainConfig | None = None) -> float:
    """Mean loss over `batches` batches (data position is saved and restored)."""
    was = model.training
    model.eval()
    state = data.state_dict()
    device = next(model.parameters()).device
    losses = []
    for _ in range(batches):
        with _autocast(cfg or PretrainConfig(), device):
            losses.append(_batch_loss(model, data.next_batch(batch_size), device).item())
    data.load_state_dict(state)
    model.train(was)
    return sum(losses) / len(losses)


def pretrain(model: torch.nn.Module, train_data, cfg: PretrainConfig, eval_data=None) -> dict:
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    model.train()
    model.gradient_checkpointing = cfg.gradient_checkpointing
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas)
    log = MetricsLog(cfg.out_dir)
    step, loss_ema, spikes, skipped = 0, None, 0, 0

    def restore(path):
        nonlocal step, loss_ema
        meta = load_checkpoint(path, model, opt)
        step, loss_ema = meta["step"], meta.get("loss_ema")
        train_data.load_state_dict(meta["data"])
        log.truncate_after(step)
        return meta

    resumed = latest_checkpoint(ckpt_dir)
    if resumed:
        restore(resumed)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * train_data.seq_len
    bar = Progress(cfg.steps, start=step) if cfg.progress else None
    t_last, last_eval = time.perf_counter(), None

    def checkpoint():
        save_checkpoint(ckpt_dir, step, model, opt, {"data": train_data.state_dict(), "loss_ema": loss_ema,
                                                      "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                 for k, v in asdict(cfg).items()}},
                        keep=cfg.keep_checkpoints)

    while step < cfg.steps:
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for _ in range(cfg.grad_accum):
            with _autocast(cfg, device):
                loss = _batch_loss(model, train_data.next_batch(cfg.batch_size), device) / cfg.grad_accum
            loss.backward()
            total += loss.item()
        if not math.isfinite(total):
            raise FloatingPointError(f"step {step}: loss is {total}; lower the learning rate or check the data")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        spike = cfg.spike_factor > 0 and loss_ema is not None and step > cfg.warmup and total > cfg.spike_factor * loss_ema
        if spike:
            opt.zero_grad(set_to_none=True)
            spikes += 1
            skipped += 1
            log.write(step=step, event="loss_spike_skipped", loss=total, loss_ema=loss_ema)
            if spikes >= cfg.spike_patience:
                path = latest_checkpoint(ckpt_dir)
                if path is None:
                    raise RuntimeError(f"step {step}: {spikes} loss spikes in a row and no checkpoint to roll back to")
                log.write(step=step, event="rollback", to=path)
                restore(path)
                spikes = 0
            continue
        spikes = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = total if loss_ema is None else 0.95 * loss_ema + 0.05 * total
        step += 1
        now = time.perf_counter()
        if step % cfg.log_every == 0 or step == cfg.steps:
            tps = tokens_per_step * cfg.log_every / max(1e-9, now - t_last) if step % cfg.log_every == 0 else 0.0
            t_last = now
            log.write(step=step, loss=total, lr=lr, grad_norm=grad_norm, tokens_per_s=tps)
        if eval_data is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            last_eval = evaluate(model, eval_data, cfg.eval_batches, cfg.batch_size, cfg)
            log.write(step=step, eval_loss=last_eval)
        if bar:
            bar.update(step, loss=total, **({"eval": last_eval} if last_eval is not None else {}))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    plot_curves(log.path, os.path.join(cfg.out_dir, "curves.png"), keys=("loss", "eval_loss", "lr", "grad_norm"))
    return {"step": step, "loss_ema": loss_ema, "eval_loss": last_eval, "skipped_steps": skipped,
            "metrics": log.path}
