"""Reward model: a transformer with a scalar head on the last reply token, trained with the
Bradley-Terry loss on chosen/rejected pairs.

    rm = RewardModel(backbone)                         # e.g. the SFT model (weights are shared)
    result = train_reward_model(rm, tokenizer, train_pairs, RewardConfig(...), eval_pairs)
    scores = rm.score(tokens, lengths)                 # (B,) scalar rewards
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config_check import check_config
from .data import collate, tokenize_pairs
from .loop import optimize
from .losses import bt_loss


class RewardModel(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.cfg = backbone.cfg
        self.head = nn.Linear(backbone.cfg.dim, 1)
        nn.init.normal_(self.head.weight, std=1 / backbone.cfg.dim ** 0.5)
        nn.init.zeros_(self.head.bias)

    def score(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reward of each right-padded sequence, read at its last real token."""
        h = self.backbone.hidden_states(tokens)
        last = (lengths - 1).clamp(min=0)
        return self.head(h[torch.arange(tokens.shape[0]), last]).squeeze(-1).float()

    def forward(self, tokens, lengths):
        return self.score(tokens, lengths)

    def save(self, path: str) -> None:
        """A checkpoint directory: the backbone in HF layout plus reward_head.pt."""
        from ..model import save_hf

        save_hf(self.backbone, path)
        head = os.path.join(path, "reward_head.pt")
        torch.save({"weight": self.head.weight.detach().cpu(), "bias": self.head.bias.detach().cpu()}, head + ".tmp")
        os.replace(head + ".tmp", head)  # a killed save keeps the previous head

    @classmethod
    def load(cls, path: str) -> "RewardModel":
        from ..model import load_hf

        head = os.path.join(path, "reward_head.pt")
        if not os.path.exists(head):
            raise FileNotFoundError(f"{path} is not a reward model checkpoint (no reward_head.pt)")
        rm = cls(load_hf(path))
        try:
            sd = torch.load(head, map_location="cpu", weights_only=True)
        except Exception as e:  # damaged pickle/zip: RuntimeError, UnpicklingError, KeyError, ...
            raise ValueError(f"{head}: cannot read: {type(e).__name__}: {str(e)[:200]}") from None
        if not (isinstance(sd, dict) and set(sd) == {"weight", "bias"}
                and all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in sd.values())
                and tuple(sd["weight"].shape) == (1, rm.cfg.dim) and tuple(sd["bias"].shape) == (1,)):
            got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()} if isinstance(sd, dict) else type(sd).__name__
            raise ValueError(f"{head}: expected a (1, {rm.cfg.dim}) weight and a (1,) bias, got {got}")
        with torch.no_grad():
            rm.head.weight.copy_(sd["weight"])
            rm.head.bias.copy_(sd["bias"])
        return rm.eval()


@dataclass
class RewardConfig:
    out_dir: str = "runs/reward"
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    template: str = "chatml"
    max_len: int = 256
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        check_config(self, positive=("steps", "batch_size", "lr", "max_len", "log_every"))


def _batch(pairs, pad):
    tokens, labels = collate(pairs, pad)
    lengths = torch.tensor([len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs])
    return tokens, lengths


@torch.no_grad()
def preference_accuracy(rm: RewardModel, pairs, pad: int, batch_size: int = 16) -> float:
    was = rm.training
    rm.eval()
    right = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        s = rm.score(*_batch(chunk, pad))
        right += int((s[:len(chunk)] > s[len(chunk):]).sum())
    rm.train(was)
    return right / len(pairs)


def train_reward_model(rm: RewardModel, tokenizer, train_records, cfg: RewardConfig, eval_records=None) -> dict:
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pad = getattr(tokenizer, "pad_id", None) or getattr(tokenizer, "eos_id", None) or 0
    pairs = tokenize_pairs(train_records, tokenizer, cfg.template, cfg.max_len)
    held = tokenize_pairs(eval_records, tokenizer, cfg.template, cfg.max_len) if eval_records else None
    before = preference_accuracy(rm, held, pad) if held else None
    g = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step):
        idx = torch.randint(0, len(pairs), (cfg.batch_size,), generator=g).tolist()
        s = rm.score(*_batch([pairs[i] for i in idx], pad))
        n = len(idx)
        return bt_loss(s[:n], s[n:])

    optimize(rm, cfg, step_fn)
    after = preference_accuracy(rm, held, pad) if held else None
    return {"accuracy_before": before, "accuracy_after": after}
