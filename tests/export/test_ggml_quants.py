"""GGUF block quantisers (llmforge.export.ggml_quants, C++ in csrc/cpu/ggml_quants.cpp):
bytes equal the `gguf` package's numpy quantiser (legacy types) and llama.cpp's own
ggml_quantize_chunk (all types, marked llamacpp); dequantisation equals gguf's; round-trip
error within each format's step; bad input raises."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from llmforge import _C  # noqa: E402
from llmforge.export import llamacpp_ggml  # noqa: E402
from llmforge.export.ggml_quants import FORMATS, dequantize, quantize, row_bytes  # noqa: E402

LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
KQUANTS = ["q4_k", "q5_k", "q6_k"]
ALL = LEGACY + KQUANTS


def _gguf_type(name):
    return getattr(gguf.GGMLQuantizationType, name.upper())


def weights(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Realistic and awkward weight matrices."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        w = rng.standard_normal((rows, cols)) * 0.02
    elif kind == "student_t":  # heavy tails: a few large outliers per row
        w = rng.standard_t(3, (rows, cols)) * 0.05
    elif kind == "row_scales":  # rows of very different magnitudes, one all-zero row, zero blocks
        w = rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-8, 3, (rows, 1)))
        w[rows // 2] = 0
        w[0, : cols // 4] = 0
    elif kind == "positive":  # all of one sign (mins are zero / scales one-sided)
        w = np.abs(rng.standard_normal((rows, cols))) + 0.1
    elif kind == "sparse":
        w = np.where(rng.random((rows, cols)) < 0.05, rng.standard_normal((rows, cols)), 0.0)
    elif kind == "signed_zeros":  # blocks of -0.0: ggml's Q4_0/Q5_0 write d = -0 there, gguf's numpy +0
        w = np.where(rng.random((rows, cols)) < 0.02, rng.standard_normal((rows, cols)), -0.0)
    else:
        raise ValueError(kind)
    return w.astype(np.float32)


KINDS = ["normal", "student_t", "row_scales", "positive", "sparse"]


# ---- (a) always-run: against the gguf package ----------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_gguf(qtype, kind):
    w = weights(kind, 37, 160, seed=zlib.crc32(f"{qtype}/{kind}".encode()))
    w[5, 7] = 40.0 * np.abs(w).max()  # an outlier
    ref = gguf.quants.quantize(w, _gguf_type(qtype))
    got = quantize(w, qtype)
    assert got.shape == ref.shape == (37, row_bytes(qtype, 160))
    assert np.array_equal(got, ref), np.argwhere(got != ref)[:5]


@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_equals_gguf(qtype):
    bs = FORMATS[qtype].block
    w = np.concatenate([weights(k, 7, 3 * bs, seed=i) for i, k in enumerate(KINDS)])  # 35 rows
    q = quantize(w, qtype)
    ours = dequantize(q, qtype, 3 * bs)
    ref = gguf.quants.dequantize(q, _gguf_type(qtype)).reshape(ours.shape)
    np.testing.assert_array_equal(ours, ref)  # same float expressions, so the same bits


# Relative RMS error bound per format on normal weights: a uniform quantiser of step
# s = range / levels has RMS error s / sqrt(12); for 32 normals the block range is about
# 4.1 sigma (asymmetric), the symmetric types span 2 amax ~ 4.9 sigma; k-quants add 6-bit
# (8-bit for Q6_K) scale rounding. Bounds are that estimate with ~25% slack.
RMS_BOUND = {"q8_0": 4.9 / 255 / 12 ** 0.5 * 1.25, "q4_0": 4.9 / 15 / 12 ** 0.5 * 1.25,
             "q5_0": 4.9 / 31 / 12 ** 0.5 * 1.25, "q4_1": 4.1 / 15 / 12 ** 0.5 * 1.25,
             "q5_1": 4.1 / 31 / 12 ** 0.5 * 1.25, "q4_k": 4.1 / 15 / 12 ** 0.5 * 1.25,
             "q5_k": 4.1 / 31 / 12 ** 0.5 * 1.25, "q6_k": 4.5 / 63 / 12 ** 0.5 * 1.25}


@pytest.mark.parametrize("qtype", ALL)
def test_round_trip_error(qtype):
    w = weights("normal", 33, 512, seed=3)
    err = dequantize(quantize(w, qtype), qtype, 512) - w
    rel_rms = np.sqrt((err.astype(np.float64) ** 2).mean() / (w.astype(np.float64) ** 2).mean())
    assert rel_rms < RMS_BOUND[qtype], (qtype, rel_rms)
    assert rel_rms > RMS_BOUND[qtype] / 5, (qtype, rel_rms)  # really quantised to that many bits
    # Per element: never off by more than one step of its block's natural grid (range / levels).
    bs = FORMATS[qtype].block
    b = w.reshape(33, -1, bs)
    levels = {"q8_0": 254, "q4_0": 15, "q5_0": 31, "q4_1": 15, "q5_1": 31, "q4_k": 15, "q5_k": 31, "q6_k": 63}[qtype]
    step = (b.max(-1) - np.minimum(b.min(-1), 0)) / levels if qtype in ("q4_k", "q5_k") else \
        (b.max(-1) - b.min(-1)) / levels
    assert (np.abs(err.reshape(b.shape)) <= step[..., None] * 1.5 + 1e-7).all()


def test_zero_rows_are_exact():
    for qtype in ALL:
        w = np.zeros((3, 256), np.float32)
        assert np.array_equal(dequantize(quantize(w, qtype), qtype, 256), w)


def test_same_bytes_on_every_isa():
    """The quantiser is compiled per ISA without FMA contraction: every build writes the same bytes."""
    w = weights("student_t", 9, 512, seed=1)
    best = _C.cpu_best_isa()
    isas = ["scalar", "avx2", "avx512"][: ["scalar", "avx2", "avx512"].index(best) + 1]
    try:
        for qtype in ALL:
            outs = []
            for isa in isas:
                _C.set_cpu_isa(isa)
                outs.append(quantize(w, qtype))
            assert all(np.array_equal(o, outs[0]) for o in outs), qtype
    finally:
        _C.set_cpu_isa(best)


def test_torch_and_float64_input():
    w = weights("normal", 4, 256, seed=5)
    ref = quantize(w, "q4_k")
    assert np.array_equal(quantize(torch.from_numpy(w), "q4_k"), ref)
    assert np.array_equal(quantize(w.astype(np.float64), "q4_k"), ref)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.ones((2, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.ones((2, 512 + 32), np.float32), "q6_k")
    for bad in (np.nan, np.inf, -np.inf):
        w = np.ones((3, 256), np.float32)
        w[2, 100] = bad
        for qtype in ("q8_0", "q4_k"):
            with pytest.raises(ValueError, match="NaN or infinity"):
                quantize(w, qtype)
    with pytest.raises(ValueError, match="floating-point"):
        quantize(np.ones((2, 32), np.int32), "q8_0")
    with pytest.raises(ValueError, match="floating-point"):
        quantize(torch.ones(2, 32, dtype=torch.int64), "q8_0")
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.ones((2, 2, 32), np.float32), "q8_0")
    with pytest.raises(ValueError, match="unknown"):
        quantize(np.ones((2, 32), np.float32), "q3_k")
    q = quantize(np.ones((2, 256), np.float32), "q4_k")
    with pytest.raises(ValueError, match="whole rows"):
        dequantize(q.reshape(-1)[:-1], "q4_k", 256)
    with pytest.raises(ValueError, match="uint8"):
        dequantize(q.view(np.int8), "q4_k", 256)
    # The native boundary itself: wrong dtype is a TypeError, a wrong output shape a ValueError.
    x = np.ones((2, 32), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _C.ggml_quantize(x.astype(np.float64), np.empty((2, 34), np.uint8), 8, 1)
    with pytest.raises(ValueError, match="shape"):
        _C.ggml_quantize(x, np.empty((2, 33), np.uint8), 8, 1)
    with pytest.raises(ValueError, match="unsupported ggml type"):
        _C.ggml_quantize(x, np.empty((2, 34), np.uint8), 5, 1)


def test_corrupt_blocks_raise():
    q = quantize(weights("normal", 2, 256, seed=0), "q6_k")
    q[1, 208:210] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # the f16 d of row 1
    with pytest.raises(ValueError, match="non-finite"):
        dequantize(q, "q6_k", 256)


# ---- (b) llama.cpp's own quantiser ----------------------------------------------------

@pytest.fixture(scope="module")
def llamacpp_ref():
    pytest.importorskip("llama_cpp")
    ref = llamacpp_ggml.load()
    if ref is None:
        pytest.skip("llama_cpp is installed but no bundled libggml exports ggml_quantize_chunk")
    return ref


@pytest.mark.llamacpp
@pytest.mark.parametrize("kind", KINDS + ["signed_zeros"])
@pytest.mark.parametrize("qtype", ALL)
def test_bytes_equal_llamacpp(llamacpp_ref, qtype, kind):
    f = FORMATS[qtype]
    cols = f.block * (3 if f.block == 256 else 9)
    w = weights(kind, 23, cols, seed=zlib.crc32(f"llama/{qtype}/{kind}".encode()))
    assert llamacpp_ref.row_bytes(f.type_id, cols) == row_bytes(qtype, cols)
    ref = llamacpp_ref.quantize(w, f.type_id)
    got = quantize(w, qtype)
    bad = np.argwhere(got != ref)
    assert bad.size == 0, f"{len(bad)} bytes differ, first at (row, byte) {bad[:4].tolist()}"
