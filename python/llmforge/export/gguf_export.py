"""GGUF export (arch "llama") that llama.cpp loads, GGUF import, and self-verification.

    export_gguf(model, tokenizer, "model.gguf", qtype="q8_0")    # f32 | f16 | bf16 | q8_0 | q4_0
    model2, tok2 = import_gguf("model.gguf")
    report = verify_gguf(model, tokenizer, "model.gguf", texts)  # per-token KL, top-1 agreement, tokenizer

Layout facts (../shared/GGUF_FACTS.md): llama.cpp's llama arch rotates adjacent pairs while
the HF layout rotates halves, so attn_q / attn_k rows are permuted per head on export (and
back on import); a missing output.weight means tied embeddings; 1-D tensors (norms) stay
F32; tensors whose rows are not a multiple of 32 fall back to F32 with a warning.
Files are written to a temporary name and renamed.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .ggml_quants import QUANTIZERS

QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF half-split rows -> llama.cpp adjacent-pair rows, per head."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _names(cfg):
    yield "model.embed_tokens.weight", "token_embd.weight"
    for i in range(cfg.n_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, gg in (("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                       ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                       ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
                       ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")):
            yield p + hf + ".weight", b + gg + ".weight"
            if cfg.attention_bias and hf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                yield p + hf + ".bias", b + gg + ".bias"
    yield "model.norm.weight", "output_norm.weight"
    if not cfg.tie_embeddings:
        yield "lm_head.weight", "output.weight"


def export_gguf(model, tokenizer, path: str, qtype: str = "f32", name: str = "llmforge") -> dict:
    import gguf

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    cfg = model.cfg
    if cfg.n_experts:
        raise ValueError("MoE models are not exported to GGUF (arch llama)")
    if cfg.attention_bias:
        raise ValueError("attention biases (Qwen2 layout) are not exported with arch llama")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}")
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_scaling:
        kind = cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type"))
        if kind != "linear":
            raise ValueError(f"rope scaling {kind!r} is not exported (linear only)")
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    w.add_file_type(ftype)
    for key, val in tokenizer.gguf_metadata().items():
        _add_kv(w, key, val)
    template = getattr(tokenizer, "chat_template", None)
    if template:
        w.add_chat_template(template)
    types = {}
    for hf, gg in _names(cfg):
        t = sd[hf]
        if gg.endswith("attn_q.weight"):
            t = permute_rope(t, cfg.n_heads)
        elif gg.endswith("attn_k.weight"):
            t = permute_rope(t, cfg.n_kv_heads)
        want = qtype if t.ndim == 2 else "f32"
        if want in QUANTIZERS and t.shape[1] % 32:
            warnings.warn(f"{gg}: rows of {t.shape[1]} are not a multiple of 32; stored as F32")
            want = "f32"
        if want == "f32":
            w.add_tensor(gg, t.astype(np.float32))
        elif want == "f16":
            w.add_tensor(gg, t.astype(np.float16))
        elif want == "bf16":
            bits = (torch.from_numpy(t).to(torch.bfloat16).view(torch.int16).numpy()).view(np.uint16)
            w.add_tensor(gg, bits.astype(np.uint16), raw_shape=t.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            q = QUANTIZERS[want][0](t)
            w.add_tensor(gg, q, raw_dtype=getattr(gguf.GGMLQuantizationType, want.upper()))
        types[gg] = want
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return types


def _add_kv(w, key, val):
    if isinstance(val, bool):
        w.add_bool(key, val)
    elif isinstance(val, int):
        w.add_uint32(key, val)
    elif isinstance(val, str):
        w.add_string(key, val)
    elif isinstance(val, (list, tuple)):
        w.add_array(key, list(val))
    else:
        raise TypeError(f"{key}: unsupported metadata value {type(val).__name__}")


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def import_gguf(path: str):
    """(Transformer, Tokenizer) from an arch-llama GGUF written by export_gguf (or compatible)."""
    import gguf
    from gguf.quants import dequantize

    from ..model import ModelConfig, Transformer
    from ..tokenizer import Tokenizer

    try:
        r = gguf.GGUFReader(path)
    except Exception as e:  # truncated or corrupt files raise inside the reader
        raise ValueError(f"{path}: not a readable GGUF file: {e}") from None
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: unsupported architecture {arch!r} (llama only)")
    get = lambda k, d=None: _field(r, f"llama.{k}", d)
    tensors = {t.name: t for t in r.tensors}
    cfg = ModelConfig(vocab_size=int(get("vocab_size", len(_field(r, "tokenizer.ggml.tokens", [])))),
                      dim=int(get("embedding_length")), n_layers=int(get("block_count")),
                      n_heads=int(get("attention.head_count")), n_kv_heads=int(get("attention.head_count_kv")),
                      head_dim=int(get("attention.key_length", get("embedding_length") // get("attention.head_count"))),
                      ffn_dim=int(get("feed_forward_length")), max_seq_len=int(get("context_length")),
                      rope_theta=float(get("rope.freq_base", 10000.0)),
                      norm_eps=float(get("attention.layer_norm_rms_epsilon")),
                      tie_embeddings="output.weight" not in tensors)
    state = {}
    for hf, gg in _names(cfg):
        if gg not in tensors:
            raise ValueError(f"{path}: tensor {gg} is missing")
        t = tensors[gg]
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        arr = arr.reshape(shape)
        if gg.endswith("attn_q.weight"):
            arr = unpermute_rope(arr, cfg.n_heads)
        elif gg.endswith("attn_k.weight"):
            arr = unpermute_rope(arr, cfg.n_kv_heads)
        state[hf] = torch.from_numpy(np.ascontiguousarray(arr))
    model = Transformer(cfg)
    model.load_state_dict(state)
    toks = _field(r, "tokenizer.ggml.tokens")
    merges = _field(r, "tokenizer.ggml.merges")
    ttypes = _field(r, "tokenizer.ggml.token_type")
    tok = None
    if _field(r, "tokenizer.ggml.model") == "gpt2" and toks:
        tok = _tokenizer_from_gguf(Tokenizer, toks, merges or [], ttypes or [], _field(r, "tokenizer.ggml.bos_token_id"),
                                   _field(r, "tokenizer.ggml.eos_token_id"), _field(r, "tokenizer.ggml.padding_token_id"))
    return model, tok


def _tokenizer_from_gguf(Tokenizer, toks, merges, ttypes, bos, eos, pad):
    """Byte-level BPE from tokenizer.ggml.* fields: vocabulary strings are GPT-2 byte-to-unicode
    encoded; control / user-defined tokens are added tokens."""
    from ..tokenizer import bytes_to_unicode

    inv = {c: b for b, c in bytes_to_unicode().items()}
    added, raw = [], []
    for i, (t, ty) in enumerate(zip(toks, ttypes or [1] * len(toks))):
        if ty in (3, 4):
            added.append({"id": i, "content": t, "special": ty == 3})
            raw.append(t.encode("utf-8"))
        else:
            try:
                raw.append(bytes(inv[c] for c in t))
            except KeyError:
                raise ValueError(f"token {i} ({t!r}) is not byte-level BPE") from None
    index = {}
    for i, b in enumerate(raw):
        if i not in {a["id"] for a in added}:
            index.setdefault(b, i)
    mids = []
    for m in merges:
        a, b = m.split(" ")
        ba, bb = bytes(inv[c] for c in a), bytes(inv[c] for c in b)
        mids.append((index[ba], index[bb], index[ba + bb]))
    name = lambda i: toks[i] if i is not None and 0 <= i < len(toks) and ttypes[i] in (3, 4) else None
    return Tokenizer(raw, mids, added, bos_token=name(bos), eos_token=name(eos), pad_token=name(pad))


@torch.no_grad()
def verify_gguf(model, tokenizer, path: str, texts, max_tokens: int = 256) -> dict:
    """Reload the file, dequantise, and compare with the source model on the given texts."""
    model2, tok2 = import_gguf(path)
    kls, agree, n = 0.0, 0, 0
    model.eval()
    for text in texts:
        ids = tokenizer.encode(text)[:max_tokens]
        if len(ids) < 2:
            continue
        t = torch.tensor([ids])
        a = torch.log_softmax(model(t).double(), -1)
        b = torch.log_softmax(model2(t).double(), -1)
        kls += float((a.exp() * (a - b)).sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += len(ids)
    report = {"tokens": n, "kl_per_token": kls / max(1, n), "top1_agreement": agree / max(1, n)}
    if tok2 is not None:
        report["tokenizer_identical"] = all(tok2.encode(t) == tokenizer.encode(t) for t in texts)
    return report
