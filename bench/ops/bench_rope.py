"""RoPE apply (neox and norm styles) vs torch eager (HF rotate_half; stack/flatten for norm).

    python -m bench rope [--record]
"""
from __future__ import annotations

import torch

from bench.harness import finish, row, time_fn
from llmforge.ops import apply_rope, rope_cos_sin


def torch_neox(x, c, s):
    # Hugging Face Llama: cos/sin repeated to the full head_dim, rotate_half
    d = x.shape[-1]
    rot = torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)
    return x * c + rot * s


def torch_norm(x, c, s):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)


def run(device: str = "cpu", quick: bool = False):
    cases = [(1, 2048, 32, 128, torch.float32), (1, 2048, 32, 128, torch.bfloat16), (4, 512, 8, 80, torch.float32)]
    if quick:
        cases = cases[:1]
    rows = []
    torch.manual_seed(0)
    for B, S, H, D, dt in cases:
        x = torch.randn(B, S, H, D, dtype=dt, device=device)
        cos, sin = rope_cos_sin(S, D, device=device)
        cf, sf = torch.cat([cos, cos], -1)[None, :, None].to(dt), torch.cat([sin, sin], -1)[None, :, None].to(dt)
        ch, sh = cos[None, :, None].to(dt), sin[None, :, None].to(dt)
        nbytes = 2 * x.numel() * x.element_size()
        for style, ref in (("neox", lambda: torch_neox(x, cf, sf)), ("norm", lambda: torch_norm(x, ch, sh))):
            case = f"{style} {B}x{S}x{H}x{D} {str(dt).replace('torch.', '')}"
            with torch.no_grad():
                rows.append(row(case, "llmforge", time_fn(lambda st=style: apply_rope(x, cos, sin, style=st), device),
                                device, bytes_moved=nbytes))
                rows.append(row(case, "torch eager", time_fn(ref, device), device, bytes_moved=nbytes))
    return finish(rows, baseline="torch eager")
