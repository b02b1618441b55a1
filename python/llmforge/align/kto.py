"""KTO (Ethayarajh et al. 2024): alignment from unpaired desirable / undesirable replies.

    result = kto(model, tokenizer, records, KTOConfig(beta=0.1), eval_records)
    # records: {prompt, completion, label: bool}; kto_records_from_pairs() splits preference pairs

The reference log-probs are computed once and cached (one model in memory). The KL
reference point z0 is estimated per batch from mismatched (prompt, completion) pairs,
as in the paper: mean of policy - reference log-probs on completions shifted by one
within the batch, clamped at 0 and given no gradient.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config_check import check_config
from ..data.chat import tokenize_chat
from .data import _conv
from .dpo import _pad_id
from .logprobs import sequence_logprobs
from .loop import optimize
from .losses import kto_loss


@dataclass
class KTOConfig:
    out_dir: str = "runs/kto"
    beta: float = 0.1
    w_desirable: float = 1.0
    w_undesirable: float = 1.0
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 10
    grad_clip: float = 1.0
    seed: int = 0
    template: str = "chatml"
    max_len: int = 256
    chunk_tokens: int = 1024
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        check_config(self, positive=("beta", "steps", "batch_size", "lr", "max_len", "chunk_tokens", "log_every"))


def kto_records_from_pairs(pairs) -> list[dict]:
    out = []
    for p in pairs:
        out.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        out.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return out


def _encode(records, tokenizer, cfg):
    items = []
    for r in records:
        ex = tokenize_chat(_conv(r["prompt"], r["completion"]), tokenizer, cfg.template, max_len=cfg.max_len)
        items.append((ex.input_ids, ex.labels, bool(r["label"]), r["prompt"], r["completion"]))
    return items


def _pad(seqs, labs, pad):
    T = max(len(s) for s in seqs)
    t = torch.full((len(seqs), T), pad, dtype=torch.long)
    l = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labs)):
        t[i, :len(s)] = torch.tensor(s)
        l[i, :len(y)] = torch.tensor(y)
    return t, l


def _logps(model, items, pad, chunk):
    t, l = _pad([x[0] for x in items], [x[1] for x in items], pad)
    return sequence_logprobs(model, t, l, chunk_tokens=chunk)


@torch.no_grad()
def _all_logps(model, items, pad, cfg):
    was = model.training
    model.eval()
    out = torch.cat([_logps(model, items[i:i + cfg.batch_size], pad, cfg.chunk_tokens)
                     for i in range(0, len(items), cfg.batch_size)])
    model.train(was)
    return out


def kto(model, tokenizer, records, cfg: KTOConfig, eval_records=None) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = _pad_id(tokenizer)
    items = _encode(records, tokenizer, cfg)
    ref = _all_logps(model, items, pad, cfg)
    held = _encode(eval_records, tokenizer, cfg) if eval_records else None
    ref_held = _all_logps(model, held, pad, cfg) if held else None

    def margin():
        r = _all_logps(model, held, pad, cfg) - ref_held
        lab = torch.tensor([x[2] for x in held])
        return {"reward_desirable": r[lab].mean().item(), "reward_undesirable": r[~lab].mean().item(),
                "margin": (r[lab].mean() - r[~lab].mean()).item()}

    before = margin() if held else None
    g = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step):
        idx = torch.randint(0, len(items), (cfg.batch_size,), generator=g).tolist()
        batch = [items[i] for i in idx]
        lp = _logps(model, batch, pad, cfg.chunk_tokens)
        with torch.no_grad():  # KL point: completions shifted by one prompt within the batch
            mism = [tokenize_chat(_conv(batch[k][3], batch[(k + 1) % len(batch)][4]), tokenizer, cfg.template,
                                  max_len=cfg.max_len) for k in range(len(batch))]
            t, l = _pad([m.input_ids for m in mism], [m.labels for m in mism], pad)
            model.eval()
            kl_pol = sequence_logprobs(model, t, l, chunk_tokens=cfg.chunk_tokens)
            model.train()
            kl = (kl_pol - ref[idx]).mean()  # reference of a mismatched pair ~ its own policy value at start
        labels = torch.tensor([b[2] for b in batch])
        return kto_loss(lp, ref[idx], labels, kl, cfg.beta, cfg.w_desirable, cfg.w_undesirable)

    optimize(model, cfg, step_fn)
    after = margin() if held else None
    return {"before": before, "after": after}
