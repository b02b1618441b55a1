// attention.cpp — argument checks, workspaces and dispatch for fused attention (see attention.h).
#include "attention.h"

#include <cmath>
#include <memory>

#include "cpu/attention.h"
#include "device.h"
#include "isa.h"

namespace lf {
namespace {

constexpr const char* kFwd = "attention";
constexpr const char* kBwd = "attention_backward";
constexpr int64_t kMaxHeadDim = 512;

void check_cpu_float(const char* op, const char* arg, const TensorView& t) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {DType::f32, DType::bf16, DType::f64});
  check_ndim(op, arg, t, 4);
  check_contiguous(op, arg, t);
}

cpu::AttnShape check_qkv(const char* op, const TensorView& q, const TensorView& k, const TensorView& v, bool causal,
                         double scale, int64_t window, int threads) {
  check_cpu_float(op, "q", q);
  check_cpu_float(op, "k", k);
  check_cpu_float(op, "v", v);
  check_same_dtype(op, "k", k, q, "q");
  check_same_dtype(op, "v", v, q, "q");
  const int64_t B = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Sk = k.shape[2];
  LF_CHECK(B > 0 && Hq > 0 && Sq > 0 && D > 0, op, ": q must be non-empty (B, H, S, D), got shape ", q.shape_str());
  LF_CHECK(Hkv > 0 && Sk > 0, op, ": k must be non-empty (B, Hkv, Sk, D), got shape ", k.shape_str());
  LF_CHECK(D <= kMaxHeadDim, op, ": head dim must be at most ", kMaxHeadDim, ", got ", D);
  check_shape(op, "k", k, {B, Hkv, Sk, D});
  check_shape(op, "v", v, {B, Hkv, Sk, D});
  LF_CHECK(Hq % Hkv == 0, op, ": the number of kv heads (", Hkv, ") must divide the number of q heads (", Hq, ")");
  LF_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be finite and > 0, got ", scale);
  LF_CHECK(window >= -1, op, ": window must be -1 (none) or >= 0, got ", window);
  check_threads(op, threads);
  return cpu::AttnShape{B, Hq, Hkv, Sq, Sk, D, causal, window, scale};
}

void check_like(const char* op, const char* arg, const TensorView& t, const TensorView& ref, const char* ref_name) {
  check_cpu(op, arg, t);
  check_same_dtype(op, arg, t, ref, ref_name);
  check_shape(op, arg, t, {ref.shape[0], ref.shape[1], ref.shape[2], ref.shape[3]});
  check_contiguous(op, arg, t);
}

// out / grad_out: q's shape with a dense head dim. Read-only operands (grad_out) may have any
// such strides; a written one (out) is contiguous or token-major ((B, Sq, Hq, D) storage, seen
// as its (1, 2) transpose), so its rows never overlap.
cpu::RowStrides check_rows(const char* op, const char* arg, const TensorView& t, const TensorView& ref,
                           bool written) {
  check_cpu(op, arg, t);
  check_same_dtype(op, arg, t, ref, "q");
  check_shape(op, arg, t, {ref.shape[0], ref.shape[1], ref.shape[2], ref.shape[3]});
  const int64_t B = t.shape[0], H = t.shape[1], S = t.shape[2], D = t.shape[3];
  const cpu::RowStrides r{t.strides[0], t.strides[1], t.strides[2]};
  const bool dense_d = t.strides[3] == 1 || D == 1;
  if (written) {
    const bool contiguous = t.is_contiguous();
    const bool token_major = dense_d && (r.sh == D || H == 1) && (r.si == H * D || S == 1) && (r.sb == S * H * D || B == 1);
    LF_CHECK(contiguous || token_major, op, ": ", arg, " must be contiguous, or the (1, 2) transpose of a contiguous ",
             "(B, S, H, D) tensor; got shape ", t.shape_str());
    return contiguous ? cpu::RowStrides{H * S * D, S * D, D} : r;
  }
  LF_CHECK(dense_d && r.sb >= 0 && r.sh >= 0 && r.si >= 0, op, ": ", arg,
           " must have a dense last dimension (stride 1) and non-negative strides");
  return r;
}

void check_lse(const char* op, const char* arg, const TensorView& t, const TensorView& q) {
  check_cpu(op, arg, t);
  check_dtype(op, arg, t, {q.dtype == DType::f64 ? DType::f64 : DType::f32});
  check_shape(op, arg, t, {q.shape[0], q.shape[1], q.shape[2]});
  check_contiguous(op, arg, t);
}

int64_t dpad(int64_t D) { return (D + cpu::kAttnDPad - 1) / cpu::kAttnDPad * cpu::kAttnDPad; }

// Threads worth waking for this much work (about 1 MFLOP each at least): small calls stay
// on one thread, where an OpenMP fork/join would cost more than the work.
int useful_threads(int threads, const cpu::AttnShape& s) {
  const double flops = 4.0 * s.B * s.Hq * s.Sq * s.Sk * s.D;
  const double t = flops / 1e6;
  return t < 1 ? 1 : t < threads ? static_cast<int>(t) : threads;
}

std::unique_ptr<float[]> floats(int64_t n) { return std::unique_ptr<float[]>(new float[n > 0 ? n : 1]); }

}  // namespace

void attention_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                   const TensorView& lse, bool causal, double scale, int64_t window, int threads) {
  const cpu::AttnShape s = check_qkv(kFwd, q, k, v, causal, scale, window, threads);
  const cpu::RowStrides os = check_rows(kFwd, "out", out, q, true);
  check_lse(kFwd, "lse", lse, q);
  threads = useful_threads(threads, s);
  const int64_t Dp = dpad(s.D), Bc = cpu::kAttnBc, Br = cpu::kAttnBr;
  const int64_t nblk = (s.Sk + Bc - 1) / Bc;
  // Decode-like calls (all q heads of a kv head fit one tile) read each K/V block once, in one task.
  const bool stacked = s.Hq / s.Hkv * s.Sq <= Br;
  std::unique_ptr<float[]> pack, scratch;
  std::unique_ptr<int[]> pack_state;
  int64_t per_thread;
  if (q.dtype == DType::f64) {
    per_thread = 2 * s.Sk + 16;
  } else {
    if (!stacked) {
      pack = floats(s.B * s.Hkv * 2 * nblk * Bc * Dp);
      pack_state = std::unique_ptr<int[]>(new int[s.B * s.Hkv * nblk]());
    }
    per_thread = 2 * Br * Dp + Br * Bc + 2 * Br + 2 * Bc * Dp + 16;
  }
  scratch = floats(per_thread * threads);
  cpu::AttnFwdArgs a{q.dtype,    s,          q.data,           k.data,        v.data,     out.data, lse.data,
                     pack.get(), pack_state.get(), scratch.get(), per_thread, threads,  stacked, os};
  LF_CPU_DISPATCH(attention_fwd, a);
}

void attention_bwd(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out, const TensorView& lse, const TensorView* dlse, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv, bool causal, double scale, int64_t window,
                   int threads) {
  const cpu::AttnShape s = check_qkv(kBwd, q, k, v, causal, scale, window, threads);
  const cpu::RowStrides dos = check_rows(kBwd, "grad_out", dout, q, false);
  const cpu::RowStrides os = check_rows(kBwd, "out", out, q, false);
  check_lse(kBwd, "lse", lse, q);
  if (dlse) check_lse(kBwd, "grad_lse", *dlse, q);
  check_like(kBwd, "grad_q", dq, q, "q");
  check_like(kBwd, "grad_k", dk, k, "k");
  check_like(kBwd, "grad_v", dv, v, "v");
  threads = useful_threads(threads, s);
  const int64_t Dp = dpad(s.D), Bc = cpu::kAttnBc, Br = cpu::kAttnBrB;
  const int64_t nblk = (s.Sk + Bc - 1) / Bc, G = s.Hq / s.Hkv;
  cpu::AttnBwdArgs a{};
  a.dtype = q.dtype;
  a.s = s;
  a.dout = dout.data;
  a.dout_s = dos;
  a.o = os;
  a.q = q.data;
  a.k = k.data;
  a.v = v.data;
  a.out = out.data;
  a.lse = lse.data;
  a.dlse = dlse ? dlse->data : nullptr;
  a.dq = dq.data;
  a.dk = dk.data;
  a.dv = dv.data;
  a.threads = threads;
  std::unique_ptr<float[]> delta, dq_acc, dq_part, scratch;
  std::unique_ptr<int64_t[]> bounds;
  if (q.dtype == DType::f64) {
    a.scratch_per_thread = 4 * s.Sk + 16;
  } else {
    // One chunk per kv head when that balances over the threads; otherwise a few chunks of
    // equal cost per thread, fewer when the per-chunk dq partials would be large.
    const int64_t head_f = G * s.Sq * Dp, items = s.B * s.Hkv * nblk, heads = s.B * s.Hkv;
    int64_t nch = heads >= 2 * threads || heads % threads == 0 ? heads : 4 * int64_t{threads};
    if (nch > items) nch = items;
    const int64_t budget = (int64_t{256} << 20) / 4;  // floats
    while (nch > 1 && nch != heads && nch * 2 * head_f > budget && nch * 2 * head_f > 4 * s.B * s.Hq * s.Sq * Dp) nch /= 2;
    a.nchunks = static_cast<int>(nch);
    delta = floats(s.B * s.Hq * s.Sq);
    dq_acc = floats(s.B * s.Hq * s.Sq * Dp);
    dq_part = floats(nch > 1 && nch != heads ? nch * 2 * head_f : 1);
    bounds = std::unique_ptr<int64_t[]>(new int64_t[nch + 1]);
    a.delta = delta.get();
    a.dq_acc = dq_acc.get();
    a.dq_part = dq_part.get();
    a.chunk_bounds = bounds.get();
    a.scratch_per_thread = 5 * Bc * Dp + 2 * Br * Dp + 2 * Br * Bc + 2 * Br + 16;
  }
  scratch = floats(a.scratch_per_thread * threads);
  a.scratch = scratch.get();
  LF_CPU_DISPATCH(attention_bwd, a);
}

}  // namespace lf
