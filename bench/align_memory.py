"""Peak memory of DPO (cached reference log-probs) vs SFT on the same model and batch shape.

    python bench/align_memory.py            # runs each method in a fresh process, prints peak RSS

Each child builds a ~11M-parameter model, then runs a few optimisation steps of
full-parameter SFT (16 x 256 tokens) or DPO (8 pairs = 16 sequences of 256 tokens: the same tokens per step,
reference log-probs cached), and reports its peak resident set size (ru_maxrss).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys


def child(method: str) -> None:
    import random

    import torch

    from llmforge.align.dpo import DPOConfig, pair_logprobs
    from llmforge.align.data import collate, tokenize_pairs
    from llmforge.align.logprobs import sequence_logprobs
    from llmforge.align.losses import dpo_loss
    from llmforge.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4096, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                      tie_embeddings=True, max_seq_len=512)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = random.Random(0)
    if method == "sft":
        for _ in range(3):
            tokens = torch.randint(0, 4096, (16, 256))
            opt.zero_grad()
            model.loss(tokens).backward()
            opt.step()
    else:
        class Tok:  # ids straight from text bytes: the memory shape is what matters here
            bos_token = eos_token = ""
            def encode(self, text):
                return [b % 4096 for b in text.encode()]
            def token_to_id(self, t):
                return None
        words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
        recs = [{"prompt": " ".join(rng.choice(words) for _ in range(10)),
                 "chosen": " ".join(rng.choice(words) for _ in range(36)),
                 "rejected": " ".join(rng.choice(words) for _ in range(36))} for _ in range(8)]
        pairs = tokenize_pairs(recs, Tok(), max_len=256)
        ref = pair_logprobs(model, pairs, 0, 8, 1024, reference=True)
        for _ in range(3):
            tokens, labels = collate(pairs, 0)
            lp = sequence_logprobs(model, tokens, labels)
            loss, _ = dpo_loss(lp[:8], lp[8:], ref[:, 0], ref[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        tokens = tokens  # noqa
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": method, "peak_rss_mib": peak / 1024, "after_model_mib": base / 1024,
                      "seq_len": int(tokens.shape[1]) if method != "sft" else 256}))


def main():
    if len(sys.argv) > 1:
        child(sys.argv[1])
        return
    res = {}
    for m in ("sft", "dpo"):
        out = subprocess.run([sys.executable, __file__, m], capture_output=True, text=True, check=True).stdout
        res[m] = json.loads(out.strip().splitlines()[-1])
    ratio = res["dpo"]["peak_rss_mib"] / res["sft"]["peak_rss_mib"]
    print(json.dumps({**res, "dpo_over_sft_peak": ratio}, indent=2))


if __name__ == "__main__":
    main()
