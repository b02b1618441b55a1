"""A Llama-style decoder as plain nn.Modules. Parameter names follow the Hugging Face
Llama layout (model.layers.N.self_attn.q_proj.weight, ...), so state dicts map 1:1.

    model = Transformer(cfg)
    logits = model(tokens)                                   # (B, T, vocab)
    logits = model(tokens, position_ids=pos)                 # packed sequences: positions restart per
                                                             # document, attention stays inside it
    loss = model.loss(tokens, labels)                        # mean next-token CE over labels != -100

On CPU (float32/bfloat16/float64, no autocast) training takes fused paths with the same maths:
q/k/v as one GEMM with RoPE writing heads-first (ops.qkv_rope), gate/up as one GEMM feeding
ops.swiglu_packed, the residual add fused into the post-attention norm (ops.rmsnorm_residual), and the output layer + loss in one Function
(ops.linear_cross_entropy). Projections that are not bare nn.Linear (LoRA, quantised, hooked)
keep the unfused path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .. import cuda_available, ops
from ..ops import rmsnorm
from ..ops.attention import attention_varlen_fwd
from ..ops.gemm import GEMM_MIN_ROWS
from .config import ModelConfig

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def use_kernels(x: torch.Tensor) -> bool:
    """llmforge's fused CPU kernels (RoPE, SwiGLU, attention) run on CPU tensors of these dtypes;
    elsewhere (CUDA until its kernels land) the model uses the equivalent torch ops."""
    return x.device.type == "cpu" and x.dtype in KERNEL_DTYPES


def use_cuda_attention(q: torch.Tensor) -> bool:
    """The fused CUDA attention (kernels/flash_attn_*.cu) takes these: fp16/bf16, head dim <= 128."""
    return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 128
            and cuda_available())


def _plain_linears(*mods: nn.Module) -> bool:
    """True when the modules are bare nn.Linear without hooks (no adapter, quantised or wrapped
    layer, no calibration hook), so their weights can be fused into one GEMM."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return all(type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks for m in mods)


def _fused_cpu(x: torch.Tensor, *mods: nn.Linear) -> bool:
    """Use the fused CPU projections (ops.qkv_rope, [gate | up])? They multiply by the modules'
    weights concatenated, a copy per call: worth it for the rows of training and prefill (one
    GEMM instead of two or three), not for a few decode rows, where the copy would move as many
    bytes as the matmuls themselves."""
    return (use_kernels(x) and x.numel() >= GEMM_MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
            and _plain_linears(*mods) and all(m.weight.dtype == x.dtype for m in mods))


def _linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x), on llmforge's GEMM (ops.linear) when mod is a bare nn.Linear on CPU float32."""
    if _fused_cpu(x, mod):
        return ops.linear(x, mod.weight, mod.bias)
    return mod(x)


# ---- RoPE ----------------------------------------------------------------------------------
def rope_freqs(cfg: ModelConfig, local: bool = False) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim/2,) float64, attention factor) with the config's HF-style
    rope_scaling applied (ops.rope_frequencies: linear, llama3, yarn). cos and sin are
    multiplied by the attention factor (YaRN's; 1 otherwise). local: Gemma 3's sliding layers'
    RoPE (cfg.local_rope_theta, unscaled)."""
    if local and cfg.local_rope_theta is not None:
        return ops.rope_frequencies(cfg.head_dim, cfg.local_rope_theta, None)
    return ops.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor, dtype: torch.dtype, local: bool = False):
    """cos/sin of shape (*positions.shape, head_dim) for the half-split (HF) convention."""
    inv, att = rope_freqs(cfg, local)
    ang = positions.to(torch.float64)[..., None] * inv.to(positions.device)
    ang = torch.cat([ang, ang], dim=-1)
    return (ang.cos() * att).to(dtype), (ang.sin() * att).to(dtype)


def rope_tables(cfg: ModelConfig, positions: torch.Tensor, dtype: torch.dtype) -> list:
    """rope_cos_sin for the positions, once for all layers: [global], or [global, local] when the
    sliding layers have their own RoPE (Gemma 3, OLMo 3); index it with Block.local_rope."""
    return [rope_cos_sin(cfg, positions, dtype, local) for local in (False, True)
            if not local or cfg.local_rope_theta is not None]


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    # x: (B, H, T, hd); cos/sin: (B, T, hd)
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _no_rope(x):
    """A NoPE layer's rotation: none (x: (B, T, heads, hd))."""
    return x


_no_rope.kernel = False


class Rope:
    """The rotation for one forward pass, applied to (B, T, heads, hd) projections: the fused
    kernel (half-width tables indexed by position) on CPU, the torch formula elsewhere."""

    def __init__(self, cfg: ModelConfig, position_ids: torch.Tensor | None, B: int, T: int, dtype, device,
                 local: bool = False):
        self.kernel = device.type == "cpu" and dtype in KERNEL_DTYPES
        if self.kernel:
            inv, att = rope_freqs(cfg, local)
            # under torch.compile every possible position (reading the largest would break the graph)
            rows = (T if position_ids is None else
                    max(T, cfg.max_seq_len) if torch.compiler.is_compiling() else int(position_ids.max()) + 1)
            ang = torch.arange(rows, device=device, dtype=torch.float64)[:, None] * inv.to(device)
            tdt = torch.float64 if dtype == torch.float64 else torch.float32
            self.cos, self.sin = (ang.cos() * att).to(tdt), (ang.sin() * att).to(tdt)
            self.positions = position_ids
        else:
            pos = torch.arange(T, device=device).expand(B, T) if position_ids is None else position_ids
            self.cos, self.sin = rope_cos_sin(cfg, pos, dtype, local)   # (B, T, hd)

    def __call__(self, x):  # (B, T, H, hd)
        if self.kernel:
            return ops.apply_rope(x.contiguous(), self.cos, self.sin, self.positions)
        return x * self.cos[:, :, None] + _rotate_half(x) * self.sin[:, :, None]


# ---- blocks --------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """y = x / rms(x) * weight. For Gemma (cfg.norm_plus_one) weight holds the scale 1 + w, not the
    checkpoint's w (model/hf.py converts), so this module is the same for every model."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.dtype != self.weight.dtype:  # autocast: normalise in the weight's precision
            return rmsnorm(x.to(self.weight.dtype), self.weight, self.eps).to(x.dtype)
        return rmsnorm(x.contiguous(), self.weight, self.eps)


def softcap_attention(q, k, v, scale: float, cap: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gemma 2's attention: scores cap * tanh(scale q.k / cap), then the mask (boolean, True =
    attend, broadcast to (B, H, Tq, Tk); None = causal, the queries being the last keys), softmax in
    float32. (B, H, Tq, hd) x (B, Hkv, Tk, hd) -> (B, H, Tq, hd)."""
    h, kv = q.shape[1], k.shape[1]
    if kv != h:
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
    s = torch.tanh((q @ k.transpose(-1, -2)) * (scale / cap)) * cap
    if mask is None:
        Tq, Tk = q.shape[2], k.shape[2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    p = s.masked_fill(~mask, float("-inf")).float().softmax(-1).to(v.dtype)
    return p @ v


def window_mask(Tq: int, Tk: int, window: int, device) -> torch.Tensor:
    """(Tq, Tk) boolean: causal sliding-window attention of the last Tq of Tk positions, query i
    (position Tk - Tq + i) seeing the `window` keys up to itself (Hugging Face's sliding_window)."""
    i = torch.arange(Tk - Tq, Tk, device=device)[:, None]
    j = torch.arange(Tk, device=device)[None, :]
    return (j <= i) & (j > i - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5
        self.window = cfg.sliding_window if cfg.is_sliding(layer) else None   # Gemma 2 / 3 local layers
        self.use_rope = cfg.uses_rope(layer)                                   # SmolLM3's NoPE layers: False
        h, kv, hd, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        self.q_proj = nn.Linear(d, h * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each query / key head before RoPE; OLMo 2: over all of q / k
            self.q_norm = RMSNorm(h * hd if cfg.qk_norm_full else hd, cfg.norm_eps)
            self.k_norm = RMSNorm(kv * hd if cfg.qk_norm_full else hd, cfg.norm_eps)

    def heads(self, x, n: int, which: str):
        """(B, T, n * hd) projections as (B, T, n, hd) heads, qk-normed (Qwen3 per head, OLMo 2 over
        the whole projection) for q and k."""
        normed = self.cfg.qk_norm and which != "v"
        if normed and self.cfg.qk_norm_full:
            x = getattr(self, which)(x)
        y = x.view(*x.shape[:-1], n, self.cfg.head_dim)
        return getattr(self, which)(y) if normed and not self.cfg.qk_norm_full else y

    def forward(self, x, rope, mask, cache=None, layer: int = 0):
        B, T, _ = x.shape
        h, kv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        if cache is not None:
            return self._forward_cached(x, *rope, cache, layer)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not self.use_rope:
            rope = _no_rope
        if rope.kernel and not self.cfg.qk_norm and _fused_cpu(x, *projs):  # one GEMM, RoPE writing heads-first
            w = torch.cat([p.weight for p in projs])
            b = torch.cat([p.bias for p in projs]) if self.cfg.attention_bias else None
            q, k, v = ops.qkv_rope(x.contiguous(), w, b, rope.cos, rope.sin, rope.positions, h, kv)
        else:
            q = rope(self.heads(_linear(self.q_proj, x), h, "q_norm")).transpose(1, 2)    # (B, h, T, hd)
            k = rope(self.heads(_linear(self.k_proj, x), kv, "k_norm")).transpose(1, 2)   # (B, kv, T, hd)
            v = _linear(self.v_proj, x).view(B, T, kv, hd).transpose(1, 2)
        if isinstance(mask, PackedDocs) and not use_cuda_attention(q):
            mask = document_mask(mask.position_ids)
        if isinstance(mask, PackedDocs):  # CUDA: packed documents as one varlen launch, no mask
            y = attention_varlen_fwd(q.transpose(1, 2).reshape(B * T, h, hd), k.transpose(1, 2).reshape(B * T, kv, hd),
                                     v.transpose(1, 2).reshape(B * T, kv, hd), mask.cu_seqlens, mask.cu_seqlens,
                                     mask.max_len, mask.max_len, True, self.scale,
                                     -1 if self.window is None else self.window - 1)[0]
            return self.o_proj(y.view(B, T, h * hd))
        if mask is None and self.cfg.attn_softcap is None and (use_kernels(q) or use_cuda_attention(q)):
            y = ops.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True, scale=self.scale,
                              window=-1 if self.window is None else self.window - 1)
        else:  # packed documents (a block-diagonal mask: the fused kernel has no varlen mode yet), soft-caps
            y = self.attend(q, k, v, mask)
        return _linear(self.o_proj, y.transpose(1, 2).reshape(B, T, h * hd))

    def _forward_cached(self, x, cos, sin, cache, layer):
        B, T, _ = x.shape
        h, kv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.heads(self.q_proj(x), h, "q_norm").transpose(1, 2)
        k = self.heads(self.k_proj(x), kv, "k_norm").transpose(1, 2)
        v = self.v_proj(x).view(B, T, kv, hd).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.append(layer, k, v)                  # (B, kv, L, hd)
        y = self.attend(q, keys, values, cache.mask(T))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, h * hd))

    def attend(self, q, k, v, mask: torch.Tensor | None = None, band: bool = True) -> torch.Tensor:
        """Attention in torch ops with the model's scale (and soft-cap): (B, h, Tq, hd) queries, the
        last Tq of the (B, kv, Tk, hd) keys / values; mask boolean (True = attend), None = causal.
        A sliding-window layer also masks keys more than its window behind each query (band=False:
        the mask already does)."""
        if band and self.window is not None and k.shape[2] > self.window:
            band = window_mask(q.shape[2], k.shape[2], self.window, q.device)
            mask = band if mask is None else mask & band
        if self.cfg.attn_softcap is not None:
            return softcap_attention(q, k, v, self.scale, self.cfg.attn_softcap, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale,
                                              enable_gqa=k.shape[1] != q.shape[1])


class MLP(nn.Module):
    """SwiGLU (act "silu"), or GeGLU with tanh-approximated GELU (act "gelu_tanh", Gemma)."""

    def __init__(self, dim: int, ffn_dim: int, act: str = "silu"):
        super().__init__()
        self.act = act
        self.gate_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.up_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x):
        gp, up = self.gate_proj, self.up_proj
        if self.act != "silu":
            return self.down_proj(F.gelu(_linear(gp, x), approximate="tanh") * _linear(up, x))
        if _fused_cpu(x, gp, up) and (gp.bias is None) == (up.bias is None):  # one GEMM, SwiGLU on [gate | up]
            b = torch.cat([gp.bias, up.bias]) if gp.bias is not None else None
            h = ops.swiglu_packed(ops.linear(x, torch.cat([gp.weight, up.weight]), b))
            return _linear(self.down_proj, h)
        g, u = gp(x), up(x)
        if use_kernels(g) and g.dtype == u.dtype:
            return self.down_proj(ops.swiglu(g, u))
        return self.down_proj(F.silu(g) * u)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (Mixtral / Qwen3-MoE routing: softmax over all experts, the top
    k kept, renormalised when cfg.moe_norm_topk), plus Qwen2-MoE's sigmoid-gated shared expert
    when cfg.moe_shared_ffn_dim. Each forward leaves its load-balancing
    statistics in .balance: (fraction of tokens sent to each expert, summed over the k choices;
    mean router probability of each expert), which Transformer.aux_loss combines over layers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.n, self.norm_topk = cfg.moe_top_k, cfg.n_experts, cfg.moe_norm_topk
        self.router = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg.dim, cfg.ffn_dim, cfg.hidden_act) for _ in range(cfg.n_experts))
        if cfg.moe_shared_ffn_dim:
            self.shared_expert = MLP(cfg.dim, cfg.moe_shared_ffn_dim, cfg.hidden_act)
            self.shared_expert_gate = nn.Linear(cfg.dim, 1, bias=False)
        self.balance = None

    def forward(self, x):
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        logits = self.router(flat)                                        # (N, E), softmax in >= float32
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
        w, idx = probs.topk(self.top_k, dim=-1)                           # (N, k)
        if self.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        w = w.to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * w[rows, slot, None])
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        self.balance = (F.one_hot(idx, self.n).sum(1).float().mean(0), probs.mean(0))
        return out.view(B, T, D)


class Block(nn.Module):
    """Decoder layer. Llama (pre-norm): x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.)).
    Gemma 2 / 3 (cfg.sandwich_norm) norm the sublayers' outputs too, under Hugging Face's names:
    x + post_attention_layernorm(attn(input_layernorm(x))), then
    + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(.))); OLMo 2 / 3 (pre_norm=False) the
    outputs only: x + post_attention_layernorm(attn(x)), then + post_feedforward_layernorm(mlp(.)).
    `attn_norm` / `mlp_norm` are the norms in front of attention / the FFN (None without pre-norms);
    `local_rope` marks the sliding layers that have their own RoPE (Gemma 3, OLMo 3)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        if cfg.pre_norm:
            self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.sandwich_norm:
            if cfg.pre_norm:
                self.pre_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg.dim, cfg.ffn_dim, cfg.hidden_act)
        self.local_rope = cfg.local_rope_theta is not None and cfg.is_sliding(layer)

    @property
    def attn_norm(self) -> RMSNorm | None:
        """The RMSNorm whose output attention reads (None: OLMo 2 / 3 read the residual stream)."""
        return getattr(self, "input_layernorm", None)

    @property
    def mlp_norm(self) -> RMSNorm | None:
        """The RMSNorm whose output the FFN reads (None: OLMo 2 / 3 read the residual stream)."""
        if not hasattr(self, "input_layernorm"):
            return None
        return self.pre_feedforward_layernorm if hasattr(self, "post_feedforward_layernorm") else \
            self.post_attention_layernorm

    def attn_input(self, x):
        norm = self.attn_norm
        return x if norm is None else norm(x)

    def mlp_input(self, h):
        norm = self.mlp_norm
        return h if norm is None else norm(h)

    def attn_residual(self, x, a):
        """x plus the attention output a (post-normed in the sandwich layout)."""
        return x + (self.post_attention_layernorm(a) if hasattr(self, "post_feedforward_layernorm") else a)

    def mlp_residual(self, h, y):
        """h plus the FFN of its normed form y (the FFN output post-normed in the sandwich layout)."""
        out = self.mlp(y)
        return h + (self.post_feedforward_layernorm(out) if hasattr(self, "post_feedforward_layernorm") else out)

    def forward(self, x, rope, mask, cache=None, layer: int = 0):
        a = self.self_attn(self.attn_input(x), rope, mask, cache, layer)
        norm = self.mlp_norm
        if hasattr(self, "post_feedforward_layernorm"):
            a = self.post_attention_layernorm(a)
        if norm is not None and use_kernels(a) and a.dtype == x.dtype == norm.weight.dtype and \
                not (norm._forward_hooks or norm._forward_pre_hooks):
            # the residual add fused into the norm: h = x + a, y = norm(h)
            y, h = ops.rmsnorm_residual(a.contiguous(), x.contiguous(), norm.weight, norm.eps)
            return self.mlp_residual(h, y)
        x = x + a
        return self.mlp_residual(x, self.mlp_input(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class PackedDocs:
    """Packed documents for the CUDA varlen attention: each (row, document) of a (B, T) batch
    is one sequence of the flattened B * T tokens. cu_seqlens: int32 (n + 1,) on the device."""

    def __init__(self, position_ids: torch.Tensor):
        B, T = position_ids.shape
        self.position_ids = position_ids
        starts = position_ids == 0
        starts[:, 0] = True                                                 # rows never share a document
        idx = starts.reshape(-1).nonzero().flatten()
        cu = torch.cat([idx, idx.new_full((1,), B * T)])
        self.cu_seqlens = cu.to(torch.int32)
        self.max_len = int((cu[1:] - cu[:-1]).max())


def _packed_on_cuda(x: torch.Tensor, head_dim: int) -> bool:
    """Will attention run in fp16/bf16 on CUDA (directly, or under autocast)? Not under
    torch.compile: the document offsets' count and longest document depend on the data, which
    breaks the graph, so the compiled model takes the masked SDPA path."""
    if x.device.type != "cuda" or head_dim > 128 or torch.compiler.is_compiling() or not cuda_available():
        return False
    half = (torch.float16, torch.bfloat16)
    return x.dtype in half or (torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half)


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask: causal, and no attention across documents, where a new
    document starts wherever position_ids restarts at 0."""
    B, T = position_ids.shape
    doc = (position_ids == 0).cumsum(-1)                                # (B, T)
    same = doc[:, :, None] == doc[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


def _check_token_ids(tokens: torch.Tensor, vocab_size: int) -> None:
    """ValueError unless every id is in [0, vocab_size). Under torch.compile, where a branch on
    tensor data would break the graph, the same test runs as an assertion inside the graph
    (RuntimeError on CPU, a device-side assert on CUDA), not skipped."""
    msg = f"token ids must be in [0, {vocab_size})"
    if torch.compiler.is_compiling():
        torch._assert_async(((tokens >= 0) & (tokens < vocab_size)).all(), msg)
    elif tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(msg)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02):
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("layernorm.weight") or name.endswith("norm.weight") else nn.init.zeros_(p)
            else:
                # GPT-2 style: residual output projections scaled by 1/sqrt(2 * n_layers)
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
                nn.init.normal_(p, std=std * scale)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input embeddings of tokens (times sqrt(dim), rounded to their dtype, for Gemma)."""
        x = self.model.embed_tokens(tokens)
        if self.cfg.embed_scale:
            x = x * torch.tensor(self.cfg.dim ** 0.5, dtype=x.dtype)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output projection (tied to the embeddings, or lm_head, which may carry an adapter),
        soft-capped for Gemma 2 (cfg.final_softcap)."""
        out = F.linear(h, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)
        cap = self.cfg.final_softcap
        return out if cap is None else torch.tanh(out / cap) * cap

    def hidden_states(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, dim)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64/int32, got {tokens.dtype}")
        B, T = tokens.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        _check_token_ids(tokens, self.cfg.vocab_size)
        x = self.embed(tokens)
        mask = None
        if position_ids is None:
            position_ids = torch.arange(T, device=tokens.device).expand(B, T)
        else:
            if position_ids.shape != tokens.shape:
                raise ValueError("position_ids must have the shape of tokens")
            packed = _packed_on_cuda(x, self.cfg.head_dim) and self.cfg.attn_softcap is None
            mask = PackedDocs(position_ids) if packed else document_mask(position_ids)
        pos = None if mask is None else position_ids
        ropes = [Rope(self.cfg, pos, B, T, x.dtype, x.device)]
        if self.cfg.local_rope_theta is not None:   # Gemma 3's sliding layers
            ropes.append(Rope(self.cfg, pos, B, T, x.dtype, x.device, local=True))
        for layer in self.model.layers:
            rope = ropes[layer.local_rope]
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, mask, use_reentrant=False)
            else:
                x = layer(x, rope, mask)
        return self.model.norm(x)

    @torch.no_grad()
    def forward_cached(self, tokens: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
        """Incremental decoding: logits (B, T, vocab) for new tokens whose keys/values are
        appended to `cache` (llmforge.generate.cache.KVCache), attending to everything cached."""
        x = self.embed(tokens)
        ropes = rope_tables(self.cfg, position_ids, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, ropes[layer.local_rope], None, cache, i)
        cache.advance(tokens.shape[1])
        return self.logits(self.model.norm(x))

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); with labels, the training loss instead (see loss()). Going
        through forward keeps DDP/FSDP hooks in the loop."""
        if labels is not None:
            return self._loss(tokens, labels, position_ids)
        return self.logits(self.hidden_states(tokens, position_ids))

    def aux_loss(self) -> torch.Tensor:
        """moe_aux_coef x the load-balancing loss of the last forward: n_experts x sum over experts
        of (fraction of routing choices it got) x (its mean router probability), both averaged
        over every layer's tokens (Switch Transformer's loss, over all k choices and layers, as
        Mixtral's and Qwen3-MoE's in transformers). Zero for dense models."""
        if not self.cfg.n_experts:
            return torch.zeros((), device=self.model.embed_tokens.weight.device)
        stats = [l.mlp.balance for l in self.model.layers]
        frac = torch.stack([f for f, _ in stats]).mean(0)
        prob = torch.stack([p for _, p in stats]).mean(0)
        return self.cfg.moe_aux_coef * self.cfg.n_experts * (frac * prob).sum()

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy: logits at t predict labels at t+1 (labels default to
        tokens; -100 is ignored). MoE adds its load-balancing term."""
        return self(tokens, position_ids, labels=tokens if labels is None else labels)

    def _loss(self, tokens, labels, position_ids):
        h = self.hidden_states(tokens, position_ids)
        tgt = labels[:, 1:]
        if position_ids is not None:  # never predict across a document boundary
            tgt = tgt.masked_fill(position_ids[:, 1:] == 0, -100)
        head = self.lm_head
        plain_head = head is None or (_plain_linears(head) and head.bias is None)   # no adapter, hook, bias
        w = (self.model.embed_tokens.weight if head is None else head.weight) if plain_head else None
        if use_kernels(h):
            # the fused CPU kernel on every position's logits, the last one's target ignored:
            # no sliced copy of the logits, no float log-probabilities, no zero-filled gradient
            tgt_all = F.pad(tgt.long(), (0, 1), value=-100).reshape(-1)              # (B * T,)
            if plain_head and w.dtype == h.dtype and not torch.is_autocast_enabled("cpu") and \
                    self.cfg.final_softcap is None:
                # output GEMMs and loss in one Function
                total = ops.linear_cross_entropy(h.reshape(-1, h.size(-1)), w, tgt_all)
            else:
                logits = self.logits(h)
                total = ops.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_all).sum()
        else:
            logits = self.logits(h)[:, :-1]
            total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt.reshape(-1), ignore_index=-100,
                                    reduction="sum")
        # a batch without any target gives 0 (not NaN), so distributed ranks stay in step
        return total / (tgt != -100).sum().clamp(min=1) + self.aux_loss()
