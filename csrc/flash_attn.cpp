// flash_attn.cpp — argument checks and dispatch for the CUDA fused attention (see flash_attn.h).
#include "flash_attn.h"

#include <cmath>

#include "device.h"
#ifdef LLMFORGE_WITH_CUDA
#include "flash_attn.cuh"
#endif

namespace lf {
namespace {

constexpr const char* kFwd = "flash_attn";
constexpr const char* kBwd = "flash_attn_backward";

#ifdef LLMFORGE_WITH_CUDA
void check_cuda_half(const char* op, const char* arg, const TensorView& t, int ndim) {
  check_supported_device(op, arg, t);
  LF_CHECK(t.device == DeviceKind::cuda, op, ": ", arg, " must be a CUDA tensor (the CPU path is attention())");
  check_dtype(op, arg, t, {DType::f16, DType::bf16});
  check_ndim(op, arg, t, ndim);
  check_contiguous(op, arg, t);
  check_aligned(op, arg, t, 16);
}

void check_like(const char* op, const char* arg, const TensorView& t, const TensorView& ref, const char* ref_name) {
  check_cuda_half(op, arg, t, ref.ndim);
  check_same_device(op, arg, t, ref, ref_name);
  check_same_dtype(op, arg, t, ref, ref_name);
  for (int i = 0; i < ref.ndim; ++i)
    LF_CHECK(t.shape[i] == ref.shape[i], op, ": ", arg, " has shape ", t.shape_str(), " but ", ref_name, " has ",
             ref.shape_str());
}

void check_f32(const char* op, const char* arg, const TensorView& t, const TensorView& q,
               std::initializer_list<int64_t> shape) {
  check_same_device(op, arg, t, q, "q");
  check_dtype(op, arg, t, {DType::f32});
  check_shape(op, arg, t, shape);
  check_contiguous(op, arg, t);
}

// Checks q, k, v, out, lse and the optional cu_seqlens; fills the shape and layout fields.
cuda::FlashAttnParams check_and_plan(const char* op, const TensorView& q, const TensorView& k, const TensorView& v,
                                     const TensorView& out, const TensorView& lse, const TensorView* cu_q,
                                     const TensorView* cu_k, int64_t max_q, int64_t max_k, bool causal,
                                     double scale, int64_t window) {
  const bool packed = cu_q != nullptr;
  LF_CHECK((cu_q == nullptr) == (cu_k == nullptr), op, ": cu_seqlens_q and cu_seqlens_k go together");
  const int nd = packed ? 3 : 4;
  check_cuda_half(op, "q", q, nd);
  check_cuda_half(op, "k", k, nd);
  check_same_device(op, "k", k, q, "q");
  check_same_dtype(op, "k", k, q, "q");
  check_like(op, "v", v, k, "k");
  check_like(op, "out", out, q, "q");
  const int64_t D = q.shape[nd - 1], H = q.shape[1];
  const int64_t Hkv = k.shape[1];
  LF_CHECK(D == 64 || D == 128, op, ": the CUDA kernels take head dim 64 or 128, got ", D);
  LF_CHECK(k.shape[nd - 1] == D, op, ": k has head dim ", k.shape[nd - 1], " but q has ", D);
  LF_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, op, ": the number of kv heads (", Hkv,
           ") must divide the number of q heads (", H, ")");
  LF_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be finite and > 0, got ", scale);
  LF_CHECK(window >= -1 && window < (int64_t{1} << 30), op, ": window must be -1 (none) or in [0, 2^30), got ", window);

  cuda::FlashAttnParams p;
  p.dtype = cuda_dtype_code(q.dtype);
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.lse = lse.ptr<float>();
  p.heads = static_cast<int>(H);
  p.kv_heads = static_cast<int>(Hkv);
  p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.window = static_cast<int>(window);
  LF_CHECK(H <= 65535, op, ": at most 65535 heads, got ", H);
  if (packed) {
    const int64_t Tq = q.shape[0], Tk = k.shape[0];
    check_f32(op, "lse", lse, q, {H, Tq});
    for (const TensorView* c : {cu_q, cu_k}) {
      const char* name = c == cu_q ? "cu_seqlens_q" : "cu_seqlens_k";
      check_same_device(op, name, *c, q, "q");
      check_dtype(op, name, *c, {DType::i32});
      check_ndim(op, name, *c, 1);
      check_contiguous(op, name, *c);
    }
    LF_CHECK(cu_q->shape[0] >= 2 && cu_k->shape[0] == cu_q->shape[0], op,
             ": cu_seqlens_q and cu_seqlens_k must both have batch + 1 >= 2 entries, got ", cu_q->shape_str(), " and ",
             cu_k->shape_str());
    LF_CHECK(max_q >= 0 && max_q <= Tq && max_k >= 0 && max_k <= Tk, op, ": max_seqlen_q / max_seqlen_k (", max_q,
             ", ", max_k, ") must lie in [0, Tq] / [0, Tk] = [0, ", Tq, "] / [0, ", Tk, "]");
    // 2^30: the kernels' int tile arithmetic (key index + tile width) must not overflow
    LF_CHECK(Tq < (int64_t{1} << 30) && Tk < (int64_t{1} << 30), op, ": at most 2^30 - 1 packed tokens");
    p.batch = static_cast<int>(cu_q->shape[0] - 1);
    p.cu_seqlens_q = cu_q->ptr<int32_t>();
    p.cu_seqlens_k = cu_k->ptr<int32_t>();
    p.max_seqlen_q = static_cast<int>(max_q);
    p.max_seqlen_k = static_cast<int>(max_k);
    p.q_batch = 0;
    p.q_head = D;
    p.q_row = H * D;
    p.k_batch = 0;
    p.k_head = D;
    p.k_row = Hkv * D;
    p.lse_batch = 0;
    p.lse_head = Tq;
  } else {
    const int64_t B = q.shape[0], Sq = q.shape[2], Sk = k.shape[2];
    LF_CHECK(B > 0 && Sq > 0 && Sk > 0, op, ": q and k must be non-empty, got ", q.shape_str(), " and ",
             k.shape_str());
    LF_CHECK(k.shape[0] == B, op, ": k has batch ", k.shape[0], " but q has ", B);
    LF_CHECK(Sq < (int64_t{1} << 30) && Sk < (int64_t{1} << 30), op, ": sequences must be shorter than 2^30");
    check_f32(op, "lse", lse, q, {B, H, Sq});
    p.batch = static_cast<int>(B);
    p.max_seqlen_q = static_cast<int>(Sq);
    p.max_seqlen_k = static_cast<int>(Sk);
    p.q_batch = H * Sq * D;
    p.q_head = Sq * D;
    p.q_row = D;
    p.k_batch = Hkv * Sk * D;
    p.k_head = Sk * D;
    p.k_row = D;
    p.lse_batch = H * Sq;
    p.lse_head = Sq;
  }
  LF_CHECK(p.batch <= 65535, op, ": at most 65535 sequences, got ", p.batch);
  return p;
}
#endif

}  // namespace

void flash_attn_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                    const TensorView& lse, const TensorView* cu_q, const TensorView* cu_k, int64_t max_q,
                    int64_t max_k, bool causal, double scale, int64_t window, intptr_t stream) {
#ifdef LLMFORGE_WITH_CUDA
  cuda::FlashAttnParams p = check_and_plan(kFwd, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale, window);
  const char* err = cuda::flash_attn_fwd(p, reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, kFwd, ": CUDA error: ", err);
#else
  (void)q, (void)k, (void)v, (void)out, (void)lse, (void)cu_q, (void)cu_k, (void)max_q, (void)max_k;
  (void)causal, (void)scale, (void)window, (void)stream;
  fail_value(kFwd, ": this llmforge was built without CUDA kernels");
#endif
}

void flash_attn_bwd(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& out, const TensorView& lse, const TensorView* dlse, const TensorView& dq,
                    const TensorView& dk, const TensorView& dv, const TensorView& delta, const TensorView* cu_q,
                    const TensorView* cu_k, int64_t max_q, int64_t max_k, bool causal, double scale, int64_t window,
                    intptr_t stream) {
#ifdef LLMFORGE_WITH_CUDA
  cuda::FlashAttnParams p = check_and_plan(kBwd, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale, window);
  check_like(kBwd, "grad_out", dout, q, "q");
  check_like(kBwd, "grad_q", dq, q, "q");
  check_like(kBwd, "grad_k", dk, k, "k");
  check_like(kBwd, "grad_v", dv, v, "v");
  auto lse_shape = [&](const char* arg, const TensorView& t) {
    check_same_device(kBwd, arg, t, q, "q");
    check_dtype(kBwd, arg, t, {DType::f32});
    check_ndim(kBwd, arg, t, lse.ndim);
    for (int i = 0; i < lse.ndim; ++i)
      LF_CHECK(t.shape[i] == lse.shape[i], kBwd, ": ", arg, " has shape ", t.shape_str(), " but lse has ",
               lse.shape_str());
    check_contiguous(kBwd, arg, t);
  };
  lse_shape("delta", delta);
  if (dlse) lse_shape("grad_lse", *dlse);
  p.dout = dout.data;
  p.dlse = dlse ? dlse->ptr<float>() : nullptr;
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.delta = delta.ptr<float>();
  const char* err = cuda::flash_attn_bwd(p, reinterpret_cast<void*>(stream));
  LF_CHECK(err == nullptr, kBwd, ": CUDA error: ", err);
#else
  (void)dout, (void)q, (void)k, (void)v, (void)out, (void)lse, (void)dlse, (void)dq, (void)dk, (void)dv;
  (void)delta, (void)cu_q, (void)cu_k, (void)max_q, (void)max_k, (void)causal, (void)scale, (void)window;
  (void)stream;
  fail_value(kBwd, ": this llmforge was built without CUDA kernels");
#endif
}

}  // namespace lf
