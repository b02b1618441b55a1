"""AdamW with 8-bit optimizer states (for QLoRA and other memory-bound fine-tuning).

    opt = AdamW8bit(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)

Both moments are stored blockwise (256 values per block) as 8-bit codes on a
logarithmic scale between the block's smallest and largest non-zero magnitude: the
first moment as sign + 7-bit magnitude, the second (non-negative) as 8 bits, code 0
meaning exactly zero. Relative precision is range/126 (m) or range/254 (v) in log
space, e.g. ~5% for a block spanning six decades, and - unlike a linear absmax code -
small second moments never round to zero, which would blow the update up. State
memory: 2 bytes per parameter + 16 bytes per block, versus 8 bytes for fp32 AdamW.
Each step dequantises a parameter's moments to fp32, runs the ordinary AdamW update
and requantises.
"""
from __future__ import annotations

import torch

BLOCK = 256
_TINY = 1e-30


def _quantize_log(x: torch.Tensor, signed: bool):
    """x (n_blocks, BLOCK) float32 -> (codes uint8/int8, lo, hi) with lo/hi the block's log-magnitude range."""
    mag = x.abs()
    nz = mag > 0
    logm = torch.log(mag.clamp_min(_TINY))
    big = torch.finfo(torch.float32).max
    lo = torch.where(nz, logm, torch.full_like(logm, big)).amin(1, keepdim=True)
    hi = torch.where(nz, logm, torch.full_like(logm, -big)).amax(1, keepdim=True)
    empty = ~nz.any(1, keepdim=True)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    levels = 126 if signed else 254
    span = (hi - lo).clamp_min(1e-12)
    q = torch.round((logm - lo) / span * levels) + 1                    # 1..levels+1
    q = torch.where(nz, q, torch.zeros_like(q))
    if signed:
        codes = (q * torch.sign(x)).to(torch.int8)
    else:
        codes = q.to(torch.uint8)
    return codes, lo.squeeze(1), hi.squeeze(1)


def _dequantize_log(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, signed: bool) -> torch.Tensor:
    levels = 126 if signed else 254
    q = codes.to(torch.float32)
    mag_q = q.abs()
    span = (hi - lo)[:, None]
    val = torch.exp(lo[:, None] + (mag_q - 1) / levels * span)
    val = torch.where(mag_q > 0, val, torch.zeros_like(val))
    return val * torch.sign(q) if signed else val


class AdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _blocks(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1).float()
        pad = (-flat.numel()) % BLOCK
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.view(-1, BLOCK)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                g = self._blocks(p.grad)
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    m = torch.zeros_like(g)
                    v = torch.zeros_like(g)
                else:
                    m = _dequantize_log(st["m_codes"], st["m_lo"], st["m_hi"], True)
                    v = _dequantize_log(st["v_codes"], st["v_lo"], st["v_hi"], False)
                st["step"] += 1
                t = float(st["step"])
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                update = (m / (1 - b1 ** t)) / denom
                n = p.numel()
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(-1)[:n].view_as(p).to(p.dtype), alpha=-group["lr"])
                st["m_codes"], st["m_lo"], st["m_hi"] = _quantize_log(m, True)
                st["v_codes"], st["v_lo"], st["v_hi"] = _quantize_log(v, False)
        return loss


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors."""
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


