"""Tiny random models and tokenizers for the eval tests."""
from __future__ import annotations

import functools

import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.tokenizer import Tokenizer

SAMPLE_TEXT = [
    "The following are multiple choice questions (with answers) about astronomy.",
    "Which planet is closest to the sun? A. Mercury B. Venus C. Earth D. Mars Answer: A",
    "def add(a, b):\n    return a + b\n",
    "Problem: How many strings of length 6 are there?\nAnswer: 239",
    "To be, or not to be, that is the question.",
]


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(vocab_size: int = 400) -> Tokenizer:
    return Tokenizer.train_from_iterator(SAMPLE_TEXT * 20, vocab_size=vocab_size)


def tiny_model(vocab_size: int, max_seq_len: int = 512, seed: int = 0, std: float = 0.2, **kw) -> Transformer:
    """A random model whose next-token distributions are far from uniform (std 0.2), so choices
    differ clearly in log-likelihood."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=max_seq_len)
    cfg.update(kw)
    m = Transformer(ModelConfig(**cfg))
    m.reset_parameters(std=std)
    return m.eval()
