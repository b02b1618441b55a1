"""GGUF export (arch "llama"; "qwen2" for q/k/v biases, "qwen3" for query/key norms; MoE models
as "llama" with experts, Mixtral's layout, "qwen3moe", or "qwen2moe" with its shared expert; Gemma,
Gemma 2 and Gemma 3 as "gemma", "gemma2", "gemma3", see gguf_gemma.py; OLMo 2 and OLMo 3 as "olmo2",
see gguf_olmo.py; SmolLM3 as "smollm3", see gguf_smollm3.py) that llama.cpp loads, GGUF import, and
self-verification.

    export_gguf(model, tokenizer, "model.gguf", qtype="q4_k_m")  # see QTYPES
    model2, tok2 = import_gguf("model.gguf")
    report = verify_gguf(model, tokenizer, "model.gguf", texts)  # per-token KL, top-1 agreement, tokenizer

qtype: f32 | f16 | bf16 (every matrix in that type), q8_0 | q4_0 | q4_1 | q5_0 | q5_1 |
q4_k | q5_k | q6_k (every matrix; blocks written by our C++ quantisers, byte-identical to
llama.cpp's, see ggml_quants.py), or the llama.cpp mixes q4_k_m / q5_k_m. The mixes follow
llama.cpp's llama_tensor_get_type in outline: the base type is Q4_K (Q5_K); output.weight
(token_embd.weight when embeddings are tied) is Q6_K; attn_v.weight and ffn_down.weight are
Q6_K in the layers where use_more_bits(i, n) holds (the first and last eighth of the layers
and every third layer between), ffn_down_exps (MoE) likewise; with exactly 8 experts, attn_v
and attn_k are Q8_0 and (q4_k_m) attn_output Q5_K; everything else keeps the base type. Not
reproduced: the 70B special case and imatrix-driven choices. 1-D tensors (norms) and the MoE
router (ffn_gate_inp) stay F32. Experts are stored as one 3-D tensor per projection and layer
(ffn_gate_exps / ffn_up_exps / ffn_down_exps, experts outermost); qwen2moe's shared expert is
ffn_{gate,up,down}_shexp with its gate ffn_gate_inp_shexp a vector (F32), ffn_down_shexp
following the ffn_down rule.

A matrix whose rows are not a multiple of its type's block falls back per tensor as
llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 when even 32 does not
divide the row), with one warning listing the tensors.

Layout facts (../shared/GGUF_FACTS.md): llama.cpp's llama arch rotates adjacent pairs while
the HF layout rotates halves, so attn_q / attn_k rows are permuted per head (arch smollm3 too) on export (and
back on import); a missing output.weight means tied embeddings. Archs qwen2, qwen3, olmo2 and the
Gemma ones rotate halves (NEOX) in llama.cpp, so their rows are written as they are. Files are
written to a temporary name and renamed. import_gguf dequantises every type above (truncated or corrupt
files, and tensors the described model would not use, raise ValueError). RoPE scaling
(linear, Llama 3's rope_freqs.weight, YaRN) is written and read as llama.cpp does: gguf_rope.py.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .ggml_quants import FORMATS, dequantize, quantize
from .gguf_gemma import GEMMA_ARCHS, gemma_arch, read_gemma_config, write_gemma_keys
from .gguf_olmo import OLMO_ARCH, OLMO_ARCHS, olmo_arch, read_olmo_config, write_olmo_keys
from .gguf_rope import FREQS, f32_metadata as _f32, read_rope_scaling, write_rope_scaling
from .gguf_smollm3 import SMOLLM3_ARCH, read_smollm3_config, smollm3_arch

QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m")
_MIX_BASE = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}  # llama.cpp's, for rows not a multiple of 256
_FTYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
          "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q4_k": "MOSTLY_Q4_K_S",
          "q5_k": "MOSTLY_Q5_K_S", "q6_k": "MOSTLY_Q6_K", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M"}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the *_K_M mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple, qtype: str, n_layers: int, tied: bool, n_experts: int = 0) -> str:
    """The type one tensor is stored in for an export of qtype (before the block-size fallback)."""
    if len(shape) < 2 or name.endswith("ffn_gate_inp.weight"):
        return "f32"
    if qtype not in _MIX_BASE:
        return qtype
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "q6_k"
    if n_experts == 8 and name.endswith(("attn_v.weight", "attn_k.weight")):
        return "q8_0"
    if n_experts == 8 and qtype == "q4_k_m" and name.endswith("attn_output.weight"):
        return "q5_k"
    if name.endswith(("attn_v.weight", "ffn_down.weight", "ffn_down_exps.weight", "ffn_down_shexp.weight")) and \
            use_more_bits(int(name.split(".")[1]), n_layers):
        return "q6_k"
    return _MIX_BASE[qtype]


def _fit_block(want: str, cols: int) -> str:
    """Falls back (as llama.cpp) until the type's block divides the row."""
    while want in FORMATS and cols % FORMATS[want].block:
        want = _FALLBACK.get(want, "f16")
    return want


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF half-split rows -> llama.cpp adjacent-pair rows, per head."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


def unpermute_rope(w, n_heads: int):
    """Inverse of permute_rope, on the rows of any per-row array (numpy or torch): weights, or the
    packed bytes / scales / zero points of a quantised weight."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_arch(cfg) -> str:
    """The llama.cpp architecture a model exports as: qwen3 (query/key norms), qwen2 (q/k/v
    biases) or llama; with experts, qwen3moe (query/key norms) or llama (Mixtral's layout);
    gemma / gemma2 / gemma3 for the Gemma models (gguf_gemma.gemma_arch), olmo2 for OLMo 2 and 3
    (gguf_olmo.olmo_arch), smollm3 for SmolLM3 (gguf_smollm3.smollm3_arch). ValueError for what none
    of them holds."""
    if cfg.hf_model_type() in GEMMA_ARCHS:
        return gemma_arch(cfg)
    if cfg.hf_model_type() == "smollm3":
        return smollm3_arch(cfg)
    if cfg.hf_model_type() in OLMO_ARCHS:
        return olmo_arch(cfg)
    if cfg.qk_norm and cfg.attention_bias:
        raise ValueError("query/key norms together with q/k/v biases have no llama.cpp architecture")
    if cfg.n_experts:
        if cfg.attention_bias or cfg.moe_shared_ffn_dim:
            if not (cfg.attention_bias and cfg.moe_shared_ffn_dim) or cfg.qk_norm:
                raise ValueError("MoE with q/k/v biases or a shared expert exports as llama.cpp's qwen2moe, "
                                 "which has both (and no query/key norms)")
            if cfg.moe_norm_topk:
                raise ValueError("llama.cpp's qwen2moe does not renormalise the top-k expert weights: a "
                                 "model with moe_norm_topk=True is not exported")
            if cfg.tie_embeddings:
                raise ValueError("llama.cpp's qwen2moe needs an output.weight: tied embeddings are not exported")
            return "qwen2moe"
        if not cfg.moe_norm_topk:
            raise ValueError("llama.cpp's llama and qwen3moe archs renormalise the top-k expert weights: "
                             "a model with moe_norm_topk=False is not exported")
        return "qwen3moe" if cfg.qk_norm else "llama"
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.attention_bias else "llama"


_FFN = (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down"))
_SANDWICH = (("post_attention_layernorm", "post_attention_norm"), ("pre_feedforward_layernorm", "ffn_norm"),
             ("post_feedforward_layernorm", "post_ffw_norm"))   # Gemma 2 / 3


def _names(cfg):
    """(source, GGUF name) for every tensor: source is one state-dict key, or, for an expert
    projection, the tuple of the experts' keys whose weights are stacked (experts outermost).
    Gemma 2 / 3's sandwich norms: ffn_norm is the norm in front of the FFN in both layouts. OLMo 2 / 3
    (no pre-norms) have neither attn_norm nor ffn_norm, only the two output norms."""
    yield "model.embed_tokens.weight", "token_embd.weight"
    norms = _SANDWICH if cfg.sandwich_norm else (("post_attention_layernorm", "ffn_norm"),)
    pre = (("input_layernorm", "attn_norm"),)
    if not cfg.pre_norm:
        norms, pre = tuple(n for n in norms if n[1] != "ffn_norm"), ()
    for i in range(cfg.n_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, gg in (*pre, ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                       ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), *norms):
            yield p + hf + ".weight", b + gg + ".weight"
            if cfg.attention_bias and hf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                yield p + hf + ".bias", b + gg + ".bias"
        if cfg.n_experts:
            yield p + "mlp.router.weight", b + "ffn_gate_inp.weight"
            for hf, gg in _FFN:
                yield tuple(f"{p}mlp.experts.{e}.{hf}.weight" for e in range(cfg.n_experts)), f"{b}{gg}_exps.weight"
            if cfg.moe_shared_ffn_dim:   # qwen2moe: the gate is a vector (n_embd) in llama.cpp
                yield p + "mlp.shared_expert_gate.weight", b + "ffn_gate_inp_shexp.weight"
                for hf, gg in _FFN:
                    yield f"{p}mlp.shared_expert.{hf}.weight", f"{b}{gg}_shexp.weight"
        else:
            for hf, gg in _FFN:
                yield f"{p}mlp.{hf}.weight", f"{b}{gg}.weight"
        if cfg.qk_norm:
            yield p + "self_attn.q_norm.weight", b + "attn_q_norm.weight"
            yield p + "self_attn.k_norm.weight", b + "attn_k_norm.weight"
    yield "model.norm.weight", "output_norm.weight"
    if not cfg.tie_embeddings:
        yield "lm_head.weight", "output.weight"


def _rope_rows(gg: str) -> bool:
    return gg.endswith(("attn_q.weight", "attn_k.weight"))


def export_gguf(model, tokenizer, path: str, qtype: str = "f32", name: str = "llmforge") -> dict:
    import gguf

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    cfg = model.cfg
    arch = gguf_arch(cfg)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}")
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(name)
    ctx = cfg.max_seq_len
    if arch in ("llama", "qwen2", "qwen3", "qwen3moe", "qwen2moe") and "sliding_attention" in (cfg.layer_types or ()):
        ctx = min(ctx, cfg.sliding_window)   # Mistral's window: these archs have none, so they are exact up to it
    w.add_context_length(ctx)
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
    if cfg.n_experts:
        w.add_expert_count(cfg.n_experts)
        w.add_expert_used_count(cfg.moe_top_k)
        w.add_expert_feed_forward_length(cfg.ffn_dim)
        if cfg.moe_shared_ffn_dim:
            w.add_expert_shared_feed_forward_length(cfg.moe_shared_ffn_dim)
    extra = write_rope_scaling(w, cfg, arch)   # rope_freqs.weight for Llama 3 scaling
    if arch == OLMO_ARCH:
        write_olmo_keys(w, cfg)
    else:
        write_gemma_keys(w, cfg, arch)
    w.add_file_type(getattr(gguf.LlamaFileType, _FTYPE[qtype]))
    for key, val in tokenizer.gguf_metadata().items():
        _add_kv(w, key, val)
    template = getattr(tokenizer, "chat_template", None)
    if template:
        w.add_chat_template(template)
    types, fell_back = {}, []
    for gg, t in extra.items():
        w.add_tensor(gg, t.astype(np.float32))
        types[gg] = "f32"
    for hf, gg in _names(cfg):
        t = np.stack([sd[k] for k in hf]) if isinstance(hf, tuple) else sd[hf]
        if gg.endswith("ffn_gate_inp_shexp.weight"):
            t = t.reshape(-1)
        if arch in ("llama", SMOLLM3_ARCH) and _rope_rows(gg):
            t = permute_rope(t, cfg.n_heads if gg.endswith("attn_q.weight") else cfg.n_kv_heads)
        want = tensor_type(gg, t.shape, qtype, cfg.n_layers, cfg.tie_embeddings, cfg.n_experts)
        got = _fit_block(want, t.shape[-1])
        if got != want:
            fell_back.append(f"{gg} {tuple(t.shape)}: {want} -> {got}")
        if got == "f32":
            w.add_tensor(gg, t.astype(np.float32))
        elif got == "f16":
            w.add_tensor(gg, t.astype(np.float16))
        elif got == "bf16":
            bits = (torch.from_numpy(t).to(torch.bfloat16).view(torch.int16).numpy()).view(np.uint16)
            w.add_tensor(gg, bits.astype(np.uint16), raw_shape=t.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            q = quantize(t.reshape(-1, t.shape[-1]), got)
            w.add_tensor(gg, q.reshape(*t.shape[:-1], q.shape[-1]),
                         raw_dtype=getattr(gguf.GGMLQuantizationType, got.upper()))
        types[gg] = got
    if fell_back:
        warnings.warn("rows not a multiple of the block size, stored in another type: " + "; ".join(fell_back))
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
    try:
        return f.contents()
    except UnicodeDecodeError:
        raise ValueError(f"metadata {key} holds a string that is not UTF-8 (corrupt file?)") from None


def _number(reader, key, default=None):
    v = _field(reader, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"metadata {key} is {'missing' if v is None else repr(v)[:40]}, expected a number")
    return v


def import_gguf(path: str):
    """(Transformer, Tokenizer) from an arch llama / qwen2 / qwen3 / qwen3moe / qwen2moe / gemma /
    gemma2 / gemma3 / olmo2 / smollm3 GGUF written by export_gguf (or compatible: a llama-arch MoE as
    convert_hf_to_gguf writes Mixtral, a Gemma or OLMo file as it writes them), with llama.cpp's
    defaults for keys it lacks."""
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except Exception as e:  # truncated or corrupt files raise inside the reader
        raise ValueError(f"{path}: not a readable GGUF file: {e}") from None
    try:
        return _import(path, r)
    except ValueError as e:
        raise ValueError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _import(path, r):
    """import_gguf's work on an open reader; ValueErrors get the path in front."""
    from gguf.quants import dequantize as dequantize_gguf

    from ..model import ModelConfig, Transformer
    from ..tokenizer import LLAMA_CPP_PRE, Tokenizer

    arch = _field(r, "general.architecture")
    archs = ("llama", "qwen2", "qwen3", "qwen3moe", "qwen2moe", *GEMMA_ARCHS.values(), OLMO_ARCH, SMOLLM3_ARCH)
    if arch not in archs:
        raise ValueError(f"unsupported architecture {arch!r} ({', '.join(archs)})")
    get_abs = lambda k, d=None: _number(r, k, d)  # noqa: E731
    get = lambda k, d=None: get_abs(f"{arch}.{k}", d)  # noqa: E731
    tensors = {t.name: t for t in r.tensors}
    n_experts = int(get("expert_count", 0))
    if arch in ("qwen3moe", "qwen2moe") and not n_experts:
        raise ValueError(f"{arch}.expert_count is missing or 0")
    moe = dict(n_experts=n_experts, moe_top_k=int(get("expert_used_count")),
               ffn_dim=int(get("expert_feed_forward_length", get("feed_forward_length")))) if n_experts else {}
    if arch == "qwen2moe":   # llama.cpp's qwen2moe: unnormalised top-k weights, a shared expert
        moe.update(moe_norm_topk=False,
                   moe_shared_ffn_dim=int(get("expert_shared_feed_forward_length", get("feed_forward_length"))))
    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", dim // max(1, n_heads)))
    theta = _f32(get("rope.freq_base", 10000.0))
    freqs = _tensor_array(path, tensors[FREQS], dequantize_gguf) if FREQS in tensors else None
    scaling = read_rope_scaling(lambda k, d=None: _field(r, k, d), get_abs, arch, freqs, head_dim, theta)
    cfg = dict(vocab_size=int(get("vocab_size", len(_field(r, "tokenizer.ggml.tokens", [])))),
               dim=dim, n_layers=int(get("block_count")),
               n_heads=n_heads, n_kv_heads=int(get("attention.head_count_kv")), head_dim=head_dim,
               ffn_dim=int(get("feed_forward_length")), max_seq_len=int(get("context_length")),
               rope_theta=theta, rope_scaling=scaling,
               norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
               tie_embeddings="output.weight" not in tensors,
               attention_bias=arch in ("qwen2", "qwen2moe") and "blk.0.attn_q.bias" in tensors,
               qk_norm=arch in ("qwen3", "qwen3moe"))
    if arch in GEMMA_ARCHS.values():
        cfg.update(read_gemma_config(arch, cfg, lambda k, d=None: _field(r, k, d), get_abs))
    if arch == OLMO_ARCH:
        cfg.update(read_olmo_config(arch, cfg, lambda k, d=None: _field(r, k, d), get_abs))
    if arch == SMOLLM3_ARCH:
        cfg.update(read_smollm3_config(cfg))
    cfg = ModelConfig(**{**cfg, **moe})
    known = {FREQS} | {gg for _, gg in _names(cfg)}
    unknown = sorted(set(tensors) - known)
    if unknown:   # a tensor the model would not use means the file describes some other model
        raise ValueError(f"tensors this {arch} model does not have: {', '.join(unknown[:5])}")
    state = {}
    for hf, gg in _names(cfg):
        if gg not in tensors:
            raise ValueError(f"tensor {gg} is missing")
        arr = _tensor_array(path, tensors[gg], dequantize_gguf)
        if arch in ("llama", SMOLLM3_ARCH) and _rope_rows(gg):
            arr = unpermute_rope(arr, cfg.n_heads if gg.endswith("attn_q.weight") else cfg.n_kv_heads)
        if gg.endswith("ffn_gate_inp_shexp.weight") and arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if isinstance(hf, tuple):
            if arr.ndim != 3 or arr.shape[0] != len(hf):
                raise ValueError(f"tensor {gg} has shape {arr.shape}, expected {len(hf)} experts outermost")
            state.update((k, torch.from_numpy(np.ascontiguousarray(a))) for k, a in zip(hf, arr))
        else:
            state[hf] = torch.from_numpy(np.ascontiguousarray(arr))
    with torch.device("meta"):  # the shapes the metadata implies, before allocating anything
        want = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    bad = [f"{k} {tuple(v.shape)} (expected {want.get(k)})" for k, v in state.items() if tuple(v.shape) != want.get(k)]
    if bad:
        raise ValueError(f"tensor shapes do not fit the model its metadata describes: {'; '.join(bad[:3])}")
    model = Transformer(cfg)
    model.load_state_dict(state)
    toks = _field(r, "tokenizer.ggml.tokens")
    merges = _field(r, "tokenizer.ggml.merges")
    ttypes = _field(r, "tokenizer.ggml.token_type")
    tok = None
    if _field(r, "tokenizer.ggml.model") == "gpt2" and toks:
        pre = _field(r, "tokenizer.ggml.pre", "gpt-2")
        pattern = {v: k for k, v in LLAMA_CPP_PRE.items()}.get(pre)
        if pattern is None:
            raise ValueError(f"tokenizer.ggml.pre {pre!r} is not supported ({', '.join(LLAMA_CPP_PRE.values())})")
        tok = _tokenizer_from_gguf(Tokenizer, toks, merges or [], ttypes or [], _field(r, "tokenizer.ggml.bos_token_id"),
                                   _field(r, "tokenizer.ggml.eos_token_id"), _field(r, "tokenizer.ggml.padding_token_id"),
                                   pattern)
        tok.add_bos_token = bool(_field(r, "tokenizer.ggml.add_bos_token", False)) and tok.bos_token is not None
    elif _field(r, "tokenizer.ggml.model") == "llama" and toks:   # SentencePiece-style (Llama 2, Mistral)
        from ..tokenizer import SpmTokenizer

        keys = ("tokens", "scores", "token_type", "bos_token_id", "eos_token_id", "padding_token_id",
                "unknown_token_id", "add_space_prefix")
        md = {f"tokenizer.ggml.{k}": _field(r, f"tokenizer.ggml.{k}") for k in keys}
        try:
            tok = SpmTokenizer.from_gguf_metadata({k: v for k, v in md.items() if v is not None})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return model, tok


def _tensor_array(path, t, dequantize_gguf) -> np.ndarray:
    """One GGUF tensor as float32 of its (rows, cols) shape: our dequantisers for the block
    formats, gguf's for F32 / F16 / BF16."""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    kind = t.tensor_type.name.lower()
    try:
        if kind in FORMATS:
            arr = dequantize(np.asarray(t.data).view(np.uint8), kind, shape[-1])
        elif kind in ("f32", "f16", "bf16"):
            arr = dequantize_gguf(t.data, t.tensor_type).astype(np.float32)
        else:
            raise ValueError(f"type {t.tensor_type.name} is not supported")
        arr = arr.reshape(shape)
    except ValueError as e:
        raise ValueError(f"{path}: tensor {t.name} {shape}: {e}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: tensor {t.name} holds NaN or infinity (corrupt file?)")
    return arr


def _tokenizer_from_gguf(Tokenizer, toks, merges, ttypes, bos, eos, pad, pattern="gpt2"):
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
    index, added_ids = {}, {a["id"] for a in added}
    for i, b in enumerate(raw):
        if i not in added_ids:
            index.setdefault(b, i)
    mids = []
    for j, m in enumerate(merges):
        try:
            a, b = m.split(" ")
            ba, bb = bytes(inv[c] for c in a), bytes(inv[c] for c in b)
            mids.append((index[ba], index[bb], index[ba + bb]))
        except (ValueError, KeyError):
            raise ValueError(f"merge {j} ({m!r}) is not two byte-level BPE tokens of the vocabulary whose "
                             f"concatenation is one too") from None
    name = lambda i: toks[i] if i is not None and 0 <= i < len(toks) and ttypes[i] in (3, 4) else None
    return Tokenizer(raw, mids, added, pattern, bos_token=name(bos), eos_token=name(eos), pad_token=name(pad))


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
