"""Run a Q4_0 GGUF on our int4 matmul without requantising: Q4_0's blocks are our int4 layout.

A Q4_0 block holds 32 weights as one float16 scale d and 16 bytes whose low nibbles are weights
0..15 and high nibbles weights 16..31, each w = d * (q - 8). Our int4 format (ops/int4_matmul.py)
with group_size 32, zero point 8 and the same nibble order is byte for byte the same codes, so the
linear layers of the imported model become Int4Linear modules over the file's own bits — the
weights llama.cpp multiplies are exactly the ones we multiply — and, like llama.cpp, they round
their inputs to Q8_0 first (act_round="q8_0").

    model, tok = load_gguf_int4("model-q4_0.gguf")     # Q4_0 linears -> Int4Linear, the rest float

The output matrix in Q4_0 becomes an Int4Linear lm_head too, also when the embeddings are tied
(llama.cpp then multiplies the file's token_embd bits for the logits; the lookup keeps the
dequantised table).
"""
from __future__ import annotations

import numpy as np
import torch

Q4_0_BLOCK_BYTES = 18  # float16 d + 16 bytes of nibbles


def q4_0_to_int4(raw: np.ndarray, rows: int, cols: int) -> dict:
    """Our int4 dict (packed, scales, zeros, group_size=32) from Q4_0 bytes of a (rows, cols) matrix."""
    if cols % 32:
        raise ValueError(f"Q4_0 rows must be a multiple of 32 weights, got {cols}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    nb = cols // 32
    if raw.size != rows * nb * Q4_0_BLOCK_BYTES:
        raise ValueError(f"Q4_0 data has {raw.size} bytes, expected {rows * nb * Q4_0_BLOCK_BYTES} for {rows}x{cols}")
    blocks = raw.reshape(rows, nb, Q4_0_BLOCK_BYTES)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    if not np.isfinite(d).all():
        raise ValueError("Q4_0 block scale is not finite (corrupt file?)")
    packed = blocks[..., 2:].reshape(rows, nb * 16)
    return {"packed": torch.from_numpy(np.ascontiguousarray(packed)), "scales": torch.from_numpy(d),
            "zeros": torch.full((rows, nb), 8.0), "group_size": 32}


def load_gguf_int4(path: str):
    import gguf

    from ..quant.linear import Int4Linear
    from .gguf_export import _names, _rope_rows, import_gguf, unpermute_rope

    model, tok = import_gguf(path)
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    arch = r.fields["general.architecture"].contents()   # only llama's q/k rows are pair-permuted
    cfg = model.cfg
    swapped = 0

    def swap(key: str, q: dict, rows: int, cols: int) -> None:
        owner, name = key[: -len(".weight")].rpartition(".")[::2]
        parent = model.get_submodule(owner)
        setattr(parent, name, Int4Linear(q, cols, rows, getattr(parent, name).bias, act_round="q8_0"))

    for hf, gg in _names(cfg):
        t = tensors[gg]
        if t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
            continue
        if isinstance(hf, tuple):   # an MoE projection: one (rows, cols) matrix per expert, experts outermost
            cols, rows, n = (int(x) for x in t.shape.tolist())
            for key, raw in zip(hf, np.asarray(t.data).reshape(n, -1)):
                swap(key, q4_0_to_int4(raw, rows, cols), rows, cols)
                swapped += 1
            continue
        if not hf.endswith(("proj.weight", "lm_head.weight")):
            continue
        cols, rows = (int(x) for x in t.shape.tolist())
        q = q4_0_to_int4(np.asarray(t.data), rows, cols)
        if arch == "llama" and _rope_rows(gg):
            nh = cfg.n_heads if gg.endswith("attn_q.weight") else cfg.n_kv_heads
            q = {**q, **{k: unpermute_rope(q[k], nh).contiguous() for k in ("packed", "scales", "zeros")}}
        swap(hf, q, rows, cols)
        swapped += 1
    if not swapped:
        raise ValueError(f"{path}: no Q4_0 linear weights to run in int4")
    emb = tensors["token_embd.weight"]
    if "output.weight" not in tensors and emb.tensor_type == gguf.GGMLQuantizationType.Q4_0:
        # tied embeddings stored in Q4_0: llama.cpp's output matmul runs on those bits, and so do we
        # (the lookup keeps the dequantised table)
        cols, rows = (int(x) for x in emb.shape.tolist())
        model.lm_head = Int4Linear(q4_0_to_int4(np.asarray(emb.data), rows, cols), cols, rows, act_round="q8_0")
    return model.eval(), tok
