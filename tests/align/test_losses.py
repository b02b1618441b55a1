"""Every alignment loss against a hand-written float64 formula; chunked log-probs against full logits."""
from __future__ import annotations

import math

import pytest
import torch

from llmforge.align import losses as L
from llmforge.align.logprobs import logprobs_reference, sequence_logprobs
from llmforge.model import ModelConfig, Transformer


def _ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _rand(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) * 3 - 20 for _ in range(4)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_dpo(loss_type, eps):
    pc, pr, rc, rr = _rand()
    beta = 0.3
    loss, m = L.dpo_loss(pc, pr, rc, rr, beta, loss_type, eps)
    want = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = (a - b) - (c - d)
        if loss_type == "sigmoid":
            want.append(-(1 - eps) * _ls(beta * z) - eps * _ls(-beta * z))
        elif loss_type == "ipo":
            want.append((z - 1 / (2 * beta)) ** 2)
        else:
            want.append(max(0.0, 1 - beta * z))
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-12)
    acc = sum((beta * (a - c)) > (beta * (b - d)) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()))
    assert m["accuracy"] == pytest.approx(acc / len(want))
    with pytest.raises(ValueError):
        L.dpo_loss(pc, pr, rc, rr[:3])


def test_dpo_gradient_pushes_chosen_up():
    pc = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    pr = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    L.dpo_loss(pc, pr, torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))[0].backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_kto():
    pi, ref, _, _ = _rand(seed=1)
    des = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    kl, beta, wd, wu = 0.7, 0.2, 1.0, 1.5
    loss, _ = L.kto_loss(pi, ref, des, kl, beta, wd, wu)
    sig = lambda x: 1 / (1 + math.exp(-x))
    want = [wd * (1 - sig(beta * ((a - b) - kl))) if d else wu * (1 - sig(beta * (kl - (a - b))))
            for a, b, d in zip(pi.tolist(), ref.tolist(), des.tolist())]
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-12)
    # a negative KL estimate is clamped to zero
    assert L.kto_loss(pi, ref, des, -5.0, beta)[1]["kl"] == 0.0


def test_orpo():
    g = torch.Generator().manual_seed(2)
    avg_c = -torch.rand(7, generator=g, dtype=torch.float64) * 3 - 0.01
    avg_r = -torch.rand(7, generator=g, dtype=torch.float64) * 3 - 0.01
    nll = torch.rand(7, generator=g, dtype=torch.float64)
    lam = 0.25
    loss, _ = L.orpo_loss(avg_c, avg_r, nll, lam)
    lo = lambda lp: math.log(math.exp(lp) / (1 - math.exp(lp)))
    want = [n - lam * _ls(lo(c) - lo(r)) for c, r, n in zip(avg_c.tolist(), avg_r.tolist(), nll.tolist())]
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-10)


def test_bt():
    rc, rr, _, _ = _rand(seed=3)
    loss, m = L.bt_loss(rc, rr, 0.5)
    want = [-_ls(a - b - 0.5) for a, b in zip(rc.tolist(), rr.tolist())]
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-12)


def test_group_advantages_and_grpo():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0], dtype=torch.float64)
    adv = L.group_advantages(r, 4)
    for g in range(2):
        xs = r[g * 4:(g + 1) * 4].tolist()
        mu = sum(xs) / 4
        sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / 4)
        for i, x in enumerate(xs):
            assert adv[g * 4 + i].item() == pytest.approx((x - mu) / (sd + 1e-6))
    g = torch.Generator().manual_seed(4)
    B, T = 3, 5
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    ref = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    a = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    clip, beta = 0.2, 0.05
    loss, _ = L.grpo_loss(logp, old, ref, a, mask, clip, beta)
    per_seq = []
    for b in range(B):
        toks = []
        for t in range(T):
            if not mask[b, t]:
                continue
            ratio = math.exp(logp[b, t] - old[b, t])
            ab = a[b].item()
            s = min(ratio * ab, min(max(ratio, 1 - clip), 1 + clip) * ab)
            d = float(ref[b, t] - logp[b, t])
            toks.append(-(s - beta * (math.exp(d) - d - 1)))
        per_seq.append(sum(toks) / len(toks))
    assert loss.item() == pytest.approx(sum(per_seq) / B, rel=1e-10)


def test_gae_and_ppo():
    g = torch.Generator().manual_seed(5)
    B, T = 2, 6
    rew = torch.randn(B, T, generator=g, dtype=torch.float64)
    val = torch.randn(B, T, generator=g, dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    adv, ret = L.gae(rew, val, gamma, lam)
    for b in range(B):
        nxt_adv = 0.0
        for t in reversed(range(T)):
            nv = val[b, t + 1].item() if t + 1 < T else 0.0
            delta = rew[b, t].item() + gamma * nv - val[b, t].item()
            nxt_adv = delta + gamma * lam * nxt_adv
            assert adv[b, t].item() == pytest.approx(nxt_adv, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(ret, adv + val)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    oldv = val + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T)
    pg, vl = L.ppo_losses(logp, old, adv, val, oldv, ret, mask, 0.2, 0.2)
    want_pg = want_vl = 0.0
    for b in range(B):
        for t in range(T):
            r = math.exp(logp[b, t] - old[b, t])
            A = adv[b, t].item()
            want_pg += -min(r * A, min(max(r, 0.8), 1.2) * A)
            vc = oldv[b, t] + max(-0.2, min(0.2, val[b, t] - oldv[b, t]))
            want_vl += 0.5 * max((val[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2)
    assert pg.item() == pytest.approx(want_pg / (B * T), rel=1e-10)
    assert vl.item() == pytest.approx(float(want_vl) / (B * T), rel=1e-10)


def test_chunked_logprobs_match_full_logits_and_gradients():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=173, dim=48, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=64)).double()
    tokens = torch.randint(0, 173, (3, 29))
    labels = tokens.clone()
    labels[0, :10] = -100
    labels[2, 20:] = -100
    got = sequence_logprobs(model, tokens, labels, chunk_tokens=7)
    want = logprobs_reference(model, tokens, labels)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(got.sum(), model.model.layers[0].mlp.up_proj.weight)[0]
    g2 = torch.autograd.grad(logprobs_reference(model, tokens, labels).sum(), model.model.layers[0].mlp.up_proj.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError):
        sequence_logprobs(model, tokens, labels[:, :5])
