"""Decode throughput at batch 1 on a Q4_0 GGUF: our engine (generate(): the native decode step,
generate/native.py, on the file's own Q4_0 blocks with Q8_0-rounded activations as llama.cpp, see
export/gguf_int4.py) next to llama.cpp (llama-cpp-python) on the same file.

    python -m bench decode [--record]

Each side: a 32-token prompt is prefilled, then 64 tokens are decoded one at a time, greedy; the
figure is decode time per token (prefill excluded: the run with 1 new token is subtracted).
llama.cpp runs with as many threads as torch uses. Cases: the pipeline's model when
runs/tiny/dpo/model exists (else the same shape with random weights), a ~110M model where the
weights, not per-call overheads, dominate, a Gemma-2-shaped model (GeGLU, sandwich norms, soft-caps,
alternating 64-token windows, which the 96 tokens pass), an OLMo-3-shaped one (post-norms only,
full-width query / key norms, 64-token windows), and a Mixtral-style MoE (8 experts, top-2),
where the Python MoE layer (generate(..., native=False)) is measured too. A second table per model: a
256-token prompt's prefill (time to the first logits) on the native step alone and on the Python
forward whose cache the step takes over, for the Q4_0 model and the float32 one it came from
(generate() takes the second for dense float32 models from PYTHON_PREFILL_MIN tokens on), and in
llama.cpp (Q4_0, n_batch 256).
"""
from __future__ import annotations

import os
import tempfile

import torch

from bench.harness import finish, row, time_fn
from llmforge.export.gguf_export import export_gguf
from llmforge.export.gguf_int4 import load_gguf_int4
from llmforge.generate.engine import generate
from llmforge.generate.native import NativeDecoder
from llmforge.generate.sampling import SamplingParams
from llmforge.model import ModelConfig, Transformer, load_hf
from llmforge.tokenizer import Tokenizer

PIPELINE_MODEL = "runs/tiny/dpo/model"
NEW = 64


def _models():
    if os.path.isdir(PIPELINE_MODEL):
        yield "pipeline tiny model", load_hf(PIPELINE_MODEL), Tokenizer.load(os.path.join(PIPELINE_MODEL, "llmforge_tokenizer.json"))
    else:
        tok = Tokenizer.train(["to be or not to be, that is the question " * 200], vocab_size=2048)
        torch.manual_seed(0)
        yield "tiny shape (random)", Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=256, n_layers=4, n_heads=4, n_kv_heads=2,
                                                              ffn_dim=704, max_seq_len=512, tie_embeddings=True)), tok
    tok = Tokenizer.train(["to be or not to be, that is the question " * 200], vocab_size=8192)
    torch.manual_seed(0)
    yield "~110M (dim 768, 12 layers)", Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=768, n_layers=12, n_heads=12,
                                                                  n_kv_heads=4, ffn_dim=2048, max_seq_len=512,
                                                                  tie_embeddings=True)), tok
    torch.manual_seed(0)
    yield "Gemma 2 shape (dim 512, 8 layers, window 64, soft-caps)", Transformer(ModelConfig(
        vocab_size=tok.vocab_size, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=64, ffn_dim=1536,
        max_seq_len=512, hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True, tie_embeddings=True,
        sandwich_norm=True, attn_scale=64 ** -0.5, attn_softcap=50.0, final_softcap=30.0, sliding_window=64,
        layer_types=["sliding_attention", "full_attention"] * 4)), tok
    torch.manual_seed(0)
    yield "OLMo 3 shape (dim 512, 8 layers, window 64)", Transformer(ModelConfig(
        vocab_size=tok.vocab_size, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536, max_seq_len=512,
        pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_full=True, sliding_window=64,
        layer_types=["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"])), tok
    torch.manual_seed(0)
    yield "MoE 8 experts top-2 (dim 512, 8 layers, 160M total, 47M active)", Transformer(ModelConfig(
        vocab_size=tok.vocab_size, dim=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1536, max_seq_len=512,
        n_experts=8, moe_top_k=2, tie_embeddings=True)), tok


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    try:
        import llama_cpp
    except ImportError:
        print("decode: llama-cpp-python is not installed (make llamacpp); skipped")
        return []
    from llmforge.export.llamacpp_check import _quiet_stderr

    rows = []
    greedy = SamplingParams(temperature=0)
    for name, model, tok in _models():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m-q4_0.gguf")
            export_gguf(model.eval(), tok, path, "q4_0")
            ours, _ = load_gguf_int4(path)
            prompt = torch.randint(0, tok.vocab_size, (32,), generator=torch.Generator().manual_seed(0)).tolist()
            with _quiet_stderr():
                llm = llama_cpp.Llama(model_path=path, n_ctx=320, n_batch=256, n_threads=torch.get_num_threads(),
                                      logits_all=True, verbose=False)

            def llama_run(n):
                llm.reset()
                llm.eval(prompt)
                for _ in range(n):
                    nxt = int(llm.scores[llm.n_tokens - 1].argmax())
                    llm.eval([nxt])

            def ours_run(n, native=None):
                generate(ours, [prompt], n, greedy, native=native)

            impls = [("llmforge engine, int4 (Q4_0 bits)", ours_run), ("llama.cpp", llama_run)]
            if model.cfg.n_experts:
                impls.append(("llmforge, Python MoE layer (native=False)", lambda n: ours_run(n, native=False)))
            for impl, fn in impls:
                full = time_fn(lambda: fn(NEW), warmup=1, iters=2 if quick else 5, min_time_s=0)
                pre = time_fn(lambda: fn(1), warmup=1, iters=2 if quick else 5, min_time_s=0)
                per = tuple((a - b) / (NEW - 1) for a, b in zip(full, pre))
                rows.append(row(f"{name}, batch 1, decode ms/token", impl, per,
                                tokens_per_s=f"{1000 / per[0]:,.1f}"))
            n_long = min(256, ours.cfg.max_seq_len)
            long = torch.randint(0, tok.vocab_size, (n_long,), generator=torch.Generator().manual_seed(1)).tolist()
            dec = NativeDecoder(ours, max_len=n_long)

            def llama_prefill():
                llm.reset()
                llm.eval(long)

            fdec = NativeDecoder(model, max_len=n_long)   # the float32 model before Q4_0
            for impl, fn in (("llmforge native step", lambda: (dec.reset(), dec.forward(long))),
                             ("llmforge Python forward -> step", lambda: dec.prefill(ours, long)),
                             ("llmforge float32, native step", lambda: (fdec.reset(), fdec.forward(long))),
                             ("llmforge float32, Python forward -> step", lambda: fdec.prefill(model, long)),
                             ("llama.cpp", llama_prefill)):
                t = time_fn(fn, warmup=1, iters=2 if quick else 5, min_time_s=0)
                rows.append(row(f"{name}, prefill {n_long} tokens, ms", impl, t,
                                tokens_per_s=f"{n_long * 1e3 / t[0]:,.0f}"))
            del llm
    return finish(rows, baseline="llama.cpp")
