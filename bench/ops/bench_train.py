"""Training throughput: llmforge's Transformer vs a plain PyTorch reference (eager, torch SDPA)
of the same model and weights, forward + backward + AdamW step. llmforge's model steps with the
optimizer `llmforge pretrain` uses (make_optimizer: torch.optim.AdamW, fused=True), the
reference with torch.optim.AdamW's defaults, same hyperparameters; a third row gives
the reference the fused optimizer too, so the model's own share of the speedup is visible.

    python -m bench train [--record]
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fns_interleaved
from bench.reference_llama import ReferenceLlama
from llmforge.model import ModelConfig, Transformer

CASES = {
    "~10M (dim 384, 6 layers, GQA 6/2, vocab 4096)": dict(vocab_size=4096, dim=384, n_layers=6, n_heads=6,
                                                         n_kv_heads=2, ffn_dim=1024, tie_embeddings=True),
}


def run(device: str = "cpu", quick: bool = False):
    rows = []
    B, T = 8, 256
    for name, kw in CASES.items():
        cfg = ModelConfig(max_seq_len=T, **kw)
        torch.manual_seed(0)
        ours = Transformer(cfg).to(device)
        ref = ReferenceLlama(cfg).to(device)
        ref.load_state_dict(ours.state_dict(), strict=False)
        tokens = torch.randint(0, cfg.vocab_size, (B, T), device=device)
        with torch.no_grad():
            a, b = ours.loss(tokens).item(), ref.loss(tokens).item()
        assert abs(a - b) < 1e-4 * abs(a), f"models differ: {a} vs {b}"
        flops = 6 * cfg.n_params(embeddings=False) * B * T + 12 * cfg.n_layers * cfg.dim * T * T * B / 2
        ref_fused = ReferenceLlama(cfg).to(device)
        ref_fused.load_state_dict(ours.state_dict(), strict=False)
        impls = (("llmforge", ours, True), ("torch eager + SDPA", ref, False),
                 ("torch eager + SDPA, fused AdamW", ref_fused, True))
        steps = []
        for impl, model, fused in impls:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))

            def step(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                model.loss(tokens).backward()
                opt.step()

            steps.append(step)
        # one step of each in turn: the VM's speed drifts, and both sides must see the same drift
        times = time_fns_interleaved(steps, device, warmup=2, iters=5 if quick else 12)
        for (impl, _, _), t in zip(impls, times):
            rows.append(row(f"{name}, batch {B}x{T}", impl, t, device, flops=flops,
                            tokens_per_s=f"{B * T / (t[0] * 1e-3):,.0f}", params=f"{cfg.n_params() / 1e6:.1f}M"))
    return finish(rows, baseline="torch eager + SDPA")
