"""A tiny, fully deterministic pretraining run used by the resume tests.

    python tests/train/tiny_run.py OUT_DIR DATA_DIR STEPS [--slow]
"""
from __future__ import annotations

import sys
import time

import torch

from llmforge.data.pack import PackedDataset
from llmforge.model import ModelConfig, Transformer
from llmforge.train.pretrain import PretrainConfig, pretrain


def main():
    out, data_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    slow = "--slow" in sys.argv
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                                    max_seq_len=64))
    data = PackedDataset(data_dir, seed=3)
    cfg = PretrainConfig(out_dir=out, steps=steps, batch_size=4, grad_accum=2, lr=3e-3, warmup=3, log_every=1,
                         checkpoint_every=2, progress=False, spike_factor=0)
    if slow:  # widen the window in which a kill can land mid-run
        orig = data.next_batch

        def next_batch(bs):
            time.sleep(0.02)
            return orig(bs)

        data.next_batch = next_batch
    pretrain(model, data, cfg)


if __name__ == "__main__":
    main()
