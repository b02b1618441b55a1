// paged_kv.cpp — CPU kernels of the paged KV cache: append, gather and decode
// attention (see paged_kv.h for layouts and maths). Compiled once per ISA (LF_ISA).
//
// Decode attention, per work item (sequence b, kv heads [h0, h1), pages [u0, u1)):
//   qs[h][g] = scale * q[b, h*G + g]                 (fp32, G rows per kv head)
//   for each step of <= 32 consecutive tokens (row addresses looked up in the table):
//     S[h][g][t] = qs[h][g] . K[t, h]   each K row is loaded once for all G rows
//     m' = max(m, max_t S), alpha = e^(m - m'), P = e^(S - m')
//     l = l * alpha + sum_t P;  acc = acc * alpha + sum_t P[t] V[t, h]
//   out = acc / l, or (acc, m, l) to the partial buffer when the sequence is split.
// Paged items take all kv heads and walk each step in slices of 8 tokens across the
// heads: a token slot's rows for all heads are adjacent in a page, so the reads go
// through each 4 KiB page in address order. One kv head per item reading rows
// n_kv_heads * head_dim apart was measured 1.3-1.7x slower (fp32, 16 x 1024 tokens).
#include "cpu/paged_kv.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/paged_kv_simd.h"
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {
namespace {

constexpr int kChunk = 32;   // tokens per softmax step (a multiple of every N)
constexpr int kSlice = 8;    // paged: tokens per pass across the kv heads (measured best of 2..32)
constexpr int64_t kPad = 16;  // q and acc rows are padded to a multiple of 16 floats
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- append / gather: row copies ---------------------------------------------------
void append_impl(const PagedAppendArgs& a) {
  const int64_t rb = a.row * a.elem_size;  // bytes per token
  const int64_t bs = a.block_size;
  char* kp = static_cast<char*>(a.k_pool);
  char* vp = static_cast<char*>(a.v_pool);
  const bool big = a.batch * a.n_new * rb >= (int64_t{1} << 20);
#pragma omp parallel for num_threads(a.threads) schedule(static) if (big)
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t cnt = a.counts ? a.counts[b] : a.n_new;
    const int64_t start = a.seq_lens[b];
    const char* ks = static_cast<const char*>(a.k_new) + b * a.n_new * rb;
    const char* vs = static_cast<const char*>(a.v_new) + b * a.n_new * rb;
    for (int64_t i = 0; i < cnt;) {
      const int64_t pos = start + i, slot = pos % bs;
      const int64_t blk = a.table[b * a.max_blocks + pos / bs];
      const int64_t run = cnt - i < bs - slot ? cnt - i : bs - slot;
      std::memcpy(kp + (blk * bs + slot) * rb, ks + i * rb, run * rb);
      std::memcpy(vp + (blk * bs + slot) * rb, vs + i * rb, run * rb);
      i += run;
    }
  }
}

void gather_impl(const PagedGatherArgs& a) {
  const int64_t rb = a.row * a.elem_size;
  const int64_t bs = a.block_size;
  const int64_t per_seq = (a.max_len + bs - 1) / bs;
  const char* pool = static_cast<const char*>(a.pool);
  char* out = static_cast<char*>(a.out);
  const bool big = a.batch * a.max_len * rb >= (int64_t{1} << 20);
#pragma omp parallel for num_threads(a.threads) schedule(static) if (big)
  for (int64_t it = 0; it < a.batch * per_seq; ++it) {
    const int64_t b = it / per_seq, j = it % per_seq;
    const int64_t p0 = j * bs, p1 = p0 + bs < a.max_len ? p0 + bs : a.max_len;
    const int64_t len = a.seq_lens[b];
    const int64_t valid_end = len < p1 ? (len > p0 ? len : p0) : p1;
    char* dst = out + (b * a.max_len + p0) * rb;
    if (valid_end > p0) {
      const int64_t blk = a.table[b * a.max_blocks + j];
      std::memcpy(dst, pool + blk * bs * rb, (valid_end - p0) * rb);
    }
    if (p1 > valid_end) std::memset(dst + (valid_end - p0) * rb, 0, (p1 - valid_end) * rb);
  }
}

// ---- decode attention: micro-kernels ---------------------------------------------------
// S[g][t] = q[g] . k[t] for GB query rows (stride qs) and n tokens (row t at kr[t] + off),
// TT tokens at a time so that every q load feeds TT FMAs and every k load GB FMAs.
template <int GB, int TT, class T>
inline void qk_rows(const float* q, int64_t qs, const T* const* kr, int64_t off, int n, int64_t D, float* s,
                    int64_t ss) {
  const int64_t Dv = D - D % N;
  int t = 0;
  for (; t + TT <= n; t += TT) {
    V acc[TT][GB];
    for (int u = 0; u < TT; ++u)
      for (int g = 0; g < GB; ++g) acc[u][g] = vzero();
    for (int64_t d = 0; d < Dv; d += N) {
      V x[TT];
      for (int u = 0; u < TT; ++u) x[u] = vload(kr[t + u] + off + d);
      for (int g = 0; g < GB; ++g) {
        const V qv = vload(q + g * qs + d);
        for (int u = 0; u < TT; ++u) acc[u][g] = vfma(qv, x[u], acc[u][g]);
      }
    }
    for (int u = 0; u < TT; ++u) {
      const T* k = kr[t + u] + off;
      for (int g = 0; g < GB; ++g) {
        float r = vsum(acc[u][g]);
        for (int64_t d = Dv; d < D; ++d) r += q[g * qs + d] * to_f32(k[d]);
        s[g * ss + t + u] = r;
      }
    }
  }
  for (; t < n; ++t) {
    const T* k = kr[t] + off;
    V acc[GB];
    for (int g = 0; g < GB; ++g) acc[g] = vzero();
    for (int64_t d = 0; d < Dv; d += N) {
      const V x = vload(k + d);
      for (int g = 0; g < GB; ++g) acc[g] = vfma(vload(q + g * qs + d), x, acc[g]);
    }
    for (int g = 0; g < GB; ++g) {
      float r = vsum(acc[g]);
      for (int64_t d = Dv; d < D; ++d) r += q[g * qs + d] * to_f32(k[d]);
      s[g * ss + t] = r;
    }
  }
}

// acc[g] = acc[g] * alpha[g] + sum_t p[g][t] v[t] for GB rows; two vectors of the
// head dimension per pass so that each broadcast of p feeds two FMAs.
template <int GB, class T>
inline void pv_rows(const float* p, int64_t ps, const float* alpha, const T* const* vr, int64_t off, int n,
                    int64_t D, float* acc, int64_t as) {
  const int64_t Dv = D - D % N;
  int64_t d = 0;
  for (; d + 2 * N <= Dv; d += 2 * N) {
    V o0[GB], o1[GB];
    for (int g = 0; g < GB; ++g) {
      const V al = vset1(alpha[g]);
      o0[g] = vmul(vload(acc + g * as + d), al);
      o1[g] = vmul(vload(acc + g * as + d + N), al);
    }
    for (int t = 0; t < n; ++t) {
      const T* v = vr[t] + off + d;
      const V x0 = vload(v), x1 = vload(v + N);
      for (int g = 0; g < GB; ++g) {
        const V pv = vset1(p[g * ps + t]);
        o0[g] = vfma(pv, x0, o0[g]);
        o1[g] = vfma(pv, x1, o1[g]);
      }
    }
    for (int g = 0; g < GB; ++g) {
      vstore(acc + g * as + d, o0[g]);
      vstore(acc + g * as + d + N, o1[g]);
    }
  }
  for (; d < Dv; d += N) {
    V o[GB];
    for (int g = 0; g < GB; ++g) o[g] = vmul(vload(acc + g * as + d), vset1(alpha[g]));
    for (int t = 0; t < n; ++t) {
      const V x = vload(vr[t] + off + d);
      for (int g = 0; g < GB; ++g) o[g] = vfma(vset1(p[g * ps + t]), x, o[g]);
    }
    for (int g = 0; g < GB; ++g) vstore(acc + g * as + d, o[g]);
  }
  for (; d < D; ++d) {
    for (int g = 0; g < GB; ++g) {
      float o = acc[g * as + d] * alpha[g];
      for (int t = 0; t < n; ++t) o += p[g * ps + t] * to_f32(vr[t][off + d]);
      acc[g * as + d] = o;
    }
  }
}

// Per-thread scratch: q rows, acc rows (G x Dp each), scores (G x kChunk), m, l, alpha.
struct Scratch {
  float *q, *acc, *s, *m, *l, *alpha;
};

inline Scratch carve(float* base, int64_t G, int64_t Dp) {
  Scratch sc;
  sc.q = base;
  sc.acc = sc.q + G * Dp;
  sc.s = sc.acc + G * Dp;
  sc.m = sc.s + G * kChunk;
  sc.l = sc.m + G;
  sc.alpha = sc.l + G;
  return sc;
}

// One softmax step over n <= kChunk tokens for `heads` kv heads (G q rows each): K/V row
// t of local head j is at kr[t] + off0 + j * hs (vr likewise). Tokens go in slices of
// `slice` across all heads, so that the rows of one token slot (adjacent in a page) are
// read close together in time.
template <class T>
void attend_step(const Scratch& sc, int64_t heads, int64_t G, int64_t Dp, int64_t D, const T* const* kr,
                 const T* const* vr, int64_t off0, int64_t hs, int n, int slice) {
  for (int i = 0; i < n; i += slice) {
    const int ni = n - i < slice ? n - i : slice;
    for (int64_t j = 0; j < heads; ++j) {
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t r = j * G + g0;
        const float* q = sc.q + r * Dp;
        float* s = sc.s + r * kChunk + i;
        switch (G - g0 < 4 ? G - g0 : 4) {
          case 1: qk_rows<1, 4>(q, Dp, kr + i, off0 + j * hs, ni, D, s, kChunk); break;
          case 2: qk_rows<2, 4>(q, Dp, kr + i, off0 + j * hs, ni, D, s, kChunk); break;
          case 3: qk_rows<3, 2>(q, Dp, kr + i, off0 + j * hs, ni, D, s, kChunk); break;
          default: qk_rows<4, 2>(q, Dp, kr + i, off0 + j * hs, ni, D, s, kChunk); break;
        }
      }
    }
  }
  for (int64_t r = 0; r < heads * G; ++r) {
    float* s = sc.s + r * kChunk;
    float mb = s[0];
    for (int t = 1; t < n; ++t) mb = s[t] > mb ? s[t] : mb;
    const float m_old = sc.m[r];
    const float m_new = mb > m_old ? mb : m_old;
    // m_old = -inf: nothing accumulated yet (acc and l are 0).
    sc.alpha[r] = m_old == kNegInf ? 0.f : std::exp(m_old - m_new);
    const V mv = vset1(m_new);
    for (int t = 0; t < n; t += N) vstore(s + t, vexp(vsub(vload(s + t), mv)));  // lanes >= n unused
    float sum = 0.f;
    for (int t = 0; t < n; ++t) sum += s[t];
    sc.l[r] = sc.l[r] * sc.alpha[r] + sum;
    sc.m[r] = m_new;
  }
  static const float kOnes[4] = {1.f, 1.f, 1.f, 1.f};
  for (int i = 0; i < n; i += slice) {
    const int ni = n - i < slice ? n - i : slice;
    for (int64_t j = 0; j < heads; ++j) {
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t r = j * G + g0;
        const float* p = sc.s + r * kChunk + i;
        const float* al = i == 0 ? sc.alpha + r : kOnes;  // rescale once per step
        float* acc = sc.acc + r * Dp;
        switch (G - g0 < 4 ? G - g0 : 4) {
          case 1: pv_rows<1>(p, kChunk, al, vr + i, off0 + j * hs, ni, D, acc, Dp); break;
          case 2: pv_rows<2>(p, kChunk, al, vr + i, off0 + j * hs, ni, D, acc, Dp); break;
          case 3: pv_rows<3>(p, kChunk, al, vr + i, off0 + j * hs, ni, D, acc, Dp); break;
          default: pv_rows<4>(p, kChunk, al, vr + i, off0 + j * hs, ni, D, acc, Dp); break;
        }
      }
    }
  }
}

// One work item. In the paged layout an item covers every kv head, kChunk tokens at a
// time: the pages' rows are then read across all heads within a short window, so the
// reads stay sequential within each 4 KiB page, where hardware prefetchers work.
template <class T>
void attend_item(const DecodeAttnArgs& a, const DecodeWorkItem& w, float* scratch) {
  const int64_t G = a.n_heads / a.n_kv_heads, D = a.head_dim, Dp = (D + kPad - 1) / kPad * kPad;
  const int64_t rows = (w.h1 - w.h0) * G;
  const Scratch sc = carve(scratch, rows, Dp);
  const T* q = static_cast<const T*>(a.q) + (w.b * a.n_heads + w.h0 * G) * D;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < D; ++d) sc.q[r * Dp + d] = to_f32(q[r * D + d]) * a.scale;
    for (int64_t d = 0; d < Dp; ++d) sc.acc[r * Dp + d] = 0.f;
    sc.m[r] = kNegInf;
    sc.l[r] = 0.f;
  }
  // Tokens [t0, t1) in steps of kChunk: the step's row addresses (for kv head 0 in the
  // paged layout, for kv head h0 in the contiguous one), then every kv head of the item.
  const int64_t len = a.seq_lens[w.b];
  const int64_t t0 = w.u0 * a.chunk, t1 = w.u1 * a.chunk < len ? w.u1 * a.chunk : len;
  const T* kbase = static_cast<const T*>(a.k);
  const T* vbase = static_cast<const T*>(a.v);
  const T* kr[kChunk];
  const T* vr[kChunk];
  int64_t head_stride;  // elements between the rows of kv heads h and h + 1
  if (a.table) {
    head_stride = D;
  } else {
    head_stride = a.max_len * D;
    kbase += (w.b * a.n_kv_heads + w.h0) * a.max_len * D;
    vbase += (w.b * a.n_kv_heads + w.h0) * a.max_len * D;
  }
  const int32_t* blocks = a.table ? a.table + w.b * a.max_blocks : nullptr;
  const int64_t row = a.n_kv_heads * D;  // paged: elements per token slot
  for (int64_t t = t0; t < t1; t += kChunk) {
    const int n = static_cast<int>(t1 - t < kChunk ? t1 - t : kChunk);
    for (int i = 0; i < n; ++i) {
      const int64_t p = t + i;
      const int64_t e = blocks ? (static_cast<int64_t>(blocks[p / a.block_size]) * a.block_size + p % a.block_size) * row
                               : p * D;
      kr[i] = kbase + e;
      vr[i] = vbase + e;
    }
    attend_step<T>(sc, w.h1 - w.h0, G, Dp, D, kr, vr, blocks ? w.h0 * head_stride : 0, head_stride, n,
                   w.h1 - w.h0 > 1 ? kSlice : kChunk);
  }
  const bool direct = a.splits[w.b] == 1;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t hq = w.h0 * G + r;
    const float* acc = sc.acc + r * Dp;
    if (direct) {
      T* o = static_cast<T*>(a.out) + (w.b * a.n_heads + hq) * D;
      const float inv = sc.l[r] > 0.f ? 1.f / sc.l[r] : 0.f;
      for (int64_t d = 0; d < D; ++d) o[d] = from_f32<T>(acc[d] * inv);
    } else {
      float* part = a.partial + ((w.b * a.n_heads + hq) * a.max_splits + w.s) * (D + 2);
      for (int64_t d = 0; d < D; ++d) part[d] = acc[d];
      part[D] = sc.m[r];
      part[D + 1] = sc.l[r];
    }
  }
}

// Log-sum-exp merge of the S partial results of one (sequence, q head).
template <class T>
void merge_row(const DecodeAttnArgs& a, int64_t row, int64_t S) {
  const int64_t D = a.head_dim;
  const float* part = a.partial + row * a.max_splits * (D + 2);
  T* o = static_cast<T*>(a.out) + row * D;
  float M = kNegInf;
  for (int64_t s = 0; s < S; ++s) {
    const float* p = part + s * (D + 2);
    if (p[D + 1] > 0.f && p[D] > M) M = p[D];
  }
  if (M == kNegInf) {  // no keys (length 0)
    for (int64_t d = 0; d < D; ++d) o[d] = from_f32<T>(0.f);
    return;
  }
  float w[256];  // S <= 256 (the adapter caps it)
  float L = 0.f;
  for (int64_t s = 0; s < S; ++s) {
    const float* p = part + s * (D + 2);
    w[s] = p[D + 1] > 0.f ? std::exp(p[D] - M) : 0.f;
    L += p[D + 1] * w[s];
  }
  const float inv = 1.f / L;
  for (int64_t d = 0; d < D; ++d) {
    float acc = 0.f;
    for (int64_t s = 0; s < S; ++s)
      if (w[s] != 0.f) acc += part[s * (D + 2) + d] * w[s];
    o[d] = from_f32<T>(acc * inv);
  }
}

template <class T>
void decode_impl(const DecodeAttnArgs& a) {
  const int64_t rows = a.batch * a.n_heads;
#pragma omp parallel num_threads(a.threads)
  {
    float* scratch = a.scratch + omp_get_thread_num() * a.scratch_floats;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < a.n_items; ++it) attend_item<T>(a, a.items[it], scratch);
    if (a.max_splits > 1) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t S = a.splits[r / a.n_heads];
        if (S > 1) merge_row<T>(a, r, S);
      }
    }
  }
}

}  // namespace

void paged_kv_append(const PagedAppendArgs& a) { append_impl(a); }

void paged_kv_gather(const PagedGatherArgs& a) { gather_impl(a); }

void decode_attention(const DecodeAttnArgs& a) {
  switch (a.dtype) {
    case DType::f32: decode_impl<float>(a); break;
    case DType::bf16: decode_impl<bf16>(a); break;
    default: break;  // the adapter (csrc/paged_kv.cpp) has checked the dtype
  }
}

}  // namespace lf::cpu::LF_ISA
