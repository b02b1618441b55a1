"""A plain PyTorch Llama (eager ops, torch SDPA) with llmforge's parameter names: the
baseline for training-throughput comparisons. Same maths as llmforge.model.Transformer,
so both produce the same loss from the same state dict (checked by the benchmark).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmforge.model.config import ModelConfig
from llmforge.model.llama import rope_freqs


class _Norm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Attn(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)

        def rot(t):
            t1, t2 = t.chunk(2, -1)
            return t * cos + torch.cat([-t2, t1], -1) * sin

        y = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True, enable_gqa=c.n_kv_heads != c.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class _MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.up_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.down_proj = nn.Linear(c.ffn_dim, c.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = _Norm(c.dim, c.norm_eps)
        self.self_attn = _Attn(c)
        self.post_attention_layernorm = _Norm(c.dim, c.norm_eps)
        self.mlp = _MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.norm = _Norm(c.dim, c.norm_eps)


class ReferenceLlama(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.cfg = c
        self.model = _Decoder(c)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.dim, c.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_freqs(c)[0].float(), persistent=False)   # the benchmark configs: no scaling

    def loss(self, tokens):
        B, T = tokens.shape
        ang = torch.arange(T, dtype=torch.float32, device=tokens.device)[:, None] * self.inv_freq
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos(), ang.sin()
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        h = self.model.norm(x)
        logits = F.linear(h, self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
