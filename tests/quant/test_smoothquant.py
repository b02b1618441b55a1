"""SmoothQuant: folding is exact in floating point, W8A8Linear matches a float64 reference, and
smoothing beats plain W8A8 on a model with planted activation-outlier channels."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.ops import quantize_activations_int8, quantize_int8
from llmforge.quant.linear import W8A8Linear
from llmforge.quant.quality import compare_models
from llmforge.quant.smoothquant import calibrate_act_absmax, quantize_w8a8, smooth_model, smoothquant


def _model(seed=0, std=0.08, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=80, max_seq_len=64)
    cfg.update(kw)
    m = Transformer(ModelConfig(**cfg))
    m.reset_parameters(std=std)
    with torch.no_grad():  # non-trivial norm weights, so folding into them is exercised
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif n.endswith("bias"):
                p.normal_(0, 0.05)
    return m.eval()


def _batches(vocab, n=3, B=2, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (B, T), generator=g) for _ in range(n)]


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=4, attention_bias=True), dict(n_kv_heads=1)])
def test_folding_leaves_fp_model_unchanged(kw):
    model = _model(**kw).double()
    calib, probe = _batches(97), _batches(97, n=1, T=31, seed=7)[0]
    with torch.no_grad():
        ref = model(probe)
    act = calibrate_act_absmax(model, calib)
    before = {n: p.clone() for n, p in model.named_parameters()}
    explicit = smooth_model(model, act, alpha=0.5)
    assert explicit == {}  # a dense Llama folds every scale
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    for part in ("input_layernorm", "post_attention_layernorm", "v_proj", "o_proj", "up_proj", "down_proj"):
        assert any(part in n for n in changed), part
    with torch.no_grad():
        out = model(probe)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # the smoothed activations' per-channel maxima are now sqrt(max|X| max|W|) (alpha = 0.5)
    act2 = calibrate_act_absmax(model, calib)
    name = "model.layers.1.mlp.gate_proj"
    w = torch.stack([before[f"model.layers.1.mlp.{n}.weight"].abs().amax(0) for n in ("gate_proj", "up_proj")]).amax(0)
    torch.testing.assert_close(act2[name], (act[name] * w).sqrt(), rtol=1e-9, atol=1e-12)


GEMMA2 = dict(hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True, tie_embeddings=True, sandwich_norm=True,
              attn_scale=0.3, attn_softcap=20.0, final_softcap=15.0, sliding_window=16,
              layer_types=["sliding_attention", "full_attention"])


def test_folding_gemma2_leaves_fp_model_unchanged():
    """Gemma 2's FFN reads pre_feedforward_layernorm (the post-norms sit after the sublayers): the
    gate/up scales fold there, the post-norms stay, and the outputs do not move (past the window)."""
    model = _model(**GEMMA2).double()
    calib, probe = _batches(97), _batches(97, n=1, T=31, seed=7)[0]
    with torch.no_grad():
        ref = model(probe)
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert smooth_model(model, calibrate_act_absmax(model, calib), alpha=0.5) == {}
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    for part in ("input_layernorm", "pre_feedforward_layernorm", "v_proj", "o_proj", "up_proj", "down_proj"):
        assert any(part in n for n in changed), part
    assert not any("post_" in n for n in changed), changed
    with torch.no_grad():
        torch.testing.assert_close(model(probe), ref, rtol=1e-9, atol=1e-9)


def test_folding_float32_within_1e5():
    model = _model(seed=3)
    calib, probe = _batches(97), _batches(97, n=1, T=17, seed=8)[0]
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(probe)
        smooth_model(model, calibrate_act_absmax(model, calib), alpha=0.8)
        out = model(probe).double()
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_moe_keeps_explicit_scales_and_they_are_exact():
    model = _model(n_experts=3, moe_top_k=2).double()
    calib, probe = _batches(97), _batches(97, n=1, seed=9)[0]
    with torch.no_grad():
        ref = model(probe)
    explicit = smooth_model(model, calibrate_act_absmax(model, calib), alpha=0.5)
    assert len(explicit) == 2 * 3 * 3  # gate/up/down of 3 experts in 2 blocks
    # an explicit scale s means: that linear computes (x / s) (W s)^T, the same in exact arithmetic
    with torch.no_grad():
        for name, s in explicit.items():
            lin = model.get_submodule(name)
            lin.weight.mul_(s[None]).div_(s[None])
        torch.testing.assert_close(model(probe), ref, rtol=1e-9, atol=1e-9)


def test_w8a8_linear_matches_float64_reference():
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(37, 19)
    x = torch.randn(3, 5, 37, generator=g)
    s = torch.rand(37, generator=g) + 0.2
    lin.requires_grad_(False)
    layer = W8A8Linear.from_linear(lin, smooth=s)
    q = quantize_int8(lin.weight.detach().double() * s.double())
    xq, xs = quantize_activations_int8((x / s).reshape(-1, 37))
    ref = (xq.double() @ q["q"].double().t()) * xs.double()[:, None] * q["scale"].double()[None] + lin.bias.double()
    torch.testing.assert_close(layer(x).double(), ref.reshape(3, 5, 19), rtol=1e-5, atol=1e-5)
    # and it approximates the float layer
    assert float((layer(x) - lin(x)).abs().max()) < 0.05
    with pytest.raises(ValueError, match="shape"):
        W8A8Linear.from_linear(lin, smooth=torch.ones(36))
    with pytest.raises(ValueError, match="positive"):
        W8A8Linear.from_linear(lin, smooth=-torch.ones(37))


def _plant_outliers(model, channels, factor=30.0, weight_factor=3.0):
    """A few residual channels reach the linears 30x larger (as in trained LLMs), their weight
    columns only 3x smaller: per-token int8 activations lose most of their grid to them."""
    with torch.no_grad():
        for blk in model.model.layers:
            for norm, lins in ((blk.input_layernorm, (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj)),
                               (blk.post_attention_layernorm, (blk.mlp.gate_proj, blk.mlp.up_proj))):
                norm.weight[channels] *= factor
                for lin in lins:
                    lin.weight[:, channels] /= weight_factor


def test_smoothquant_beats_plain_w8a8_with_outlier_channels():
    model = _model(seed=4, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128)
    _plant_outliers(model, [3, 17, 40])
    calib, held = _batches(97, n=4, B=4, T=32, seed=11), _batches(97, n=4, B=4, T=32, seed=12)
    kl = {}
    for name, alpha in (("naive", None), ("alpha0", 0.0), ("sq", 0.5)):
        q = copy.deepcopy(model)
        if alpha is None:
            quantize_w8a8(q)
        else:
            smoothquant(q, calib, alpha=alpha)
        assert all(type(m).__name__ != "Linear" for m in q.model.layers.modules())
        kl[name] = compare_models(model, q, held)["kl_per_token"]
    assert kl["sq"] < 0.5 * kl["naive"], kl
    assert kl["sq"] < kl["alpha0"], kl
    # the caller's float model still has its plain linears
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, "0.5", True])
def test_bad_alpha_raises(alpha):
    model = _model()
    with pytest.raises(ValueError, match="alpha"):
        smoothquant(model, _batches(97, n=1), alpha=alpha)


def test_no_calibration_data_raises():
    model = _model()
    for calib in ([], None):
        with pytest.raises(ValueError, match="calibration"):
            smoothquant(model, calib)
    with pytest.raises(ValueError, match="calibration"):
        calibrate_act_absmax(model, iter(()))
