// attention.h — CPU fused attention kernels (csrc/cpu/attention.cpp), one per ISA build.
//
// Layout (B, H, S, D), contiguous: q is (B, Hq, Sq, D); k and v are (B, Hkv, Sk, D)
// with Hkv dividing Hq (grouped-query: q head h reads kv head h / (Hq / Hkv)).
// Query row i sits at absolute position i + (Sk - Sq) (bottom-right alignment, as in
// flash-attn), and may attend to key j when
//     j <= i + Sk - Sq                  (causal only)
//     j >= i + Sk - Sq - window         (window >= 0 only; a left window)
//   forward:  s = scale * q.k, p = softmax_j(s), out = p @ v, lse = log(sum_j exp(s))
//             rows with no allowed key: out = 0, lse = -inf
//   backward: Di = rowsum(dout * out) - dlse;  ds = p * (dout.v - Di)
//             dq = scale * ds @ k,  dk = scale * ds^T @ q,  dv = p^T @ dout
// Tiled with an online softmax: scores exist only one tile at a time. float32 and
// bfloat16 compute in float32 (lse float32); float64 runs a plain double path (lse f64).
#pragma once
#include <cstdint>

#include "isa.h"
#include "tensor.h"

namespace lf::cpu {

// Tile sizes; the adapter sizes the workspaces with them. kAttnDPad is the largest
// padding of the head dim any ISA build uses (D is rounded up to a multiple of it or less).
constexpr int64_t kAttnBr = 64;     // query rows per forward tile
constexpr int64_t kAttnBc = 64;     // keys per block (forward and backward)
constexpr int64_t kAttnBrB = 64;    // query rows per backward tile
constexpr int64_t kAttnDPad = 32;

struct AttnShape {
  int64_t B, Hq, Hkv, Sq, Sk, D;
  bool causal;
  int64_t window;  // < 0: none
  double scale;
};

// Element strides of (batch, head, position) for out and grad_out: row (b, h, i) of a
// (B, Hq, Sq, D) operand starts at b*sb + h*sh + i*si (contiguous: Hq*Sq*D, Sq*D, D;
// token-major (B, Sq, Hq, D) storage: Sq*Hq*D, D, Hq*D).
struct RowStrides {
  int64_t sb, sh, si;
  int64_t at(const AttnShape& s, int64_t r) const {  // r: flat row of (B, Hq, Sq)
    return (r / (s.Hq * s.Sq)) * sb + ((r / s.Sq) % s.Hq) * sh + (r % s.Sq) * si;
  }
};

struct AttnFwdArgs {
  DType dtype;
  AttnShape s;
  const void* q;
  const void* k;
  const void* v;
  void* out;          // rows at RowStrides o (any layout with a dense head dim)
  void* lse;          // (B, Hq, Sq): f32 (f64 for f64)
  float* kv_pack;     // f32/bf16 unless stack_heads: B*Hkv * 2 * nblk * kAttnBc * Dpad floats
  int* pack_state;    // B*Hkv * nblk zeros (unless stack_heads), see attention.cpp
  float* scratch;     // threads * scratch_per_thread floats
  int64_t scratch_per_thread;
  int threads;
  bool stack_heads;   // Hq / Hkv * Sq <= kAttnBr: one task per kv head packs its own blocks
  RowStrides o;       // of out
};

struct AttnBwdArgs {
  DType dtype;
  AttnShape s;
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* lse;
  const void* dlse;   // optional gradient arriving at lse (B, Hq, Sq), lse's dtype
  void* dq;
  void* dk;
  void* dv;
  float* delta;       // f32/bf16: B*Hq*Sq floats (Di)
  float* dq_acc;      // f32/bf16: B*Hq*Sq*Dpad floats
  float* dq_part;     // f32/bf16: nchunks * 2 * G*Sq*Dpad floats (shared kv heads' partial dq)
  int64_t* chunk_bounds;  // nchunks + 1 work-item boundaries, filled by the kernel
  int nchunks;        // work chunks (<= threads), each a contiguous run of (kv head, key block)
  float* scratch;     // threads * scratch_per_thread floats
  int64_t scratch_per_thread;
  int threads;
  RowStrides o, dout_s;  // of out and dout (q, k, v, dq, dk, dv are contiguous)
};

}  // namespace lf::cpu

LF_DECLARE_CPU_KERNEL(void, attention_fwd, const lf::cpu::AttnFwdArgs&)
LF_DECLARE_CPU_KERNEL(void, attention_bwd, const lf::cpu::AttnBwdArgs&)
