"""Compare llama.cpp (the optional `llama-cpp-python` package) with our model on a GGUF we wrote:
tokenization of the given texts and the logits of a forward pass.

    report = compare_with_llamacpp("model.gguf", model, tokenizer, texts)   # None without llama_cpp

llama.cpp runs with F32 K/V caches so the comparison is not blurred by F16 cache rounding. For
quantized files llama.cpp also rounds the activations (Q8_0/Q8_K) before its dot products, so
only F32/F16 exports are expected to agree to ~1e-3; for those the report's max_abs_logit_diff
is the figure to check.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

GGML_TYPE_F32 = 0


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # an import that fails for any reason means "not available"
        return False
    return True


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints its load log straight to fd 2; keep the pipeline's output readable."""
    fd = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


@torch.no_grad()
def compare_with_llamacpp(path: str, model, tokenizer, texts, n_ctx: int | None = None) -> dict | None:
    if not llamacpp_available():
        return None
    import llama_cpp

    if not os.path.exists(path):
        raise FileNotFoundError(path)
    n_ctx = n_ctx or min(512, model.cfg.max_seq_len)
    with _quiet_stderr():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                              n_threads=max(1, torch.get_num_threads()), type_k=GGML_TYPE_F32,
                              type_v=GGML_TYPE_F32)
    same_tokens, max_diff, agree, n = True, 0.0, 0, 0
    model.eval()
    for text in texts:
        ours = tokenizer.encode(text)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        same_tokens &= list(theirs) == list(ours)
        ids = ours[:n_ctx]
        if len(ids) < 2:
            continue
        llm.reset()
        llm.eval(ids)
        lc = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        ref = model(torch.tensor([ids]))[0].double().numpy()
        max_diff = max(max_diff, float(np.abs(lc - ref).max()))
        agree += int((lc.argmax(-1) == ref.argmax(-1)).sum())
        n += len(ids)
    del llm
    return {"llama_cpp_version": getattr(llama_cpp, "__version__", "?"), "tokenization_identical": bool(same_tokens),
            "max_abs_logit_diff": max_diff, "top1_agreement": agree / max(1, n), "tokens": n}
