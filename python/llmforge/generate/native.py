"""The native decode step: a whole model forward per token in one C++ call (csrc/decode_model.cpp,
kernel csrc/cpu/decode_model.cpp), with its own float32 key/value cache. The Python engine's
per-op dispatch (~20 torch / custom-op calls per layer) is what bounds batch-1 decoding on a CPU;
this path has none.

    dec = NativeDecoder(model, max_len=512)          # raises NotSupported when it cannot run model
    logits = dec.forward(prompt_ids)                  # (vocab,) of the last prompt token; prefill
    logits = dec.forward([next_id])                   # one decode step
    dec.reset()                                       # new sequence
    logits = dec.forward_paged(ids, positions, seqs, block_table, k_pools, v_pools)   # batched, paged cache

Runs CPU float32 Llama models, dense or MoE (top-k routing, optional shared expert: Mixtral,
Qwen3-MoE, Qwen2-MoE), and Gemma / Gemma 2 / Gemma 3 (GeGLU, scaled embeddings, sandwich norms,
attention scale and soft-caps, the sliding layers' windows and own RoPE), and OLMo 2 / OLMo 3 (no
norms in front of attention and the FFN, norms on their outputs, query / key norms over the whole
projection, OLMo 3's sliding layers), and SmolLM3 (layers without RoPE), whose projections and output head are nn.Linear or Int4Linear
(quant/linear.py; a Q4_0 GGUF loaded by export.gguf_int4.load_gguf_int4 is this).
Int4 weights multiply float32 activations, or, for Int4Linear(act_round="q8_0") (a Q4_0 GGUF),
Q8_0-rounded ones summed exactly in integers, as llama.cpp does; float weights run in float32. The
results are the Python forward's up to float summation order. forward() runs one sequence on its own
cache; forward_paged() a batch of sequences over a paged cache's pools.
Each call runs on `threads` threads, or on one while the machine is oversubscribed (threads.py).
"""
from __future__ import annotations

import time
import weakref

import torch
from torch import nn

from .. import _C
from ..model.llama import MLP, MoE, RMSNorm, Transformer, rope_freqs
from ..quant.linear import Int4Linear
from .threads import ThreadChooser


class NotSupported(ValueError):
    """The model has a part the native decode step does not run (the caller falls back to Python)."""


def _linear(m: nn.Module, name: str) -> dict:
    if type(m) is nn.Linear:
        if m.weight.dtype != torch.float32:
            raise NotSupported(f"{name}: weight is {m.weight.dtype}, the native step runs float32")
        d = {"weight": m.weight.detach().contiguous()}
    elif isinstance(m, Int4Linear):
        scales, zeros = m.scales.float(), m.zeros.float().reshape(-1)
        half = scales.half()
        if torch.equal(half.float(), scales):   # float16 holds them exactly (Q4_0's d): half the bytes
            scales = half
        if bool((zeros == zeros[0]).all()):
            zeros = zeros[:1]                    # one zero point (symmetric codes)
        else:
            zeros = zeros.reshape(m.out_features, -1)
        d = {"packed": m.packed.contiguous(), "scales": scales.contiguous(), "zeros": zeros.contiguous(),
             "group_size": m.group_size}
    else:
        raise NotSupported(f"{name}: {type(m).__name__} is not an nn.Linear or Int4Linear")
    bias = getattr(m, "bias", None)
    if bias is not None:
        d["bias"] = bias.detach().float().contiguous()
    return d


def _mlp(f: nn.Module, name: str, act: str) -> dict:
    """A gated FFN; its activation must be the model's (one flag for every FFN of the step)."""
    if getattr(f, "act", "silu") != act:
        raise NotSupported(f"{name}: activation {f.act!r}, the model's is {act!r}")
    return {"gate": _linear(f.gate_proj, f"{name}.gate_proj"), "up": _linear(f.up_proj, f"{name}.up_proj"),
            "down": _linear(f.down_proj, f"{name}.down_proj")}


def _moe(f: nn.Module, name: str, act: str) -> dict:
    """An MoE layer: router (float32, kept exact: it decides), experts, and the shared expert."""
    if type(f.router) is not nn.Linear or f.router.weight.dtype != torch.float32 or f.router.bias is not None:
        raise NotSupported(f"{name}.router: expected a float32 nn.Linear without bias")
    d = {"router": f.router.weight.detach().contiguous(),
         "experts": [_mlp(e, f"{name}.experts.{j}", act) for j, e in enumerate(f.experts)]}
    if hasattr(f, "shared_expert"):
        g = f.shared_expert_gate
        if type(g) is not nn.Linear or g.weight.dtype != torch.float32 or g.bias is not None:
            raise NotSupported(f"{name}.shared_expert_gate: expected a float32 nn.Linear without bias")
        d["shared"] = {"gate_w": g.weight.detach().reshape(-1).contiguous(),
                       **_mlp(f.shared_expert, f"{name}.shared_expert", act)}
    return {"moe": d}


def _norm(m: nn.Module, name: str) -> torch.Tensor:
    if not isinstance(m, RMSNorm) or m.weight.dtype != torch.float32:
        raise NotSupported(f"{name}: expected a float32 RMSNorm")
    return m.weight.detach().contiguous()


class NativeDecoder:
    def __init__(self, model: Transformer, max_len: int | None = None, threads: int | None = None):
        cfg = model.cfg
        if not isinstance(model, Transformer):
            raise NotSupported(f"expected an llmforge Transformer, got {type(model).__name__}")
        emb = model.model.embed_tokens.weight
        if emb.device.type != "cpu" or emb.dtype != torch.float32:
            raise NotSupported(f"the native step runs CPU float32 models, got {emb.dtype} on {emb.device}")
        if cfg.hidden_act not in ("silu", "gelu_tanh"):
            raise NotSupported(f"hidden_act {cfg.hidden_act!r}: the native step runs silu and gelu_tanh")
        max_len = cfg.max_seq_len if max_len is None else int(max_len)
        if not 0 < max_len <= cfg.max_seq_len:
            raise ValueError(f"max_len must be in [1, {cfg.max_seq_len}], got {max_len}")
        layers, act = [], cfg.hidden_act
        for i, blk in enumerate(model.model.layers):
            want = MoE if cfg.n_experts else MLP
            if type(blk.mlp) is not want:
                raise NotSupported(f"layer {i}: {type(blk.mlp).__name__}, expected {want.__name__}")
            a, f = blk.self_attn, blk.mlp
            p = f"layers.{i}"
            sandwich = hasattr(blk, "post_feedforward_layernorm")   # Gemma 2 / 3, OLMo 2 / 3: sublayer outputs normed
            mlp_norm = "pre_feedforward_layernorm" if sandwich else "post_attention_layernorm"
            # the norms in front of attention and the FFN; OLMo 2 / 3 have none (the step reads x itself)
            pre = {} if blk.attn_norm is None else {"attn_norm": _norm(blk.attn_norm, f"{p}.input_layernorm")}
            if blk.mlp_norm is not None:
                pre["mlp_norm"] = _norm(blk.mlp_norm, f"{p}.{mlp_norm}")
            layers.append({**pre,
                           **({"post_attn_norm": _norm(blk.post_attention_layernorm, f"{p}.post_attention_layernorm"),
                               "post_ffn_norm": _norm(blk.post_feedforward_layernorm,
                                                      f"{p}.post_feedforward_layernorm")} if sandwich else {}),
                           "local_rope": bool(blk.local_rope), "window": getattr(a, "window", None),
                           # SmolLM3's NoPE layers: q and k unrotated (the key only where a layer lacks RoPE)
                           **({} if a.use_rope else {"rope": False}),
                           "q": _linear(a.q_proj, f"{p}.q_proj"), "k": _linear(a.k_proj, f"{p}.k_proj"),
                           "v": _linear(a.v_proj, f"{p}.v_proj"), "o": _linear(a.o_proj, f"{p}.o_proj"),
                           **(_moe(f, f"{p}.mlp", act) if cfg.n_experts else _mlp(f, f"{p}.mlp", act)),
                           # per head (head_dim wide) or, OLMo 2 / 3, over the whole projection: the step
                           # tells them apart by width
                           **({"q_norm": _norm(a.q_norm, f"{p}.q_norm"), "k_norm": _norm(a.k_norm, f"{p}.k_norm")}
                              if cfg.qk_norm else {})})
        output = {"weight": emb.detach().contiguous()} if model.lm_head is None else _linear(model.lm_head, "lm_head")
        rounding = {m.act_round for m in model.modules() if isinstance(m, Int4Linear)}
        if len(rounding) > 1:
            raise NotSupported(f"int4 layers mix activation rounding modes {sorted(map(str, rounding))}")
        # RoPE tables exactly as the Python path builds them: angles in float64, then float32; Gemma 3's
        # and OLMo 3's sliding layers may have their own
        tables = [self._rope(cfg, local) for local in (False, True)
                  if not local or any(blk.local_rope for blk in model.model.layers)]
        self.cfg, self.max_len = cfg, max_len
        self.threads = torch.get_num_threads() if threads is None else int(threads)
        self.chooser = ThreadChooser(self.threads)   # fewer threads while the machine is oversubscribed
        self._m = _C.DecodeModel(
            {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
             "head_dim": cfg.head_dim, "ffn_dim": max(cfg.ffn_dim, cfg.moe_shared_ffn_dim), "vocab": cfg.vocab_size,
             "max_len": max_len, "eps": float(cfg.norm_eps), "act_q8": rounding == {"q8_0"},
             "gelu_tanh": cfg.hidden_act == "gelu_tanh", "embed_scale": cfg.dim ** 0.5 if cfg.embed_scale else None,
             "attn_scale": cfg.attn_scale, "attn_softcap": cfg.attn_softcap, "final_softcap": cfg.final_softcap,
             **({"n_experts": cfg.n_experts, "top_k": cfg.moe_top_k, "expert_ffn_dim": cfg.ffn_dim,
                 "shared_ffn_dim": cfg.moe_shared_ffn_dim, "norm_topk": cfg.moe_norm_topk} if cfg.n_experts else {})},
            emb.detach().contiguous(), *tables[0], _norm(model.model.norm, "norm"), output, layers, self.threads,
            *(tables[1] if len(tables) > 1 else (None, None)))

    @staticmethod
    def _rope(cfg, local: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) (max_seq_len, head_dim / 2) float32: the global RoPE, or the sliding layers'."""
        inv, att = rope_freqs(cfg, local)
        ang = torch.arange(cfg.max_seq_len, dtype=torch.float64)[:, None] * inv
        return (ang.cos() * att).float().contiguous(), (ang.sin() * att).float().contiguous()

    def _timed(self, rows: int, fn, *args) -> None:
        """fn(*args) on the thread count the chooser picks for a call of `rows` rows, timed for it."""
        n = self.chooser.pick(rows)
        if self._m.threads != n:
            self._m.threads = n
        t0 = time.perf_counter()
        fn(*args)
        self.chooser.record(rows, n, time.perf_counter() - t0)

    @staticmethod
    def why_not(model) -> str | None:
        """None when NativeDecoder(model) can be built, else the reason it cannot."""
        try:
            NativeDecoder(model, max_len=1)
        except NotSupported as e:
            return str(e)
        return None

    @property
    def length(self) -> int:
        """Tokens in the cache (the position the next token gets)."""
        return self._m.length

    def reset(self, length: int = 0) -> None:
        """Forget the cache from position `length` on (0: start a new sequence)."""
        self._m.truncate(length)

    def forward_paged(self, tokens: list[int], positions: list[int], seqs: list[int], block_table: torch.Tensor,
                      k_pools: torch.Tensor, v_pools: torch.Tensor, out_rows: list[int] | None = None) -> torch.Tensor:
        """One batched step over a paged cache (PagedKVCache's pools and a prepare()d block table):
        row m is token tokens[m] of sequence seqs[m] (a block-table row) at positions[m]; its key and
        value are written to the pools. Returns the logits (len(out_rows), vocab) of rows out_rows
        (default: every row)."""
        rows = list(range(len(tokens))) if out_rows is None else list(out_rows)
        out = torch.empty(len(rows), self.cfg.vocab_size)
        self._timed(len(tokens), self._m.forward_paged, tokens, positions, seqs, block_table, k_pools, v_pools, out,
                    rows)
        return out

    def prefill(self, model: Transformer, tokens: list[int]) -> torch.Tensor:
        """Start a new sequence from a prompt run through `model` itself (the Python forward, on
        GEMMs: faster than the step for long prompts, see PYTHON_PREFILL_MIN); its keys and values
        become this decoder's cache. model must be the one this decoder was built from. Returns the
        last token's logits (vocab,)."""
        from .cache import KVCache

        n = len(tokens)
        if not 0 < n <= self.max_len:
            raise ValueError(f"prefill: the prompt must have 1..{self.max_len} tokens, got {n}")
        cache = KVCache(model.cfg, 1, n)
        cache.set_valid(torch.ones(1, n, dtype=torch.bool))
        with torch.no_grad():
            logits = model.forward_cached(torch.tensor([tokens]), torch.arange(n)[None], cache)[0, -1]
        self._m.load_cache(torch.stack([k[0] for k in cache.k]).contiguous(),
                           torch.stack([v[0] for v in cache.v]).contiguous())
        return logits.float()

    def forward(self, tokens, all_logits: bool = False) -> torch.Tensor:
        """Append tokens (a list of ids or a 1-D integer tensor) and return float32 logits: the
        last token's (vocab,), or (len(tokens), vocab) with all_logits."""
        if isinstance(tokens, torch.Tensor):
            if tokens.dim() != 1 or tokens.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"tokens must be a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
            tokens = tokens.tolist()
        n = len(tokens)
        out = torch.empty(n if all_logits else 1, self.cfg.vocab_size)
        self._timed(n, self._m.forward, tokens, out, all_logits)
        return out if all_logits else out[0]


def _fingerprint(model) -> tuple:
    """What a built decoder depends on: every weight tensor's storage, version counter and 8 sampled
    values (the samples catch edits made through .data, which bypass the version counter)."""
    fp = []
    for t in (*model.parameters(), *model.buffers()):
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), 8).long() if flat.numel() else torch.zeros(0, dtype=torch.long)
        fp.append((t.data_ptr(), t._version, tuple(flat[idx].tolist())))
    return tuple(fp)


# model -> (fingerprint, NativeDecoder or None); weak keys, so the cache neither keeps a model alive
# nor travels with it (a model stays deep-copyable and picklable after generate()).
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def native_decoder(model, max_len: int) -> NativeDecoder | None:
    """A NativeDecoder for model with room for max_len positions, reset to an empty cache, or None
    when the native step cannot run it. Cached per model and rebuilt when the fingerprint (storage,
    version and sampled values of every weight) changes."""
    if model.training or max_len > model.cfg.max_seq_len:
        return None
    fp = _fingerprint(model)
    got = _CACHE.get(model)
    if got is not None and got[0] == fp and got[1] is None:
        return None
    if got is None or got[0] != fp or got[1].max_len < max_len or got[1].threads != torch.get_num_threads():
        try:
            dec = NativeDecoder(model, max_len=max(max_len, min(model.cfg.max_seq_len, 512)))
        except NotSupported:
            _CACHE[model] = (fp, None)
            return None
        got = (fp, dec)
        _CACHE[model] = got
    got[1].reset()
    return got[1]
