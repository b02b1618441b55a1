// paged_kv.cpp — CPU kernels of the paged KV cache: append, gather and decode
// attention (see paged_kv.h for layouts and maths). Compiled once per ISA (LF_ISA).
//
// Decode attention, per work item (sequence b, kv head h, split s):
//   qs[g]  = scale * q[b, h*G + g]                   (fp32, G rows)
//   for each chunk of <= 32 consecutive tokens of a page:
//     S[g][t] = qs[g] . K[t]        each K row is loaded once for all G rows
//     m' = max(m, max_t S), alpha = e^(m - m'), P = e^(S - m')
//     l = l * alpha + sum_t P;  acc[g] = acc[g] * alpha + sum_t P[g][t] V[t]
//   out = acc / l, or (acc, m, l) to the partial buffer when the length is split.
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
// S[g][t] = q[g] . k[t] for GB query rows (stride qs) and n tokens (row stride ks),
// TT tokens at a time so that every q load feeds TT FMAs and every k load GB FMAs.
template <int GB, int TT, class T>
inline void qk_rows(const float* q, int64_t qs, const T* k, int64_t ks, int n, int64_t D, float* s, int64_t ss) {
  const int64_t Dv = D - D % N;
  int t = 0;
  for (; t + TT <= n; t += TT) {
    V acc[TT][GB];
    for (int u = 0; u < TT; ++u)
      for (int g = 0; g < GB; ++g) acc[u][g] = vzero();
    for (int64_t d = 0; d < Dv; d += N) {
      V x[TT];
      for (int u = 0; u < TT; ++u) x[u] = vload(k + (t + u) * ks + d);
      for (int g = 0; g < GB; ++g) {
        const V qv = vload(q + g * qs + d);
        for (int u = 0; u < TT; ++u) acc[u][g] = vfma(qv, x[u], acc[u][g]);
      }
    }
    for (int u = 0; u < TT; ++u) {
      const T* kr = k + (t + u) * ks;
      for (int g = 0; g < GB; ++g) {
        float r = vsum(acc[u][g]);
        for (int64_t d = Dv; d < D; ++d) r += q[g * qs + d] * to_f32(kr[d]);
        s[g * ss + t + u] = r;
      }
    }
  }
  for (; t < n; ++t) {
    const T* kr = k + t * ks;
    V acc[GB];
    for (int g = 0; g < GB; ++g) acc[g] = vzero();
    for (int64_t d = 0; d < Dv; d += N) {
      const V x = vload(kr + d);
      for (int g = 0; g < GB; ++g) acc[g] = vfma(vload(q + g * qs + d), x, acc[g]);
    }
    for (int g = 0; g < GB; ++g) {
      float r = vsum(acc[g]);
      for (int64_t d = Dv; d < D; ++d) r += q[g * qs + d] * to_f32(kr[d]);
      s[g * ss + t] = r;
    }
  }
}

// acc[g] = acc[g] * alpha[g] + sum_t p[g][t] v[t] for GB rows; two vectors of the
// head dimension per pass so that each broadcast of p feeds two FMAs.
template <int GB, class T>
inline void pv_rows(const float* p, int64_t ps, const float* alpha, const T* v, int64_t vs, int n, int64_t D,
                    float* acc, int64_t as) {
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
      const V x0 = vload(v + t * vs + d), x1 = vload(v + t * vs + d + N);
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
      const V x = vload(v + t * vs + d);
      for (int g = 0; g < GB; ++g) o[g] = vfma(vset1(p[g * ps + t]), x, o[g]);
    }
    for (int g = 0; g < GB; ++g) vstore(acc + g * as + d, o[g]);
  }
  for (; d < D; ++d) {
    for (int g = 0; g < GB; ++g) {
      float o = acc[g * as + d] * alpha[g];
      for (int t = 0; t < n; ++t) o += p[g * ps + t] * to_f32(v[t * vs + d]);
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

// One softmax step over n <= kChunk tokens whose K/V rows start at k, v (row stride rs).
template <class T>
void attend_chunk(const Scratch& sc, int64_t G, int64_t Dp, int64_t D, const T* k, const T* v, int64_t rs, int n) {
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const float* q = sc.q + g0 * Dp;
    float* s = sc.s + g0 * kChunk;
    switch (G - g0 < 4 ? G - g0 : 4) {
      case 1: qk_rows<1, 4>(q, Dp, k, rs, n, D, s, kChunk); break;
      case 2: qk_rows<2, 4>(q, Dp, k, rs, n, D, s, kChunk); break;
      case 3: qk_rows<3, 2>(q, Dp, k, rs, n, D, s, kChunk); break;
      default: qk_rows<4, 2>(q, Dp, k, rs, n, D, s, kChunk); break;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = sc.s + g * kChunk;
    float mb = s[0];
    for (int t = 1; t < n; ++t) mb = s[t] > mb ? s[t] : mb;
    const float m_old = sc.m[g];
    const float m_new = mb > m_old ? mb : m_old;
    // m_old = -inf: nothing accumulated yet (acc and l are 0).
    sc.alpha[g] = m_old == kNegInf ? 0.f : std::exp(m_old - m_new);
    const V mv = vset1(m_new);
    for (int t = 0; t < n; t += N) vstore(s + t, vexp(vsub(vload(s + t), mv)));  // lanes >= n unused
    float sum = 0.f;
    for (int t = 0; t < n; ++t) sum += s[t];
    sc.l[g] = sc.l[g] * sc.alpha[g] + sum;
    sc.m[g] = m_new;
  }
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const float* p = sc.s + g0 * kChunk;
    float* acc = sc.acc + g0 * Dp;
    switch (G - g0 < 4 ? G - g0 : 4) {
      case 1: pv_rows<1>(p, kChunk, sc.alpha + g0, v, rs, n, D, acc, Dp); break;
      case 2: pv_rows<2>(p, kChunk, sc.alpha + g0, v, rs, n, D, acc, Dp); break;
      case 3: pv_rows<3>(p, kChunk, sc.alpha + g0, v, rs, n, D, acc, Dp); break;
      default: pv_rows<4>(p, kChunk, sc.alpha + g0, v, rs, n, D, acc, Dp); break;
    }
  }
}

template <class T>
void attend_item(const DecodeAttnArgs& a, int64_t b, int64_t h, int split, float* scratch) {
  const int64_t G = a.n_heads / a.n_kv_heads, D = a.head_dim, Dp = (D + kPad - 1) / kPad * kPad;
  const Scratch sc = carve(scratch, G, Dp);
  const T* q = static_cast<const T*>(a.q) + (b * a.n_heads + h * G) * D;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t d = 0; d < D; ++d) sc.q[g * Dp + d] = to_f32(q[g * D + d]) * a.scale;
    for (int64_t d = 0; d < Dp; ++d) sc.acc[g * Dp + d] = 0.f;
    sc.m[g] = kNegInf;
    sc.l[g] = 0.f;
  }
  const int64_t len = a.seq_lens[b];
  const int64_t units = (len + a.chunk - 1) / a.chunk;
  const int64_t per = (units + a.splits - 1) / a.splits;
  const int64_t u0 = split * per, u1 = u0 + per < units ? u0 + per : units;
  const T* kbase = static_cast<const T*>(a.k);
  const T* vbase = static_cast<const T*>(a.v);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t tok0 = u * a.chunk;
    const int64_t n_u = len - tok0 < a.chunk ? len - tok0 : a.chunk;
    int64_t off, rs;
    if (a.table) {  // paged: the block's slots for kv head h
      const int64_t blk = a.table[b * a.max_blocks + u];
      rs = a.n_kv_heads * D;
      off = blk * a.block_size * rs + h * D;
    } else {        // contiguous (batch, n_kv_heads, max_len, D)
      rs = D;
      off = ((b * a.n_kv_heads + h) * a.max_len + tok0) * D;
    }
    for (int64_t c = 0; c < n_u; c += kChunk) {
      const int n = static_cast<int>(n_u - c < kChunk ? n_u - c : kChunk);
      attend_chunk<T>(sc, G, Dp, D, kbase + off + c * rs, vbase + off + c * rs, rs, n);
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t hq = h * G + g;
    const float* acc = sc.acc + g * Dp;
    if (a.splits == 1) {
      T* o = static_cast<T*>(a.out) + (b * a.n_heads + hq) * D;
      const float inv = sc.l[g] > 0.f ? 1.f / sc.l[g] : 0.f;
      for (int64_t d = 0; d < D; ++d) o[d] = from_f32<T>(acc[d] * inv);
    } else {
      float* part = a.partial + ((b * a.n_heads + hq) * a.splits + split) * (D + 2);
      for (int64_t d = 0; d < D; ++d) part[d] = acc[d];
      part[D] = sc.m[g];
      part[D + 1] = sc.l[g];
    }
  }
}

// Log-sum-exp merge of the splits of one (sequence, q head).
template <class T>
void merge_row(const DecodeAttnArgs& a, int64_t row) {
  const int64_t D = a.head_dim, S = a.splits;
  const float* part = a.partial + row * S * (D + 2);
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
  float L = 0.f;
  for (int64_t s = 0; s < S; ++s) {
    const float* p = part + s * (D + 2);
    if (p[D + 1] > 0.f) L += p[D + 1] * std::exp(p[D] - M);
  }
  const float inv = 1.f / L;
  for (int64_t d = 0; d < D; ++d) {
    float acc = 0.f;
    for (int64_t s = 0; s < S; ++s) {
      const float* p = part + s * (D + 2);
      if (p[D + 1] > 0.f) acc += p[d] * std::exp(p[D] - M);
    }
    o[d] = from_f32<T>(acc * inv);
  }
}

template <class T>
void decode_impl(const DecodeAttnArgs& a) {
  const int64_t S = a.splits;
  const int64_t items = a.batch * a.n_kv_heads * S;
  const int64_t rows = a.batch * a.n_heads;
#pragma omp parallel num_threads(a.threads)
  {
    float* scratch = a.scratch + omp_get_thread_num() * a.scratch_floats;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / (a.n_kv_heads * S), h = (it / S) % a.n_kv_heads;
      attend_item<T>(a, b, h, static_cast<int>(it % S), scratch);
    }
    if (S > 1) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) merge_row<T>(a, r);
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
