"""Load a model and its tokenizer for generation, optionally quantized for inference.

    model, tok = load_for_generation("runs/tiny/final")              # HF layout: config.json,
                                                                     # model.safetensors, tokenizer.json
    model, tok = load_for_generation("model.gguf", quant="int4")     # GGUF (dequantised, then re-quantized)
    stop = stop_token_ids(tok, "chatml")                             # eos + the template's end-of-turn

quant="int8" swaps every projection (q/k/v/o, gate/up/down) for Int8Linear (per-channel);
"int4" for Int4Linear (symmetric, group_size 64, falling back to 32 where 64 does not divide
the input width). The embeddings and the output head stay in floating point.
"""
from __future__ import annotations

import json
import os

import torch

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTS = ("int8", "int4")


def quantize_for_inference(model, quant: str | None, group_size: int = 64) -> list[str]:
    """Swap the projections in place; returns the swapped module names ([] for quant=None)."""
    from torch import nn

    from ..quant.linear import Int4Linear, Int8Linear, swap_linears

    if quant in (None, "", "none", "fp"):
        return []
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; expected one of {QUANTS} or None")
    if quant == "int8":
        return swap_linears(model, Int8Linear, targets=PROJECTIONS)
    widths = {m.in_features for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.split(".")[-1] in PROJECTIONS}
    gs = group_size if all(w % group_size == 0 for w in widths) else 32
    if any(w % gs for w in widths):
        raise ValueError(f"int4 needs projection input widths divisible by 32; got {sorted(widths)}")
    return swap_linears(model, Int4Linear, targets=PROJECTIONS, group_size=gs)


def load_for_generation(path: str | os.PathLike, quant: str | None = None, dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer or None) from a HF-layout directory or a .gguf file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        from ..export.gguf_export import import_gguf

        model, tok = import_gguf(path)
        model = model.to(dtype)
    elif os.path.isdir(path):
        from ..model.hf import load_hf
        from ..tokenizer import load_tokenizer

        model = load_hf(path, dtype=dtype)
        tok = load_tokenizer(path, required=False)
    else:
        raise FileNotFoundError(f"{path}: no such model directory or GGUF file")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    quantize_for_inference(model, quant)
    return model, tok


def chat_template_for(path: str | os.PathLike, template: str | None) -> str:
    """The template to use: the one asked for (a name, a Jinja string or a file), else the
    chat_template of tokenizer_config.json beside the model, else chatml."""
    if template:
        if os.path.isfile(template):
            with open(template, encoding="utf-8") as f:
                return f.read()
        return template
    t = model_chat_template(path)
    if t is None:
        return "chatml"
    from ..data.chat import TEMPLATES   # one of ours by name (its end-of-turn token is known), else the source

    return next((name for name, src in TEMPLATES.items() if src == t), t)


def model_chat_template(path: str | os.PathLike) -> str | None:
    """The chat_template (Jinja source) of tokenizer_config.json in a model directory, or None."""
    cfg = os.path.join(os.fspath(path), "tokenizer_config.json")
    if os.path.isdir(path) and os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                t = json.load(f).get("chat_template")
            if isinstance(t, str) and t:
                return t
        except (OSError, ValueError, AttributeError):
            pass
    return None


def prompt_ids(tok, text: str) -> list[int]:
    """A bare prompt's ids, starting with bos where the model's tokenizer adds it (Llama 2, Mistral,
    Llama 3: add_bos_token), as transformers and llama.cpp do."""
    add = bool(getattr(tok, "add_bos_token", False)) and getattr(tok, "bos_id", None) is not None
    ids = list(tok.encode(text))
    return [tok.bos_id] + ids if add and ids[:1] != [tok.bos_id] else ids


def stop_token_ids(tok, template: str | None = None) -> set[int]:
    """The tokenizer's eos id plus the named template's end-of-turn token, where they exist."""
    from ..data.chat import END_OF_TURN

    ids = set()
    if tok is None:
        return ids
    names = [getattr(tok, "eos_token", None)]
    if template in END_OF_TURN:
        names.append(END_OF_TURN[template])
    elif template:   # a custom template: the usual end-of-turn markers that the tokenizer knows
        names += [t for t in END_OF_TURN.values() if t]
    for n in names:
        if n:
            i = tok.token_to_id(n)
            if i is not None:
                ids.add(int(i))
    return ids
