"""Training throughput: llmforge's Transformer vs a plain PyTorch reference (eager, torch SDPA)
of the same model and weights, forward + backward + AdamW step. llmforge's model steps with the
optimizer `llmforge pretrain` uses (make_optimizer: torch.optim.AdamW, fused=True), the
reference with torch.optim.AdamW's defaults, same hyperparameters; a third row gives
the reference the fused optimizer too, so the model's own share of the speedup is visible.
Two rows run each model's loss under torch.compile(fullgraph=True) (inductor): what a user
who compiles the plain model gets, and that llmforge's kernels compile as custom ops.
The last two rows run both under CPU bf16 autocast (fp32 weights, bf16 matmuls through torch):
on CPUs with native bf16 dot products (AVX512-BF16, AMX) that is the fastest way to train on
either side; elsewhere it is slower than float32. Speedups are against the fp32 reference.

On CUDA (--device cuda) the case is a ~125M model (GPT-2-small sizes, Llama-style) at batch
16 x 1024 under bf16 autocast, both sides with fused AdamW, and the table adds MFU: model
FLOPs (6 x parameters x tokens, the tied output head included, plus causal attention) over
the GPU's dense bf16 peak (GPU_BF16_PEAK_TFLOPS; unknown GPUs leave % peak empty).

    python -m bench train [--record] [--device cuda]
"""
from __future__ import annotations

import sys
import traceback

import torch

from bench.harness import finish, row, time_fns_interleaved
from bench.reference_llama import ReferenceLlama
from llmforge.model import ModelConfig, Transformer

CASES = {
    "~10M (dim 384, 6 layers, GQA 6/2, vocab 4096)": dict(vocab_size=4096, dim=384, n_layers=6, n_heads=6,
                                                         n_kv_heads=2, ffn_dim=1024, tie_embeddings=True),
}


CUDA_CASES = {
    "~125M (dim 768, 12 layers, 12 heads, vocab 50304, tied)": dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12,
                                                                   n_kv_heads=12, ffn_dim=2048, tie_embeddings=True),
}

# dense bf16 tensor-core peaks (vendor data sheets, SXM parts), by a substring of the device name
GPU_BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0}


def gpu_peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in name), None)


def model_flops(cfg: ModelConfig, B: int, T: int) -> float:
    """Training FLOPs of one step: 6 per parameter per token (the output head counted even when
    tied to the embedding; the embedding lookup is free) plus causal attention's QK^T and PV."""
    n = cfg.n_params(embeddings=False) + cfg.vocab_size * cfg.dim
    attn = 6 * 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T * T * B / 2
    return 6 * n * B * T + attn


def run_cuda(quick: bool = False):
    rows = []
    B, T = 16, 1024
    peak = gpu_peak_tflops()
    for name, kw in CUDA_CASES.items():
        cfg = ModelConfig(max_seq_len=T, **kw)
        torch.manual_seed(0)
        ours = Transformer(cfg).cuda()
        ref = ReferenceLlama(cfg).cuda()
        ref.load_state_dict(ours.state_dict(), strict=False)
        tokens = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
        # a GPU session is short and its kernels' first run: a failure or a loss that disagrees
        # with the reference is reported in the table, and the reference is still timed
        impls = [("llmforge", ours), ("torch eager + SDPA, fused AdamW", ref)]
        losses = {}
        for impl, model in list(impls):
            try:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    losses[impl] = model.loss(tokens).item()
            except Exception as e:  # noqa: BLE001 - reported, the other side still measured
                traceback.print_exc()
                print(f"bench train (cuda): {impl} failed: {e!r}", file=sys.stderr)
                impls.remove((impl, model))
        agree = (len(losses) == 2 and abs(losses["llmforge"] - losses["torch eager + SDPA, fused AdamW"])
                 < 2e-2 * abs(losses["torch eager + SDPA, fused AdamW"]))
        steps = []
        for impl, model in impls:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

            def step(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model.loss(tokens)
                loss.backward()
                opt.step()

            steps.append(step)
        timed = []
        for (impl, model), step in zip(impls, steps):  # one full step each first (the backward too)
            try:
                step()
                torch.cuda.synchronize()
                timed.append(((impl, model), step))
            except Exception as e:  # noqa: BLE001 - reported, the other side still measured
                traceback.print_exc()
                print(f"bench train (cuda): {impl} step failed: {e!r}", file=sys.stderr)
                agree = False
        impls, steps = [t[0] for t in timed], [t[1] for t in timed]
        times = time_fns_interleaved(steps, "cuda", warmup=3, iters=5 if quick else 20)
        flops = model_flops(cfg, B, T)
        for (impl, _), t in zip(impls, times):
            tf = flops / (t[0] * 1e-3) / 1e12
            rows.append(row(f"{name}, batch {B}x{T}, bf16 autocast", impl, t, "cuda", flops=flops, peak_tflops=peak,
                            tokens_per_s=f"{B * T / (t[0] * 1e-3):,.0f}", params=f"{cfg.n_params() / 1e6:.1f}M",
                            mfu=f"{100 * tf / peak:.1f}%" if peak else "peak unknown",
                            loss=f"{losses[impl]:.4f}" + ("" if agree else " (MODELS DISAGREE or one failed)")))
    return finish(rows, baseline="torch eager + SDPA, fused AdamW")


def run(device: str = "cpu", quick: bool = False):
    if device == "cuda":
        return run_cuda(quick)
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
        ours_bf16, ref_bf16 = Transformer(cfg).to(device), ReferenceLlama(cfg).to(device)
        ours_bf16.load_state_dict(ours.state_dict())
        ref_bf16.load_state_dict(ours.state_dict(), strict=False)
        ours_c, ref_c = Transformer(cfg).to(device), ReferenceLlama(cfg).to(device)
        ours_c.load_state_dict(ours.state_dict())
        ref_c.load_state_dict(ours.state_dict(), strict=False)
        impls = (("llmforge", ours, True, False), ("torch eager + SDPA", ref, False, False),
                 ("torch eager + SDPA, fused AdamW", ref_fused, True, False),
                 ("llmforge, bf16 autocast", ours_bf16, True, True),
                 ("torch eager + SDPA, fused AdamW, bf16 autocast", ref_bf16, True, True),
                 ("llmforge, torch.compile(fullgraph=True)", ours_c, True, False),
                 ("torch.compile + SDPA, fused AdamW", ref_c, True, False))
        steps = []
        for impl, model, fused, bf16 in impls:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
            loss_fn = model.loss
            if "compile" in impl:   # the loss (forward and, through AOT autograd, backward) compiled
                loss_fn = torch.compile(model.loss, fullgraph=True)

            def step(loss_fn=loss_fn, opt=opt, bf16=bf16):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(tokens)
                loss.backward()
                opt.step()

            steps.append(step)
        for step in steps[-2:]:   # compile outside the timed warm-up
            step()
        # one step of each in turn: the VM's speed drifts, and both sides must see the same drift
        times = time_fns_interleaved(steps, device, warmup=2, iters=5 if quick else 12)
        for (impl, _, _, _), t in zip(impls, times):
            rows.append(row(f"{name}, batch {B}x{T}", impl, t, device, flops=flops,
                            tokens_per_s=f"{B * T / (t[0] * 1e-3):,.0f}", params=f"{cfg.n_params() / 1e6:.1f}M"))
    return finish(rows, baseline="torch eager + SDPA")
