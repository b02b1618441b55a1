"""Pretraining under torchrun with gloo (DDP or FSDP2), or single-process, for the distributed tests.

    python -m torch.distributed.run --nproc_per_node 2 tests/train/dist_run.py ddp OUT DATA STEPS
    python tests/train/dist_run.py single OUT DATA STEPS
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from llmforge.data.pack import PackedDataset
from llmforge.model import ModelConfig, Transformer
from llmforge.train.pretrain import PretrainConfig, pretrain

GLOBAL_BATCH = 4


def main():
    mode, out, data_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    world = 1
    if mode != "single":
        import faulthandler

        faulthandler.dump_traceback_later(120, exit=False)   # a hung rank shows where (the test kills at 180 s)
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))  # a hang fails, not waits 30 min
        world = dist.get_world_size()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                                    max_seq_len=64))
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    cfg = PretrainConfig(out_dir=out, steps=steps, batch_size=GLOBAL_BATCH // world, lr=3e-3, warmup=2,
                         log_every=1, checkpoint_every=steps // 2, progress=False, spike_factor=0)
    pretrain(model, PackedDataset(data_dir, seed=5), cfg)
    if mode != "single":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
