"""Supervised fine-tuning on chat data: full, LoRA, or QLoRA (int4 base), with assistant-only loss.

    from llmforge.train.sft import SFTConfig, sft
    result = sft(model, tokenizer, conversations, SFTConfig(out_dir="runs/sft", lora_r=8), eval_conversations)

Conversations are rendered with a chat template (llmforge.data.chat), tokenised with
masks that keep only assistant replies and their end-of-turn token in the loss, packed
into fixed-length sequences (document boundaries kept) and trained with the pretraining
loop (same checkpoints, resume, metrics). With lora_r > 0 only the adapters train and
are saved to out_dir/adapter; full fine-tuning saves the whole model in HF layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..config_check import check_config
from ..data.chat import IGNORE, check_chat_template, tokenize_chat
from ..data.pack import PackedDataset, write_packed
from .lora import DEFAULT_TARGETS, apply_lora, lora_modules, save_adapters
from .pretrain import PretrainConfig, evaluate, pretrain


@dataclass
class SFTConfig:
    """Data: template (name or Jinja string), seq_len. LoRA: lora_r (0 = full fine-tuning),
    lora_alpha, lora_dropout, lora_targets. quantize_base: replace the frozen base linears by
    int4 (QLoRA; needs lora_r > 0). train: the loop's settings (steps, lr, batch, ...)."""
    out_dir: str = "runs/sft"
    template: str = "chatml"
    seq_len: int = 512
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple = DEFAULT_TARGETS
    quantize_base: bool = False
    train: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=200, lr=1e-3, warmup=10,
                                                                         weight_decay=0.0, checkpoint_every=100))

    def __post_init__(self):
        check_config(self, positive=("seq_len", "lora_r", "lora_alpha"), fractions=("lora_dropout",))


def build_chat_dataset(path: str, tokenizer, conversations, template: str, seq_len: int, seed: int = 0,
                       vocab_size: int | None = None) -> PackedDataset:
    ids, masks = [], []
    for conv in conversations:
        if conv[-1]["role"] != "assistant":
            conv = conv[:-1]
        if len(conv) < 2:
            continue
        ex = tokenize_chat(conv, tokenizer, template)
        ids.append(ex.input_ids)
        masks.append([int(l != IGNORE) for l in ex.labels])
    if not ids:
        raise ValueError("no conversation with an assistant reply")
    write_packed(path, ids, seq_len=seq_len, eos_id=None, masks=masks, vocab_size=vocab_size)
    return PackedDataset(path, seed=seed)


def sft(model: torch.nn.Module, tokenizer, conversations, cfg: SFTConfig, eval_conversations=None) -> dict:
    check_chat_template(cfg.template, tokenizer)
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    train_cfg = cfg.train
    train_cfg.out_dir = cfg.out_dir
    data = build_chat_dataset(os.path.join(cfg.out_dir, "data", "train"), tokenizer, conversations, cfg.template,
                              cfg.seq_len, train_cfg.seed, vocab)
    eval_data = (build_chat_dataset(os.path.join(cfg.out_dir, "data", "eval"), tokenizer, eval_conversations,
                                    cfg.template, cfg.seq_len, 1, vocab) if eval_conversations else None)
    if cfg.quantize_base and cfg.lora_r <= 0:
        raise ValueError("quantize_base (QLoRA) needs lora_r > 0")
    if cfg.lora_r > 0 and not lora_modules(model):
        if cfg.quantize_base:
            from .qlora import quantize_base_linears

            quantize_base_linears(model, cfg.lora_targets)
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets))
    before = evaluate(model, eval_data, train_cfg.eval_batches, train_cfg.batch_size, train_cfg) if eval_data else None
    result = pretrain(model, data, train_cfg, eval_data)
    result["eval_loss_before"] = before
    if cfg.lora_r > 0:
        save_adapters(model, os.path.join(cfg.out_dir, "adapter"))
    return result
