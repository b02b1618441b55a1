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
times the running mean, or whose gradient norm is not finite, is skipped (no update); a
non-finite loss raises FloatingPointError; spike_patience skips in a row roll back
model and optimizer to the last checkpoint and go on with the data after the batches that
spiked. Writes metrics.jsonl, curves.png and checkpoints/ in out_dir.

Distributed (torchrun, torch.distributed initialised by the caller, model wrapped in
DDP or fully_shard'ed): every rank reads the same global batch (batch_size * world
sequences) and takes its own slice, so the run matches a single process with the same
global batch; rank 0 logs and writes checkpoints (full state dicts).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..config_check import check_config
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsLog, Progress, plot_curves
from .optim import cosine_lr, make_optimizer


@dataclass
class PretrainConfig:
    """Run: out_dir, steps, seed.
    Batch: batch_size (sequences per micro-batch), grad_accum.
    Optimiser: optimizer ("adamw" | "lion" | "adamw8bit"), lr, min_lr, warmup, weight_decay, betas, grad_clip.
    Precision/memory: dtype ("float32" | "bfloat16" autocast | "auto": bfloat16 autocast where the
    hardware multiplies bf16 natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else
    float32), gradient_checkpointing, compile (the training forward and backward run under
    torch.compile; llmforge's kernels stay in the graph as custom ops. Worth it on GPU, where
    inductor fuses the glue between kernels; on CPU the eager model is already fused: 366 vs
    363 ms per step of bench train's ~10M model on a 2-core Zen 5, bench/results/cpu.md).
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
    compile: bool = False
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    spike_factor: float = 3.0
    spike_patience: int = 5
    progress: bool = True

    def __post_init__(self):
        check_config(self,
                     positive=("steps", "batch_size", "grad_accum", "lr", "log_every", "checkpoint_every", "eval_batches"))
        if self.dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16 or auto, got {self.dtype!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.optimizer not in ("adamw", "lion", "adamw8bit"):
            raise ValueError(f"optimizer must be adamw, lion or adamw8bit, got {self.optimizer!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                           for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(self.betas)


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX-BF16; the native layer's CPU
    feature check, csrc/isa.cpp)? There, bf16 autocast trains ~1.5x faster than float32 (a 2-core
    Zen 5: 134 s vs 209 s for the Shakespeare recipe, same held-out loss); without it torch
    emulates bf16 and is slower."""
    from ..ops._native import native_bf16_dot

    return native_bf16_dot()


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """PretrainConfig.dtype with "auto" decided for this device: "bfloat16" or "float32"."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


def _autocast(cfg, device):
    if resolve_dtype(cfg.dtype, device) == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local(batch, device, rank=0, world=1):
    """This rank's slice of a global batch: (tokens, position_ids, labels, number of loss targets)."""
    tokens = batch["input_ids"]
    n = tokens.shape[0] // world
    part = slice(rank * n, (rank + 1) * n)
    tokens = tokens[part].to(device)
    pos = batch.get("position_ids")
    pos = pos[part].to(device) if pos is not None else None
    labels = tokens.masked_fill(~batch["loss_mask"][part].to(device), -100) if "loss_mask" in batch else tokens
    tgt = labels[:, 1:] != -100
    if pos is not None:
        tgt &= pos[:, 1:] != 0
    return tokens, pos, labels, int(tgt.sum())


def _batch_loss(model, batch, device, rank=0, world=1):
    tokens, pos, labels, _ = _local(batch, device, rank, world)
    return model(tokens, pos, labels=labels)


def _all_reduce_sum(x: float) -> float:
    import torch.distributed as dist

    if _dist()[1] == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def _unwrapped(model):
    return getattr(model, "module", model)


def _full_state(model, opt):
    """Full (unsharded) model and optimizer state dicts, on every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and not hasattr(model, "module"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _unwrapped(model).state_dict(), opt.state_dict()


def _load_full_state(model, opt, msd, osd):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and not hasattr(model, "module"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    else:
        _unwrapped(model).load_state_dict(msd)
        opt.load_state_dict(osd)


def _reduce_mean(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    rank, world = _dist()
    if world == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world


@torch.no_grad()
def evaluate(model, data, batches: int, batch_size: int, cfg: PretrainConfig | None = None) -> float:
    """Mean loss over `batches` batches (data position is saved and restored)."""
    was = model.training
    model.eval()
    state = data.state_dict()
    device = next(model.parameters()).device
    losses = []
    rank, world = _dist()
    for _ in range(batches):
        with _autocast(cfg or PretrainConfig(), device):
            losses.append(_reduce_mean(_batch_loss(model, data.next_batch(batch_size * world), device, rank, world)).item())
    data.load_state_dict(state)
    model.train(was)
    return sum(losses) / len(losses)


def pretrain(model: torch.nn.Module, train_data, cfg: PretrainConfig, eval_data=None,
             params=None) -> dict:
    """Train `model` (all parameters with requires_grad, or `params`) on train_data; see module doc."""
    device = next(model.parameters()).device
    rank, world = _dist()
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    model.train()
    _unwrapped(model).gradient_checkpointing = cfg.gradient_checkpointing
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas)
    # compiled: a wrapper sharing model's parameters; checkpoints and evaluation use model itself
    forward = torch.compile(model) if cfg.compile else model
    log = MetricsLog(cfg.out_dir) if rank == 0 else None
    step, loss_ema, spikes, skipped = 0, None, 0, 0

    def restore(path, rollback=False):
        """Resume from a checkpoint; a rollback keeps the data where it is, so that the batches
        that spiked are not fed again (they would spike again, and roll back forever)."""
        nonlocal step, loss_ema
        meta = load_checkpoint(path, None, None)
        _load_full_state(model, opt, meta.pop("model_state"), meta.pop("optim_state"))
        step, loss_ema = meta["step"], meta.get("loss_ema")
        if not rollback:
            train_data.load_state_dict(meta["data"])
        if log:
            log.truncate_after(step, keep_events=rollback)
        return meta

    resumed = latest_checkpoint(ckpt_dir)
    if resumed:
        restore(resumed)
    tokens_per_step = cfg.batch_size * world * cfg.grad_accum * train_data.seq_len
    bar = Progress(cfg.steps, start=step) if cfg.progress and rank == 0 else None
    if bar is not None and cfg.dtype == "auto":
        bar.stream.write(f"precision: {resolve_dtype(cfg.dtype, device)} (dtype auto)\n")
    t_last, last_eval = time.perf_counter(), None

    def checkpoint():
        msd, osd = _full_state(model, opt)
        if rank == 0:
            save_checkpoint(ckpt_dir, step, msd, osd,
                            {"data": train_data.state_dict(), "loss_ema": loss_ema,
                             "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}},
                            keep=cfg.keep_checkpoints)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()

    while step < cfg.steps:
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        # Weight every micro-batch by its share of the step's loss targets (over all ranks),
        # so the step's gradient is that of the mean over the whole global batch.
        micro = [_local(train_data.next_batch(cfg.batch_size * world), device, rank, world)
                 for _ in range(cfg.grad_accum)]
        n_total = max(1.0, _all_reduce_sum(float(sum(m[3] for m in micro))))
        total = 0.0
        for tokens, pos, labels, n in micro:
            with _autocast(cfg, device):
                loss = forward(tokens, pos, labels=labels) * (n / n_total)
            (loss * world).backward()  # DDP/FSDP average gradients over ranks
            total += loss.item()
        total = _all_reduce_sum(total)
        if not math.isfinite(total):
            raise FloatingPointError(f"step {step}: loss is {total}; lower the learning rate or check the data")
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                        cfg.grad_clip))
        spike = cfg.spike_factor > 0 and loss_ema is not None and step > cfg.warmup and total > cfg.spike_factor * loss_ema
        bad_grad = not math.isfinite(grad_norm)  # finite loss, inf/NaN gradient (overflow): never applied
        if spike or bad_grad:
            opt.zero_grad(set_to_none=True)
            spikes += 1
            skipped += 1
            if log:
                log.write(step=step, event="nonfinite_grad_skipped" if bad_grad else "loss_spike_skipped", loss=total,
                          loss_ema=loss_ema)
            if spikes >= cfg.spike_patience:
                path = latest_checkpoint(ckpt_dir)
                if path is None:
                    raise RuntimeError(f"step {step}: {spikes} skipped steps (loss spikes or non-finite gradients) "
                                       f"in a row and no checkpoint to roll back to")
                if log:
                    log.write(step=step, event="rollback", to=path)
                restore(path, rollback=True)
                spikes = 0
            continue
        spikes = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = total if loss_ema is None else 0.95 * loss_ema + 0.05 * total
        step += 1
        now = time.perf_counter()
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            tps = tokens_per_step * cfg.log_every / max(1e-9, now - t_last) if step % cfg.log_every == 0 else 0.0
            t_last = now
            log.write(step=step, loss=total, lr=lr, grad_norm=grad_norm, tokens_per_s=tps)
        if eval_data is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            last_eval = evaluate(model, eval_data, cfg.eval_batches, cfg.batch_size, cfg)
            if log:
                log.write(step=step, eval_loss=last_eval)
        if bar:
            bar.update(step, loss=total, **({"eval": last_eval} if last_eval is not None else {}))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    if log:
        plot_curves(log.path, os.path.join(cfg.out_dir, "curves.png"), keys=("loss", "eval_loss", "lr", "grad_norm"))
    return {"step": step, "loss_ema": loss_ema, "eval_loss": last_eval, "skipped_steps": skipped,
            "precision": resolve_dtype(cfg.dtype, device), "metrics": os.path.join(cfg.out_dir, "metrics.jsonl")}
