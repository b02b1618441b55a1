"""Batched generation with a KV cache: prefill the left-padded prompts, then decode step by step.

    out = generate(model, [prompt_ids, ...], max_new_tokens=64, params=SamplingParams(temperature=0),
                   stop_ids={eos}, seed=0)
    out.tokens[i]      # generated ids of prompt i (stop token included when hit)
    out = generate(model, prompts, 64, stop=["\n\n"], tokenizer=tok, stop_ids={eos})
    out.texts[i]       # decoded text, cut before the first stop string (stop tokens add no text)

A single prompt on a CPU float32 model with nn.Linear / Int4Linear projections runs on the native
decode step (generate/native.py: one C++ call per token; int4 weights then multiply int8-rounded
activations, as llama.cpp's Q4_0). native=False forces the Python path, native=True requires the
native one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache
from .native import NativeDecoder, native_decoder
from .sampling import SamplingParams, sample
from .stop import TextStream, text_decoder

# Prompts from this length on, for dense float32 models, are prefilled by the Python forward (GEMMs)
# and its cache handed to the native step. bench decode, 2-vCPU Sapphire Rapids, 256 tokens: float32
# ~110M 212 ms that way vs 265 ms on the step (tiny model 17 vs 24); with int4 (Q4_0) weights or MoE
# layers the step is as fast or faster (Q4_0 ~110M 301 vs 299 ms, Q4_0 MoE 209 vs 298, float32 MoE
# 172 vs 197), so they stay on it.
PYTHON_PREFILL_MIN = 128


def _python_prefill(model, n: int) -> bool:
    from ..quant.linear import Int4Linear

    return n >= PYTHON_PREFILL_MIN and not model.cfg.n_experts and \
        not any(isinstance(m, Int4Linear) for m in model.modules())


@dataclass
class Generation:
    tokens: list[list[int]]
    finished: list[bool]          # stopped on a stop token or stop string (else hit max_new_tokens)
    texts: list[str] | None = None  # with a tokenizer: the decoded completions


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams | None = None,
             stop_ids=(), seed: int | None = None, pad_id: int = 0, stop=None, tokenizer=None,
             native: bool | None = None) -> Generation:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    params = params or SamplingParams()
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    streams = None if tokenizer is None else [TextStream(text_decoder(tokenizer), stop, stop_ids) for _ in prompts]
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    total = P + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(f"prompt + new tokens ({total}) exceed max_seq_len {model.cfg.max_seq_len}")
    tokens = torch.full((B, P), pad_id, dtype=torch.long, device=dev)
    valid = torch.zeros(B, P, dtype=torch.bool, device=dev)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.tensor(p, device=dev)
        valid[i, P - len(p):] = True
    dec = native_decoder(model, total) if native is not False and B == 1 else None
    if native and dec is None:
        raise ValueError("native=True: " + (NativeDecoder.why_not(model) or "the native step runs one prompt at a time"))
    if dec is not None:
        # long prompts go through the Python forward (GEMMs), then the step takes over its cache
        py = _python_prefill(model, len(prompts[0]))
        logits = (dec.prefill(model, prompts[0]) if py else dec.forward(prompts[0]))[None]
    else:
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = KVCache(model.cfg, B, total, dtype=next(model.parameters()).dtype, device=dev)
        cache.set_valid(valid)
        logits = model.forward_cached(tokens, positions, cache)[:, -1]
        next_pos = positions[:, -1] + 1
    g = torch.Generator(device=dev)
    if seed is not None:
        g.manual_seed(seed)
    history = [list(p) for p in prompts]
    out = [[] for _ in range(B)]
    done = [False] * B
    stop = set(int(s) for s in stop_ids)
    penalties = params.penalized
    for _ in range(max_new_tokens):
        hist = None
        if penalties:
            hist = torch.full((B, max(len(h) for h in history)), -1, dtype=torch.long, device=dev)
            for i, h in enumerate(history):
                hist[i, :len(h)] = torch.tensor(h, device=dev)
        nxt = sample(logits, params, g, hist)
        for i in range(B):
            if not done[i]:
                t = int(nxt[i])
                out[i].append(t)
                history[i].append(t)
                if streams is not None:
                    streams[i].feed(t)
                if t in stop or (streams is not None and streams[i].stopped):
                    done[i] = True
        if all(done):
            break
        if dec is not None:
            logits = dec.forward([int(nxt[0])])[None]
            continue
        cache.set_valid(torch.ones(B, 1, dtype=torch.bool, device=dev))
        logits = model.forward_cached(nxt[:, None], next_pos[:, None], cache)[:, -1]
        next_pos = next_pos + 1
    model.train(was)
    if streams is not None:
        for s in streams:
            s.finish()
    return Generation(out, done, [s.text for s in streams] if streams is not None else None)
