"""CPU emulation of the CUDA attention kernels' index logic (kernels/mma.cuh,
kernels/flash_attn_fwd.cu, kernels/flash_attn_bwd.cu), for machines without a GPU.

1. Fragments: ldmatrix.x4 (plain / .trans) and mma.m16n8k16 are modelled from the PTX ISA's
   thread-to-element maps; the lane addresses of a_frag_addr / b_frag_addr / bt_frag_addr and
   the accumulator -> A-operand repacking must then compute Q K^T and P V exactly.
2. Tiles: the kernels' control flow at tile granularity (key ranges per query tile, the
   block-uniform need_mask test, online softmax with empty rows, the query tiles the dK/dV
   pass skips, zero-filled tails) against a dense float64 attention, over odd lengths,
   Sq != Sk both ways, causal and sliding windows.
These mirror the CUDA code by hand: a change to the kernels' tiling must be made here too.
The kernels themselves are tested against references in test_attention_cuda.py (GPU only).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

L2E = 1.4426950408889634


# ---- fragments ---------------------------------------------------------------------------------

def ldsm_x4(smem, addr_of_lane, trans=False):
    # smem: 2-D array [rows][cols]; addr_of_lane(lane) -> (row, col) start of 8 contiguous elements
    regs = np.zeros((32, 4, 2))
    for i in range(4):
        rows = [smem[r, c:c + 8] for (r, c) in (addr_of_lane(8 * i + j) for j in range(8))]
        m = np.stack(rows)  # 8x8 matrix i
        if trans: m = m.T
        for lane in range(32):
            g, t = lane // 4, lane % 4
            regs[lane, i] = m[g, 2 * t:2 * t + 2]
    return regs

def mma(c, a, b0, b1):
    # c: [32][4], a: [32][4][2], b0/b1: [32][2]
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2*t:2*t+2] = a[lane, 0]; A[g+8, 2*t:2*t+2] = a[lane, 1]
        A[g, 2*t+8:2*t+10] = a[lane, 2]; A[g+8, 2*t+8:2*t+10] = a[lane, 3]
        B[2*t:2*t+2, g] = b0[lane]; B[2*t+8:2*t+10, g] = b1[lane]
    C = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        C[g, 2*t:2*t+2] = c[lane, 0:2]; C[g+8, 2*t:2*t+2] = c[lane, 2:4]
    C = C + A @ B
    out = np.zeros((32, 4))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        out[lane, 0:2] = C[g, 2*t:2*t+2]; out[lane, 2:4] = C[g+8, 2*t:2*t+2]
    return out

a_addr = lambda row0, col0: (lambda lane: (row0 + (lane & 15), col0 + (lane >> 4) * 8))
b_addr = lambda n0, k0: (lambda lane: (n0 + (lane & 7) + ((lane >> 4) << 3), k0 + ((lane >> 3) & 1) * 8))
bt_addr = lambda k0, n0: (lambda lane: (k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8))



def test_fragment_maps_compute_qk_and_pv():
    rng = np.random.default_rng(0)
    D, Bc = 32, 32
    Q = rng.standard_normal((16, D)); K = rng.standard_normal((Bc, D)); V = rng.standard_normal((Bc, D))
    s = np.zeros((Bc // 8, 32, 4))
    for kk in range(D // 16):
        a = ldsm_x4(Q, a_addr(0, kk * 16))
        for nn in range(Bc // 16):
            bb = ldsm_x4(K, b_addr(nn * 16, kk * 16))
            s[2*nn] = mma(s[2*nn], a, bb[:, 0], bb[:, 1]); s[2*nn+1] = mma(s[2*nn+1], a, bb[:, 2], bb[:, 3])
    S = np.zeros((16, Bc))
    for nt in range(Bc // 8):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            S[g, nt*8+2*t:nt*8+2*t+2] = s[nt, lane, 0:2]; S[g+8, nt*8+2*t:nt*8+2*t+2] = s[nt, lane, 2:4]
    np.testing.assert_allclose(S, Q @ K.T, atol=1e-12)
    # O = S V with S from accumulators
    acc = np.zeros((D // 8, 32, 4))
    for kk in range(Bc // 16):
        a = np.zeros((32, 4, 2))
        a[:, 0] = s[2*kk][:, 0:2]; a[:, 1] = s[2*kk][:, 2:4]; a[:, 2] = s[2*kk+1][:, 0:2]; a[:, 3] = s[2*kk+1][:, 2:4]
        for dn in range(D // 16):
            bb = ldsm_x4(V, bt_addr(kk * 16, dn * 16), trans=True)
            acc[2*dn] = mma(acc[2*dn], a, bb[:, 0], bb[:, 1]); acc[2*dn+1] = mma(acc[2*dn+1], a, bb[:, 2], bb[:, 3])
    O = np.zeros((16, D))
    for dt in range(D // 8):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            O[g, dt*8+2*t:dt*8+2*t+2] = acc[dt, lane, 0:2]; O[g+8, dt*8+2*t:dt*8+2*t+2] = acc[dt, lane, 2:4]
    np.testing.assert_allclose(O, S @ V, atol=1e-12)


# ---- tiles ---------------------------------------------------------------------------------------

def visible(i, j, sk, off, causal, window):
    return j < sk and (not causal or j <= i + off) and (window < 0 or j >= i + off - window)

def key_range(q0, q1, sk, off, causal, window, tile):
    e = sk
    if causal: e = min(e, q1 - 1 + off + 1)
    b = 0
    if window >= 0: b = max(0, q0 + off - window)
    return b // tile * tile, e

def vis_mat(rows, cols, sk, off, causal, window):
    return np.array([[visible(i, j, sk, off, causal, window) for j in cols] for i in rows])

def fwd(Q, K, V, causal, window, scale, Br=64, Bc=64):
    sq, D = Q.shape; sk = K.shape[0]; off = sk - sq
    O = np.full((sq, D), np.nan); L = np.full(sq, np.nan)
    sl2 = scale * L2E
    for q0 in range(0, sq, Br):
        q1 = min(q0 + Br, sq)
        kb, ke = key_range(q0, q1, sk, off, causal, window, Bc)
        nt = (ke - kb + Bc - 1) // Bc if ke > kb else 0
        rows = np.arange(q0, q0 + Br)
        Qt = np.zeros((Br, D)); Qt[:q1 - q0] = Q[q0:q1]
        if nt == 0:
            O[q0:q1] = 0; L[q0:q1] = -np.inf; continue
        m = np.full(Br, -np.inf); l = np.zeros(Br); acc = np.zeros((Br, D))
        for it in range(nt):
            k0 = kb + it * Bc
            cols = np.arange(k0, k0 + Bc)
            Kt = np.zeros((Bc, D)); Vt = np.zeros((Bc, D)); n = max(0, min(Bc, sk - k0))
            Kt[:n] = K[k0:k0 + n]; Vt[:n] = V[k0:k0 + n]
            s = Qt @ Kt.T
            need = k0 + Bc > sk or (causal and k0 + Bc - 1 > q0 + off) or (window >= 0 and k0 < q0 + Br - 1 + off - window)
            vm = vis_mat(rows, cols, sk, off, causal, window)
            if not need: assert vm[: q1 - q0].all(), "need_mask false but a masked element exists"
            if need: s = np.where(vm, s, -np.inf)
            mx = np.maximum(m, s.max(1))
            mu = np.where(mx == -np.inf, 0.0, mx * sl2)
            with np.errstate(invalid="ignore"):
                corr = np.exp2(m * sl2 - mu)
            m = mx
            p = np.exp2(s * sl2 - mu[:, None])
            l = l * corr + p.sum(1); acc = acc * corr[:, None] + p @ Vt
        inv = np.where(l > 0, 1 / np.where(l > 0, l, 1), 0)
        O[q0:q1] = (acc * inv[:, None])[: q1 - q0]
        L[q0:q1] = np.where(l > 0, m * scale + np.log(np.where(l > 0, l, 1)), -np.inf)[: q1 - q0]
    return O, L

def bwd(Q, K, V, O, L, dO, causal, window, scale, BQk=32, BKk=64, BQq=64, BKq=32):
    sq, D = Q.shape; sk = K.shape[0]; off = sk - sq; sl2 = scale * L2E
    delta = (dO * O).sum(1)
    lse2 = np.where(L == -np.inf, np.inf, L * L2E)
    dK = np.full_like(K, np.nan); dV = np.full_like(V, np.nan); dQ = np.full_like(Q, np.nan)
    for k0 in range(0, sk, BKk):
        qt0, qt1 = 0, (sq + BQk - 1) // BQk
        if causal: qt0 = max(0, k0 - off) // BQk
        if window >= 0:
            last = k0 + BKk - 1 - off + window
            qt1 = 0 if last < 0 else min(qt1, last // BQk + 1)
        # skipped query tiles really see nothing of this key tile
        for qt in list(range(0, qt0)) + list(range(max(qt1, qt0), (sq + BQk - 1) // BQk)):
            rows = range(qt * BQk, min(sq, qt * BQk + BQk)); cols = range(k0, min(sk, k0 + BKk))
            assert not vis_mat(rows, cols, sk, off, causal, window).any(), ("skipped a visible dkdv tile", k0, qt)
        dk = np.zeros((BKk, D)); dv = np.zeros((BKk, D))
        Kt = np.zeros((BKk, D)); Vt = np.zeros((BKk, D)); n = min(BKk, sk - k0)
        Kt[:n] = K[k0:k0 + n]; Vt[:n] = V[k0:k0 + n]
        for qt in range(qt0, qt1):
            q0 = qt * BQk; nq = max(0, min(BQk, sq - q0))
            Qt = np.zeros((BQk, D)); dOt = np.zeros((BQk, D)); Qt[:nq] = Q[q0:q0 + nq]; dOt[:nq] = dO[q0:q0 + nq]
            ls = np.full(BQk, np.inf); ls[:nq] = lse2[q0:q0 + nq]; de = np.zeros(BQk); de[:nq] = delta[q0:q0 + nq]
            st = Kt @ Qt.T
            pt = np.exp2(st * sl2 - ls[None, :])
            vm = np.array([[visible(q0 + c, k0 + r, sk, off, causal, window) for c in range(BQk)] for r in range(BKk)])
            pt = np.where(vm, pt, 0.0)
            dpt = Vt @ dOt.T
            dst = pt * (dpt - de[None, :])
            dv += pt @ dOt; dk += dst @ Qt
        dK[k0:k0 + n] = (dk * scale)[:n]; dV[k0:k0 + n] = dv[:n]
    for q0 in range(0, sq, BQq):
        q1 = min(q0 + BQq, sq)
        kb, ke = key_range(q0, q1, sk, off, causal, window, BKq)
        nt = (ke - kb + BKq - 1) // BKq if ke > kb else 0
        Qt = np.zeros((BQq, D)); dOt = np.zeros((BQq, D)); Qt[:q1 - q0] = Q[q0:q1]; dOt[:q1 - q0] = dO[q0:q1]
        ls = np.full(BQq, np.inf); ls[:q1 - q0] = lse2[q0:q1]; de = np.zeros(BQq); de[:q1 - q0] = delta[q0:q1]
        dq = np.zeros((BQq, D))
        for it in range(nt):
            k0 = kb + it * BKq
            Kt = np.zeros((BKq, D)); Vt = np.zeros((BKq, D)); n = max(0, min(BKq, sk - k0))
            Kt[:n] = K[k0:k0 + n]; Vt[:n] = V[k0:k0 + n]
            s = Qt @ Kt.T; p = np.exp2(s * sl2 - ls[:, None])
            vm = vis_mat(range(q0, q0 + BQq), range(k0, k0 + BKq), sk, off, causal, window)
            p = np.where(vm, p, 0.0)
            dp = dOt @ Vt.T
            dq += (p * (dp - de[:, None])) @ Kt
        dQ[q0:q1] = (dq * scale)[: q1 - q0]
    return dQ, dK, dV

def ref(Q, K, V, dO, causal, window, scale):
    sq, sk = Q.shape[0], K.shape[0]; off = sk - sq
    vm = vis_mat(range(sq), range(sk), sk, off, causal, window)
    s = np.where(vm, scale * Q @ K.T, -np.inf)
    mx = s.max(1, keepdims=True); mx = np.where(np.isinf(mx), 0, mx)
    e = np.exp(s - mx); z = e.sum(1, keepdims=True)
    P = np.where(z > 0, e / np.where(z > 0, z, 1), 0)
    O = P @ V; L = np.where(z[:, 0] > 0, np.log(np.where(z[:, 0] > 0, z[:, 0], 1)) + mx[:, 0], -np.inf)
    dP = dO @ V.T; dV = P.T @ dO
    dS = P * (dP - (dP * P).sum(1, keepdims=True))
    return O, L, scale * dS @ K, scale * dS.T @ Q, dV



@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [-1, 0, 40])
def test_tiling_matches_dense(causal, window):
    rng = np.random.default_rng(1)
    for sq, sk in [(97, 97), (1, 130), (211, 97), (97, 211), (70, 45), (130, 1), (64, 64)]:
        D = 16
        scale = D ** -0.5
        Q, K, V, dO = (rng.standard_normal((n, D)) for n in (sq, sk, sk, sq))
        O, L = fwd(Q, K, V, causal, window, scale)
        Or, Lr, dQr, dKr, dVr = ref(Q, K, V, dO, causal, window, scale)
        assert not np.isnan(O).any() and not np.isnan(L).any()  # every row written
        np.testing.assert_allclose(O, Or, atol=1e-10)
        assert np.array_equal(np.isinf(L), np.isinf(Lr))
        np.testing.assert_allclose(L[~np.isinf(L)], Lr[~np.isinf(Lr)], atol=1e-10)
        dQ, dK, dV = bwd(Q, K, V, O, L, dO, causal, window, scale)
        for a, b in ((dQ, dQr), (dK, dKr), (dV, dVr)):
            assert not np.isnan(a).any()
            np.testing.assert_allclose(a, b, atol=1e-9)
