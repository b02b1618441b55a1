"""The quant ladder on a small byte-level Llama trained on Shakespeare; checks the quality claims.

    python -m bench.quant_ladder              # trains (a few minutes on 2 cores) or loads the cache
    python -m bench.quant_ladder --retrain --steps 400

Trains once into runs/quant_ladder_bench/ (model cached there), then writes
bench/results/quant_ladder.{md,png,json}: every method of llmforge.quant.ladder on held-out
Shakespeare (the last 10% of the corpus, never trained on), with date, machine and commit.
Claims checked (and written under the table): GPTQ and AWQ 4-bit perplexity strictly below RTN
4-bit at the same group size; GPTQ 3-bit below RTN 3-bit; GGUF Q8_0 perplexity within 1% of F32.
"""
from __future__ import annotations

import argparse
import json
import datetime
import os
import time

import torch

from bench.harness import git_commit, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "runs", "quant_ladder_bench")
RESULTS = os.path.join(ROOT, "bench", "results")
MODEL = dict(vocab_size=256, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=128)
SEQ = 128


def corpus():
    from llmforge.recipes import corpus_text, split_documents

    train, held = split_documents(corpus_text({"corpus": "shakespeare"}), 0.1)
    return "\n\n".join(train).encode(), "\n\n".join(held).encode()


def train_model(train: bytes, steps: int, retrain: bool):
    from llmforge.data.pack import PackedDataset, write_packed
    from llmforge.model import ModelConfig, Transformer, load_hf, save_hf
    from llmforge.train.pretrain import PretrainConfig, pretrain

    mdir = os.path.join(CACHE, "model")
    if os.path.exists(os.path.join(mdir, "config.json")) and not retrain:
        print(f"loading the cached model from {mdir}")
        last = {}
        with open(os.path.join(CACHE, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                if "loss" in rec:
                    last = rec
        return load_hf(mdir), {"steps": last.get("step"), "loss": last.get("loss"), "cached": True}
    if retrain and os.path.isdir(CACHE):
        import shutil

        shutil.rmtree(CACHE)
    ddir = os.path.join(CACHE, "data")
    write_packed(ddir, [list(train)], seq_len=SEQ, vocab_size=256)
    data = PackedDataset(ddir, seed=0, doc_mask=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**MODEL))
    cfg = PretrainConfig(out_dir=CACHE, steps=steps, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=20,
                         weight_decay=0.1, log_every=25, checkpoint_every=steps, spike_factor=0)
    t0 = time.perf_counter()
    res = pretrain(model, data, cfg)
    secs = time.perf_counter() - t0
    save_hf(model, mdir)
    return model, {"steps": res["step"], "seconds": secs, "loss": res.get("loss_ema")}


def windows(data: bytes, n: int, seed: int | None = None) -> torch.Tensor:
    t = torch.tensor(list(data[: max(len(data), 1)]), dtype=torch.int64)
    if seed is None:  # consecutive, non-overlapping
        k = min(n, (len(t) - 1) // SEQ)
        return t[: k * SEQ].view(k, SEQ)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(t) - SEQ, (n,), generator=g)
    return torch.stack([t[i:i + SEQ] for i in idx])


def claims(rows: dict) -> list[tuple[str, bool, str]]:
    p = lambda k: rows[k]["ppl"]
    out = []
    for q in ("gptq4_g128", "awq4_g128"):
        out.append((f"{q} perplexity < int4_g128 (RTN)", p(q) < p("int4_g128"), f"{p(q):.4f} vs {p('int4_g128'):.4f}"))
    out.append(("gptq3_g128 perplexity < int3_g128 (RTN)", p("gptq3_g128") < p("int3_g128"),
                f"{p('gptq3_g128'):.4f} vs {p('int3_g128'):.4f}"))
    d = 100 * (p("gguf_q8_0") / p("fp32") - 1)
    out.append(("gguf_q8_0 perplexity within 1% of fp32", abs(d) < 1, f"{d:+.3f}%"))
    out.append(("w8a8_smoothquant KL < w8a8 (naive) KL", rows["w8a8_smoothquant"]["kl_per_token"] < rows["w8a8"]["kl_per_token"],
                f"{rows['w8a8_smoothquant']['kl_per_token']:.2e} vs {rows['w8a8']['kl_per_token']:.2e}"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--calib", type=int, default=64, help="calibration sequences of 128 bytes")
    ap.add_argument("--heldout", type=int, default=128, help="held-out sequences of 128 bytes")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from llmforge.quant.ladder import DEFAULT_METHODS, quant_ladder

    train, held = corpus()
    model, trained = train_model(train, args.steps, args.retrain)
    model.eval()
    calib, heldout = windows(train, args.calib, seed=0), windows(held, args.heldout)
    calib_b, held_b = list(calib.split(16)), list(heldout.split(16))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = (f"{when}; machine: {machine()}; torch {torch.__version__}; commit {git_commit()}.  \n"
             f"Model: byte-level Llama {MODEL} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
             f"trained on Shakespeare (`python -m bench.quant_ladder`"
             + f", {trained['steps']} steps of 16 x 128 bytes, AdamW lr 3e-3 cosine"
             + (", model cached from an earlier run" if trained.get("cached") else f", {trained['seconds']:.0f} s")
             + (f"; final training loss {trained['loss']:.3f} nats/byte" if trained.get("loss") else "") + ").  \n"
             f"Calibration: {len(calib)} random 128-byte windows of the training text; held-out: the first "
             f"{len(heldout)} 128-byte windows of the last 10% of the corpus (never trained on). "
             "Seconds are wall time on a shared 2-core machine (measured under load).")
    res = quant_ladder(model, None, calib_b, held_b, methods=DEFAULT_METHODS, out_dir=args.out,
                       title="Quant ladder: byte-level Llama on Shakespeare", notes=notes, progress=True)
    rows = {r["method"]: r for r in res["rows"] if "error" not in r}
    import math

    lines = ["", f"fp32 held-out: {math.log2(res['ppl_fp']):.3f} bits/byte.", "", "## Claims", ""]
    for text, ok, detail in claims(rows):
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {text} ({detail})")
        print(lines[-1])
    with open(res["paths"]["md"], "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {res['paths']['md']}")


if __name__ == "__main__":
    main()
