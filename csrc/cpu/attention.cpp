// attention.cpp — CPU fused attention, forward and backward (see attention.h for the maths).
// Compiled once per ISA (LF_ISA).
//
// float32 / bfloat16:
//   forward   K and V are packed (float32, head dim padded) into transposed key blocks
//             (D x Bc) and row blocks (Bc x D), stored as contiguous panels of 2 vectors'
//             width, the order the micro-kernel reads them; a block is packed by the first
//             task that needs it and shared. Each OpenMP task is one (batch, head, 64-row
//             query tile) -- or, for decode-like calls, one kv head with its G heads' rows
//             stacked: S = Q K^T per key block with a register-blocked FMA micro-kernel
//             (skipping the masked half of causal diagonal blocks), masks on boundary blocks
//             only, online softmax with a vector exp2 (Q is pre-scaled by scale * log2 e),
//             O += P V; then O / l and lse.
//   backward  FlashAttention-2 order: Di = rowsum(dO * O) first; the (kv head, key block)
//             work items are cut into `nchunks` contiguous chunks: one per kv head when
//             there are enough heads, else chunks of equal estimated cost. A chunk keeps
//             dK, dV of its key block in L1/L2 tiles and adds dQ into float32 accumulators:
//             a kv head whose items all sit in one chunk writes its own accumulator; a kv
//             head split across chunks gets one partial per chunk, summed afterwards in
//             chunk order. No atomics, so results are deterministic (and independent of
//             the thread count when chunks are whole heads).
// float64: plain row loops (the gradcheck path).
#include "cpu/attention.h"

#include <omp.h>

#include <cmath>
#include <cstring>

#include "cpu/attention_simd.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline float fmaxf_(float a, float b) { return a > b ? a : b; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One row of T (length D) -> float32 (length Dp, zero padded), times mul.
template <class T>
void load_row(const T* src, int64_t D, int64_t Dp, float mul, float* dst) {
  int64_t d = 0;
  const V vm = vset1(mul);
  for (; d + N <= D; d += N) vstore(dst + d, vmul(vload(src + d), vm));
  for (; d < D; ++d) dst[d] = to_f32(src[d]) * mul;
  for (; d < Dp; ++d) dst[d] = 0.f;
}

// dst[0:D] = src[0:D] * mul, float32 -> T.
template <class T>
void store_row(const float* src, int64_t D, float mul, T* dst) {
  int64_t d = 0;
  const V vm = vset1(mul);
  for (; d + N <= D; d += N) vstore(dst + d, vmul(vload(src + d), vm));
  for (; d < D; ++d) dst[d] = from_f32<T>(src[d] * mul);
}

// Packed B panels (see gemm in attention_simd.h) from rows src[0:jn][0:D] of T, zero padded:
//   pack_panels_t:    B(d, jj) = src[jj][d], K = Dp rows by Bc columns   (K^T, V^T)
//   pack_panels_rows: B(jj, d) = src[jj][d], K = Bc rows by Dp columns   (V, K)
template <class T>
void pack_panels_t(const T* src, int64_t jn, int64_t D, int64_t Dp, float* dst) {
  constexpr int64_t Bc = kAttnBc;
  if (jn < Bc || D < Dp) std::memset(dst, 0, sizeof(float) * Dp * Bc);
  for (int64_t jj = 0; jj < jn; ++jj) {
    const T* r = src + jj * D;
    float* col = dst + (jj / kNR) * Dp * kNR + jj % kNR;
    for (int64_t d = 0; d < D; ++d) col[d * kNR] = to_f32(r[d]);
  }
}

template <class T>
void pack_panels_rows(const T* src, int64_t jn, int64_t D, int64_t Dp, float* dst) {
  constexpr int64_t Bc = kAttnBc;
  for (int64_t p = 0; p < Dp / kNR; ++p) {
    float* panel = dst + p * Bc * kNR;
    const int64_t d0 = p * kNR, w = imin(kNR, D - d0);
    for (int64_t jj = 0; jj < jn; ++jj) {
      float* o = panel + jj * kNR;
      const T* r = src + jj * D + d0;
      int64_t c = 0;
      if (w == kNR)
        for (; c < kNR; c += N) vstore(o + c, vload(r + c));
      for (; c < w; ++c) o[c] = to_f32(r[c]);
      for (; c < kNR; ++c) o[c] = 0.f;
    }
    if (jn < Bc) std::memset(panel + jn * kNR, 0, sizeof(float) * (Bc - jn) * kNR);
  }
}

// Sets S[r][jj] = -inf where query row i0 + r % Mh may not see key j0 + jj (Mh: rows per
// head; several heads' rows are stacked when Mh < M).
void apply_mask(float* S, int64_t M, int64_t Mh, int64_t i0, int64_t j0, const AttnShape& s) {
  constexpr int64_t Bc = kAttnBc;
  const int64_t off = s.Sk - s.Sq;
  for (int64_t r = 0; r < M; ++r) {
    const int64_t ipos = i0 + r % Mh + off;
    int64_t hi = s.Sk - 1;
    if (s.causal) hi = imin(hi, ipos);
    const int64_t lo = s.window >= 0 ? ipos - s.window : INT64_MIN;
    float* row = S + r * Bc;
    for (int64_t jj = 0; jj < Bc; ++jj) {
      const int64_t j = j0 + jj;
      if (j > hi || j < lo) row[jj] = -INFINITY;
    }
  }
}

bool block_needs_mask(int64_t i0, int64_t M, int64_t j0, const AttnShape& s) {
  const int64_t off = s.Sk - s.Sq;
  constexpr int64_t Bc = kAttnBc;
  return j0 + Bc > s.Sk || (s.causal && j0 + Bc - 1 > i0 + off) ||
         (s.window >= 0 && j0 < i0 + M - 1 + off - s.window);
}

// ---- forward, float32 / bfloat16 ----------------------------------------------------
template <class T>
void fwd_vec(const AttnFwdArgs& a) {
  const AttnShape& s = a.s;
  constexpr int64_t Br = kAttnBr, Bc = kAttnBc;
  const int64_t D = s.D, Dp = round_up(D, kNR), G = s.Hq / s.Hkv, off = s.Sk - s.Sq;
  const int64_t nblk = (s.Sk + Bc - 1) / Bc, blk_f = Bc * Dp;
  const float c2 = static_cast<float>(s.scale) * kLog2e;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);
  float* lse = static_cast<float*>(a.lse);

  // K^T and V blocks are packed on first use into kv_pack, shared by all tasks: block state
  // 0 = not packed, 1 = being packed, 2 = ready. A task that finds a block being packed by
  // another thread packs a private copy instead of waiting, so the one parallel region has
  // no barrier inside. A stacked call (decode-like: all G heads' rows of a kv head fit one
  // tile) reads each block once anyway and always packs privately.
  const bool stacked = a.stack_heads;

  // 2. one task per (batch, head, query tile), the heaviest (last, when causal) tiles first;
  //    or, stacked, one per (batch, kv head) with its G heads' rows one after another.
  //    Row r of a task is flat row base + r (of (B, Hq, Sq)) at query position i0 + r % Mh.
  const int64_t nqt = (s.Sq + Br - 1) / Br, ntask = stacked ? s.B * s.Hkv : s.B * s.Hq * nqt;
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t task = 0; task < ntask; ++task) {
    int64_t bkv, i0, M, Mh, base;
    if (stacked) {
      bkv = task, i0 = 0, Mh = s.Sq, M = G * s.Sq, base = bkv * G * s.Sq;
    } else {
      const int64_t bh = task / nqt, qt = nqt - 1 - task % nqt;
      bkv = (bh / s.Hq) * s.Hkv + (bh % s.Hq) / G;
      i0 = qt * Br, M = Mh = imin(Br, s.Sq - i0), base = bh * s.Sq + i0;
    }
    float* ws = a.scratch + omp_get_thread_num() * a.scratch_per_thread;
    float* Qs = ws;
    float* O = Qs + Br * Dp;
    float* S = O + Br * Dp;
    float* m = S + Br * Bc;
    float* l = m + Br;
    float* kv_local = l + Br;  // a privately packed block's K^T and V panels
    for (int64_t r = 0; r < M; ++r) {
      load_row(q + (base + r) * D, D, Dp, c2, Qs + r * Dp);
      m[r] = -INFINITY;
      l[r] = 0.f;
    }
    std::memset(O, 0, sizeof(float) * M * Dp);
    const int64_t jlo = s.window >= 0 ? imax(0, i0 + off - s.window) : 0;
    const int64_t jhi = s.causal ? imin(s.Sk, i0 + Mh + off) : s.Sk;
    for (int64_t blk = jlo / Bc; jlo < jhi && blk * Bc < jhi; ++blk) {
      const int64_t j0 = blk * Bc;
      float* kt = stacked ? kv_local : a.kv_pack + (bkv * 2 * nblk + blk) * blk_f;
      float* vp = stacked ? kv_local + blk_f : kt + nblk * blk_f;
      int* state = stacked ? nullptr : a.pack_state + bkv * nblk + blk;
      int st = state ? __atomic_load_n(state, __ATOMIC_ACQUIRE) : 1;
      if (st != 2) {
        int expect = 0;
        const bool mine = st == 0 && __atomic_compare_exchange_n(state, &expect, 1, false, __ATOMIC_ACQ_REL,
                                                                 __ATOMIC_ACQUIRE);
        if (mine || expect != 2) {  // (expect == 2: another thread finished it meanwhile)
          if (!mine) kt = kv_local, vp = kv_local + blk_f;
          const int64_t jn = imin(Bc, s.Sk - j0);
          pack_panels_t(k + (bkv * s.Sk + j0) * D, jn, D, Dp, kt);
          pack_panels_rows(v + (bkv * s.Sk + j0) * D, jn, D, Dp, vp);
          if (mine) __atomic_store_n(state, 2, __ATOMIC_RELEASE);
        }
      }
      // Causal diagonal block: a row block sees only its first `lim` keys; skip the rest.
      const bool diag = !stacked && s.causal && j0 + Bc - 1 > i0 + off;
      if (diag) {
        for (int64_t i = 0; i < M; i += kMR) {
          const int64_t mr = imin(kMR, M - i), lim = i0 + i + mr + off - j0;
          if (lim > 0)
            gemm(mr, imin(Bc, round_up(lim, kNR)), Dp, Qs + i * Dp, Dp, 1, kt, kNR, Dp * kNR, S + i * Bc, Bc, false);
        }
      } else {
        gemm(M, Bc, Dp, Qs, Dp, 1, kt, kNR, Dp * kNR, S, Bc, false);
      }
      if (block_needs_mask(i0, Mh, j0, s)) apply_mask(S, M, Mh, i0, j0, s);
      for (int64_t r = 0; r < M; ++r) {
        float* row = S + r * Bc;
        V mx = vload(row);
        for (int64_t j = N; j < Bc; j += N) mx = vmax(mx, vload(row + j));
        const float mnew = fmaxf_(m[r], vhmax(mx));
        if (mnew == -INFINITY) {  // nothing visible yet in this row (or only NaN: poison l)
          for (int64_t j = 0; j < Bc; ++j)
            if (row[j] != row[j]) l[r] = row[j];
          std::memset(row, 0, sizeof(float) * Bc);
          continue;
        }
        const float alpha = m[r] == -INFINITY ? 0.f : exp2f(m[r] - mnew);
        const V vm = vset1(mnew);
        V sum = vzero();
        for (int64_t j = 0; j < Bc; j += N) {
          V p = vexp2(vsub(vload(row + j), vm));
          vstore(row + j, p);
          sum = vadd(sum, p);
        }
        l[r] = l[r] * alpha + vsum(sum);
        if (alpha != 1.f) {
          float* o = O + r * Dp;
          const V va = vset1(alpha);
          for (int64_t d = 0; d < Dp; d += N) vstore(o + d, vmul(vload(o + d), va));
        }
        m[r] = mnew;
      }
      if (diag) {
        for (int64_t i = 0; i < M; i += kMR) {
          const int64_t mr = imin(kMR, M - i), lim = i0 + i + mr + off - j0;
          if (lim > 0) gemm(mr, Dp, imin(Bc, lim), S + i * Bc, Bc, 1, vp, kNR, Bc * kNR, O + i * Dp, Dp, true);
        }
      } else {
        gemm(M, Dp, Bc, S, Bc, 1, vp, kNR, Bc * kNR, O, Dp, true);
      }
    }
    for (int64_t r = 0; r < M; ++r) {
      T* orow = out + a.o.at(s, base + r);
      if (l[r] > 0.f) {
        store_row(O + r * Dp, D, 1.f / l[r], orow);
        lse[base + r] = (m[r] + log2f(l[r])) * kLn2;
      } else {  // no visible key (or NaN): zeros, lse = -inf (NaN l propagates below)
        const float fill = l[r] == l[r] ? 0.f : l[r];
        for (int64_t d = 0; d < D; ++d) orow[d] = from_f32<T>(fill);
        lse[base + r] = l[r] == l[r] ? -INFINITY : l[r];
      }
    }
  }
}

// ---- backward, float32 / bfloat16 ---------------------------------------------------
struct BwdCtx {
  int64_t D, Dp, G, off, nblk;
  float c2;
};

// Rows [ilo, ihi) of every query head that see at least one key of block [j0, j0 + jn).
inline void block_rows(const AttnShape& s, int64_t j0, int64_t jn, int64_t* ilo, int64_t* ihi) {
  const int64_t off = s.Sk - s.Sq;
  *ilo = s.causal ? imax(0, j0 - off) : 0;
  *ihi = s.window >= 0 ? imin(s.Sq, j0 + jn - off + s.window) : s.Sq;
  if (*ilo > *ihi) *ihi = *ilo;
}

template <class T>
void bwd_block(const AttnBwdArgs& a, const BwdCtx& c, int64_t bkv, int64_t blk, float* dqa, float* ws) {
  const AttnShape& s = a.s;
  constexpr int64_t Br = kAttnBrB, Bc = kAttnBc;
  const int64_t D = c.D, Dp = c.Dp;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* dout = static_cast<const T*>(a.dout);
  const float* lse = static_cast<const float*>(a.lse);
  float* Kt = ws;
  float* Kb = Kt + Bc * Dp;
  float* Vt = Kb + Bc * Dp;
  float* dKa = Vt + Bc * Dp;
  float* dVa = dKa + Bc * Dp;
  float* Qs = dVa + Bc * Dp;
  float* dOp = Qs + Br * Dp;
  float* P = dOp + Br * Dp;
  float* dS = P + Br * Bc;
  float* lse2 = dS + Br * Bc;
  float* Dr = lse2 + Br;
  int64_t ncol[Br];  // keys computed per row (fewer on a causal diagonal block)

  const int64_t j0 = blk * Bc, jn = imin(Bc, s.Sk - j0);
  const T* kb = k + (bkv * s.Sk + j0) * D;
  const T* vb = v + (bkv * s.Sk + j0) * D;
  pack_panels_t(kb, jn, D, Dp, Kt);
  pack_panels_rows(kb, jn, D, Dp, Kb);
  pack_panels_t(vb, jn, D, Dp, Vt);
  std::memset(dKa, 0, sizeof(float) * 2 * Bc * Dp);
  int64_t ilo, ihi;
  block_rows(s, j0, jn, &ilo, &ihi);
  const int64_t b = bkv / s.Hkv, hkv = bkv % s.Hkv;
  for (int64_t g = 0; g < c.G; ++g) {
    const int64_t bh = b * s.Hq + hkv * c.G + g;
    for (int64_t i0 = ilo; i0 < ihi; i0 += Br) {
      const int64_t M = imin(Br, ihi - i0);
      for (int64_t r = 0; r < M; ++r) {
        const int64_t row = bh * s.Sq + i0 + r;
        load_row(q + row * D, D, Dp, c.c2, Qs + r * Dp);
        load_row(dout + a.dout_s.at(s, row), D, Dp, 1.f, dOp + r * Dp);
        const float L = lse[row];
        lse2[r] = L == -INFINITY ? INFINITY : L * kLog2e;  // an empty row gets p = 0
        Dr[r] = a.delta[row];
      }
      // Causal diagonal block: row r sees block keys jj <= r + shift only. S and dP are computed
      // for the first ncol[r] keys of its kMR-row group (the rest is masked to P = 0, dS = 0),
      // and the dV, dK, dQ products skip the all-zero corners, as the forward does.
      const int64_t shift = i0 + c.off - j0;
      const bool diag = s.causal && j0 + Bc - 1 > i0 + c.off;
      if (diag) {
        for (int64_t i = 0; i < M; i += kMR) {
          const int64_t mr = imin(kMR, M - i), nc = imin(Bc, round_up(i + mr + shift, kNR));
          gemm(mr, nc, Dp, Qs + i * Dp, Dp, 1, Kt, kNR, Dp * kNR, P + i * Bc, Bc, false);
          gemm(mr, nc, Dp, dOp + i * Dp, Dp, 1, Vt, kNR, Dp * kNR, dS + i * Bc, Bc, false);
          for (int64_t r = i; r < i + mr; ++r) ncol[r] = nc;
        }
      } else {
        gemm(M, Bc, Dp, Qs, Dp, 1, Kt, kNR, Dp * kNR, P, Bc, false);
        gemm(M, Bc, Dp, dOp, Dp, 1, Vt, kNR, Dp * kNR, dS, Bc, false);
        for (int64_t r = 0; r < M; ++r) ncol[r] = Bc;
      }
      if (block_needs_mask(i0, M, j0, s)) apply_mask(P, M, M, i0, j0, s);
      for (int64_t r = 0; r < M; ++r) {
        float* pr = P + r * Bc;
        const V vl = vset1(lse2[r]);
        for (int64_t j = 0; j < Bc; j += N) vstore(pr + j, vexp2(vsub(vload(pr + j), vl)));
      }
      for (int64_t r = 0; r < M; ++r) {
        float* pr = P + r * Bc;
        float* dr = dS + r * Bc;
        const V vd = vset1(Dr[r]);
        int64_t j = 0;
        for (; j < ncol[r]; j += N) vstore(dr + j, vmul(vload(pr + j), vsub(vload(dr + j), vd)));
        for (; j < Bc; ++j) dr[j] = 0.f;
      }
      float* dq_tile = dqa + (g * s.Sq + i0) * Dp;
      if (diag) {
        for (int64_t jc = 0; jc < Bc; jc += kMR) {  // key rows jc.. are seen by query rows >= r0
          const int64_t mr = imin(kMR, Bc - jc), r0 = imax(0, jc - shift);
          if (r0 >= M) break;
          gemm(mr, Dp, M - r0, P + r0 * Bc + jc, 1, Bc, dOp + r0 * Dp, Dp, kNR, dVa + jc * Dp, Dp, true);
          gemm(mr, Dp, M - r0, dS + r0 * Bc + jc, 1, Bc, Qs + r0 * Dp, Dp, kNR, dKa + jc * Dp, Dp, true);
        }
        for (int64_t i = 0; i < M; i += kMR) {  // query rows i.. see the first kc keys
          const int64_t mr = imin(kMR, M - i), kc = imin(Bc, i + mr + shift);
          gemm(mr, Dp, kc, dS + i * Bc, Bc, 1, Kb, kNR, Bc * kNR, dq_tile + i * Dp, Dp, true);
        }
      } else {
        gemm(Bc, Dp, M, P, 1, Bc, dOp, Dp, kNR, dVa, Dp, true);   // dV += P^T dO
        gemm(Bc, Dp, M, dS, 1, Bc, Qs, Dp, kNR, dKa, Dp, true);   // dK += dS^T Qs
        gemm(M, Dp, Bc, dS, Bc, 1, Kb, kNR, Bc * kNR, dq_tile, Dp, true);  // dQ += dS K
      }
    }
  }
  T* dk = static_cast<T*>(a.dk) + (bkv * s.Sk + j0) * D;
  T* dv = static_cast<T*>(a.dv) + (bkv * s.Sk + j0) * D;
  for (int64_t jj = 0; jj < jn; ++jj) {
    store_row(dKa + jj * Dp, D, kLn2, dk + jj * D);  // Qs carries scale * log2 e; dK needs scale
    store_row(dVa + jj * Dp, D, 1.f, dv + jj * D);
  }
}

// Di = rowsum(dO * O) - dlse for flat row r of (B, Hq, Sq).
template <class T>
void delta_row(const AttnBwdArgs& a, int64_t r) {
  const int64_t D = a.s.D;
  const T* x = static_cast<const T*>(a.out) + a.o.at(a.s, r);
  const T* y = static_cast<const T*>(a.dout) + a.dout_s.at(a.s, r);
  V acc = vzero();
  int64_t d = 0;
  for (; d + N <= D; d += N) acc = vfma(vload(x + d), vload(y + d), acc);
  float t = vsum(acc);
  for (; d < D; ++d) t += to_f32(x[d]) * to_f32(y[d]);
  a.delta[r] = t - (a.dlse ? static_cast<const float*>(a.dlse)[r] : 0.f);
}

template <class T>
void bwd_vec(const AttnBwdArgs& a) {
  const AttnShape& s = a.s;
  constexpr int64_t Bc = kAttnBc;
  BwdCtx c;
  c.D = s.D;
  c.Dp = round_up(s.D, kNR);
  c.G = s.Hq / s.Hkv;
  c.off = s.Sk - s.Sq;
  c.nblk = (s.Sk + Bc - 1) / Bc;
  c.c2 = static_cast<float>(s.scale) * kLog2e;
  const int64_t D = c.D, Dp = c.Dp, head_f = c.G * s.Sq * Dp;

  // 1. Di = rowsum(dO * O) - dlse (with whole-head chunks, each chunk does its own rows)
  const int nch = a.nchunks;
  const bool head_chunks = nch == s.B * s.Hkv;
  if (!head_chunks) {
#pragma omp parallel for num_threads(a.threads) schedule(static)
    for (int64_t r = 0; r < s.B * s.Hq * s.Sq; ++r) delta_row<T>(a, r);
  }

  // 2. cut the (kv head, key block) items into chunks of equal estimated cost
  const int64_t nitems = s.B * s.Hkv * c.nblk;
  if (head_chunks) {  // one chunk per kv head: no partial dq at all
    for (int ch = 0; ch <= nch; ++ch) a.chunk_bounds[ch] = ch * c.nblk;
  } else {
    int64_t total = 0;
    for (int64_t it = 0; it < nitems; ++it) {
      int64_t ilo, ihi, j0 = (it % c.nblk) * Bc;
      block_rows(s, j0, imin(Bc, s.Sk - j0), &ilo, &ihi);
      total += c.G * (ihi - ilo) + 8;
    }
    int64_t acc = 0, it = 0;
    a.chunk_bounds[0] = 0;
    for (int ch = 1; ch < nch; ++ch) {
      const int64_t target = (total * ch + nch - 1) / nch;
      while (it < nitems && acc < target) {
        int64_t ilo, ihi, j0 = (it % c.nblk) * Bc;
        block_rows(s, j0, imin(Bc, s.Sk - j0), &ilo, &ihi);
        acc += c.G * (ihi - ilo) + 8;
        ++it;
      }
      a.chunk_bounds[ch] = it;
    }
    a.chunk_bounds[nch] = nitems;
  }
  const int64_t* bounds = a.chunk_bounds;
  auto chunk_of = [&](int64_t it) {
    int ch = 0;
    while (bounds[ch + 1] <= it) ++ch;
    return ch;
  };
  auto shared_head = [&](int64_t bkv) { return chunk_of(bkv * c.nblk) != chunk_of(bkv * c.nblk + c.nblk - 1); };

  // 3. the chunks
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int ch = 0; ch < nch; ++ch) {
    float* ws = a.scratch + omp_get_thread_num() * a.scratch_per_thread;
    const int64_t first_bkv = bounds[ch] / c.nblk;
    if (head_chunks)
      for (int64_t r = first_bkv * c.G * s.Sq; r < (first_bkv + 1) * c.G * s.Sq; ++r) delta_row<T>(a, r);
    for (int64_t it = bounds[ch]; it < bounds[ch + 1]; ++it) {
      const int64_t bkv = it / c.nblk, blk = it % c.nblk;
      float* dqa = shared_head(bkv) ? a.dq_part + (int64_t{2} * ch + (bkv == first_bkv ? 0 : 1)) * head_f
                                    : a.dq_acc + bkv * head_f;
      if (it == bounds[ch] || blk == 0) std::memset(dqa, 0, sizeof(float) * head_f);
      bwd_block<T>(a, c, bkv, blk, dqa, ws);
    }
    if (head_chunks)  // this head's dq is complete
      for (int64_t r = 0; r < c.G * s.Sq; ++r)
        store_row(a.dq_acc + first_bkv * head_f + r * Dp, D, static_cast<float>(s.scale),
                  static_cast<T*>(a.dq) + (first_bkv * c.G * s.Sq + r) * D);
  }
  if (head_chunks) return;

  // 4. dq = scale * (accumulator, or the chunks' partials summed in chunk order)
  const float scale = static_cast<float>(s.scale);
  T* dq = static_cast<T*>(a.dq);
  const int64_t nbkv = s.B * s.Hkv, rows_per = c.G * s.Sq;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t t = 0; t < nbkv * rows_per; ++t) {
    const int64_t bkv = t / rows_per, r = t % rows_per;
    T* dst = dq + (bkv * rows_per + r) * D;
    if (!shared_head(bkv)) {
      store_row(a.dq_acc + bkv * head_f + r * Dp, D, scale, dst);
      continue;
    }
    float* tmp = a.scratch + omp_get_thread_num() * a.scratch_per_thread;
    std::memset(tmp, 0, sizeof(float) * Dp);
    const int c0 = chunk_of(bkv * c.nblk), c1 = chunk_of(bkv * c.nblk + c.nblk - 1);
    for (int ch = c0; ch <= c1; ++ch) {
      if (bounds[ch] == bounds[ch + 1]) continue;
      const int slot = bkv == bounds[ch] / c.nblk ? 0 : 1;
      const float* src = a.dq_part + (int64_t{2} * ch + slot) * head_f + r * Dp;
      for (int64_t d = 0; d < Dp; d += N) vstore(tmp + d, vadd(vload(tmp + d), vload(src + d)));
    }
    store_row(tmp, D, scale, dst);
  }
}

// ---- float64: plain loops -------------------------------------------------------------
inline void row_range(const AttnShape& s, int64_t i, int64_t* lo, int64_t* hi) {
  const int64_t ipos = i + s.Sk - s.Sq;
  *lo = s.window >= 0 ? imax(0, ipos - s.window) : 0;
  *hi = s.causal ? imin(s.Sk - 1, ipos) : s.Sk - 1;
}

inline double dot64(const double* x, const double* y, int64_t D) {
  double t = 0;
  for (int64_t d = 0; d < D; ++d) t += x[d] * y[d];
  return t;
}

void fwd_f64(const AttnFwdArgs& a) {
  const AttnShape& s = a.s;
  const int64_t D = s.D, G = s.Hq / s.Hkv, rows = s.B * s.Hq * s.Sq;
  const double* q = static_cast<const double*>(a.q);
  const double* k = static_cast<const double*>(a.k);
  const double* v = static_cast<const double*>(a.v);
  double* out = static_cast<double*>(a.out);
  double* lse = static_cast<double*>(a.lse);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    double* sc = reinterpret_cast<double*>(a.scratch + omp_get_thread_num() * a.scratch_per_thread);
    const int64_t bh = r / s.Sq, i = r % s.Sq, bkv = (bh / s.Hq) * s.Hkv + (bh % s.Hq) / G;
    const double* qi = q + r * D;
    const double* kh = k + bkv * s.Sk * D;
    const double* vh = v + bkv * s.Sk * D;
    double* o = out + a.o.at(s, r);
    int64_t lo, hi;
    row_range(s, i, &lo, &hi);
    for (int64_t d = 0; d < D; ++d) o[d] = 0;
    if (lo > hi) {
      lse[r] = -INFINITY;
      continue;
    }
    double mx = -INFINITY;
    for (int64_t j = lo; j <= hi; ++j) {
      sc[j] = s.scale * dot64(qi, kh + j * D, D);
      mx = sc[j] > mx ? sc[j] : mx;
    }
    double l = 0;
    for (int64_t j = lo; j <= hi; ++j) {
      const double p = std::exp(sc[j] - mx);
      l += p;
      for (int64_t d = 0; d < D; ++d) o[d] += p * vh[j * D + d];
    }
    for (int64_t d = 0; d < D; ++d) o[d] /= l;
    lse[r] = mx + std::log(l);
  }
}

void bwd_f64(const AttnBwdArgs& a) {
  const AttnShape& s = a.s;
  const int64_t D = s.D, G = s.Hq / s.Hkv, nbkv = s.B * s.Hkv;
  const double* q = static_cast<const double*>(a.q);
  const double* k = static_cast<const double*>(a.k);
  const double* v = static_cast<const double*>(a.v);
  const double* o = static_cast<const double*>(a.out);
  const double* dout = static_cast<const double*>(a.dout);
  const double* lse = static_cast<const double*>(a.lse);
  const double* dlse = static_cast<const double*>(a.dlse);
  double* dq = static_cast<double*>(a.dq);
  double* dk = static_cast<double*>(a.dk);
  double* dv = static_cast<double*>(a.dv);
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t bkv = 0; bkv < nbkv; ++bkv) {
    double* pr = reinterpret_cast<double*>(a.scratch + omp_get_thread_num() * a.scratch_per_thread);
    double* dsr = pr + s.Sk;
    const double* kh = k + bkv * s.Sk * D;
    const double* vh = v + bkv * s.Sk * D;
    double* dkh = dk + bkv * s.Sk * D;
    double* dvh = dv + bkv * s.Sk * D;
    for (int64_t x = 0; x < s.Sk * D; ++x) dkh[x] = dvh[x] = 0;
    const int64_t b = bkv / s.Hkv, hkv = bkv % s.Hkv;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t bh = b * s.Hq + hkv * G + g;
      for (int64_t i = 0; i < s.Sq; ++i) {
        const int64_t r = bh * s.Sq + i;
        const double* qi = q + r * D;
        const double* doi = dout + a.dout_s.at(s, r);
        double* dqi = dq + r * D;
        for (int64_t d = 0; d < D; ++d) dqi[d] = 0;
        int64_t lo, hi;
        row_range(s, i, &lo, &hi);
        if (lo > hi) continue;
        const double Di = dot64(doi, o + a.o.at(s, r), D) - (dlse ? dlse[r] : 0.0);
        for (int64_t j = lo; j <= hi; ++j) {
          const double p = std::exp(s.scale * dot64(qi, kh + j * D, D) - lse[r]);
          pr[j] = p;
          dsr[j] = p * (dot64(doi, vh + j * D, D) - Di);
        }
        for (int64_t j = lo; j <= hi; ++j) {
          const double ds = dsr[j] * s.scale, p = pr[j];
          for (int64_t d = 0; d < D; ++d) {
            dqi[d] += ds * kh[j * D + d];
            dkh[j * D + d] += ds * qi[d];
            dvh[j * D + d] += p * doi[d];
          }
        }
      }
    }
  }
}

}  // namespace

void attention_fwd(const AttnFwdArgs& a) {
  switch (a.dtype) {
    case DType::f32: fwd_vec<float>(a); break;
    case DType::bf16: fwd_vec<bf16>(a); break;
    case DType::f64: fwd_f64(a); break;
    default: break;  // the adapter (csrc/attention.cpp) has checked the dtype
  }
}

void attention_bwd(const AttnBwdArgs& a) {
  switch (a.dtype) {
    case DType::f32: bwd_vec<float>(a); break;
    case DType::bf16: bwd_vec<bf16>(a); break;
    case DType::f64: bwd_f64(a); break;
    default: break;  // the adapter (csrc/attention.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
