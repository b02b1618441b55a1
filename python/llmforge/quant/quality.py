"""The quant ladder: how much a quantised model differs from its float source.

    row = compare_models(fp_model, q_model, eval_batches)   # ppl, KL, top-1 agreement
    sqnr_db(w, w_hat)                                       # per-layer signal-to-quantisation-noise
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    noise = (w.double() - w_hat.double()).pow(2).sum()
    return float(10 * torch.log10(w.double().pow(2).sum() / noise.clamp(min=1e-30)))


@torch.no_grad()
def compare_models(fp, q, batches) -> dict:
    fp.eval(), q.eval()
    nll_fp = nll_q = kl = agree = n = 0.0
    for tokens in batches:
        a = F.log_softmax(fp(tokens)[:, :-1].double(), -1)
        b = F.log_softmax(q(tokens)[:, :-1].double(), -1)
        tgt = tokens[:, 1:]
        nll_fp += float(-a.gather(-1, tgt[..., None]).sum())
        nll_q += float(-b.gather(-1, tgt[..., None]).sum())
        kl += float((a.exp() * (a - b)).sum())
        agree += float((a.argmax(-1) == b.argmax(-1)).sum())
        n += tgt.numel()
    return {"ppl_fp": math.exp(nll_fp / n), "ppl": math.exp(nll_q / n), "kl_per_token": kl / n,
            "top1_agreement": agree / n, "tokens": int(n)}
