// bindings.cpp — the only file that includes pybind11: turns Python arguments into
// TensorViews (via DLPack; no torch headers anywhere in csrc/) and defines one
// function per op. Argument checks live in each op's adapter (csrc/<op>.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <deque>
#include <memory>
#include <optional>

#include "device.h"
#include "dlpack.h"
#include "decode_model.h"
#include "ggml_quants.h"
#include "isa.h"
#include "paged_kv.h"
#include "qmatmul.h"
#include "rmsnorm.h"
#include "attention.h"
#include "cross_entropy.h"
#include "bpe.h"
#include "spm_bpe.h"
#include "pretokenize.h"
#include "gemm.h"
#include "rmsnorm_gemm.h"
#include "rope.h"
#include "swiglu.h"
#include "flash_attn.h"
#include "paged_attn.h"
#include "tensor.h"
#ifdef LLMFORGE_WITH_CUDA
#include "runtime.cuh"
#endif

namespace py = pybind11;
using lf::TensorView;

namespace {

lf::DType dtype_from_dl(const lf::dl::DataType& t) {
  using namespace lf::dl;
  if (t.lanes != 1) return lf::DType::other;
  switch (t.code) {
    case kFloat: return t.bits == 32 ? lf::DType::f32 : t.bits == 16 ? lf::DType::f16
                        : t.bits == 64 ? lf::DType::f64 : lf::DType::other;
    case kBfloat: return t.bits == 16 ? lf::DType::bf16 : lf::DType::other;
    case kInt: return t.bits == 8 ? lf::DType::i8 : t.bits == 16 ? lf::DType::i16 : t.bits == 32 ? lf::DType::i32
                      : t.bits == 64 ? lf::DType::i64 : lf::DType::other;
    case kUInt: return t.bits == 8 ? lf::DType::u8 : lf::DType::other;
    default: return lf::DType::other;
  }
}

// A tensor argument: any object with __dlpack__ (torch, numpy, ...) or a "dltensor"
// capsule. The view borrows the memory for the duration of the call: the capsule
// is kept alive by `keep` and never consumed, so its owner stays responsible.
struct Arg {
  TensorView view;
  py::object keep;
};

// torch.Tensor and torch.utils.dlpack.to_dlpack, looked up once (torch is imported before any op
// runs; the module never links libtorch). Leaked on purpose: no destruction order at exit.
struct TorchDLPack {
  py::object tensor_type, to_dlpack;
  bool ok = false;
};

const TorchDLPack& torch_dlpack() {
  static TorchDLPack* t = [] {
    auto* r = new TorchDLPack();
    try {
      py::module_ torch = py::module_::import("torch");
      r->tensor_type = torch.attr("Tensor");
      r->to_dlpack = py::module_::import("torch.utils.dlpack").attr("to_dlpack");
      r->ok = true;
    } catch (const py::error_already_set&) {  // no torch: the __dlpack__ protocol serves alone
      PyErr_Clear();
    }
    return r;
  }();
  return *t;
}

// A DLPack capsule for obj. torch tensors go through to_dlpack, a C++ call (~0.2 us), rather than
// the Python-level Tensor.__dlpack__ (~1.7 us, several per op call): the same capsule, minus the
// stream handshake, which the kernels do not need (they run on the caller's current stream).
py::object dlpack_capsule(const py::handle& obj) {
  const TorchDLPack& t = torch_dlpack();
  if (t.ok && PyObject_IsInstance(obj.ptr(), t.tensor_type.ptr()) == 1) {
    if (obj.attr("requires_grad").cast<bool>())
      throw lf::ValueError("tensors that require grad cannot cross the native boundary; pass .detach()");
    py::object cap = t.to_dlpack(obj);
    if (PyCapsule_IsValid(cap.ptr(), "dltensor")) return cap;  // else (a newer DLPack version): below
  }
  return obj.attr("__dlpack__")();
}

Arg to_view(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw lf::TypeError(std::string(name) + " is None, expected a tensor");
  py::object cap;
  if (PyCapsule_CheckExact(obj.ptr())) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else if (py::hasattr(obj, "__dlpack__")) {
    cap = dlpack_capsule(obj);
  } else {
    throw lf::TypeError(std::string(name) + " is not a tensor (no __dlpack__), got " +
                        std::string(py::str(py::type::of(obj))));
  }
  auto* mt = static_cast<lf::dl::ManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!mt) {
    PyErr_Clear();
    throw lf::ValueError(std::string(name) + ": DLPack capsule was already consumed or is invalid");
  }
  const lf::dl::Tensor& t = mt->dl_tensor;
  Arg a;
  a.keep = cap;
  TensorView& v = a.view;
  if (t.ndim < 0 || t.ndim > lf::kMaxDims)
    throw lf::ValueError(std::string(name) + ": tensors of more than 8 dimensions are not supported");
  v.ndim = t.ndim;
  v.dtype = dtype_from_dl(t.dtype);
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.device = t.device.device_type == lf::dl::kCPU ? lf::DeviceKind::cpu
             : t.device.device_type == lf::dl::kCUDA ? lf::DeviceKind::cuda : lf::DeviceKind::other;
  v.device_index = t.device.device_id;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : expect;
    expect *= t.shape[i];
  }
  return a;
}

std::optional<Arg> to_view_opt(const py::handle& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return to_view(obj, name);
}

const TensorView* ptr(const std::optional<Arg>& a) { return a ? &a->view : nullptr; }

// ---- tokenizer helpers ----
std::string_view bytes_view(const py::bytes& b) {
  char* p = nullptr;
  Py_ssize_t n = 0;
  if (PyBytes_AsStringAndSize(b.ptr(), &p, &n) != 0) throw py::error_already_set();
  return std::string_view(p, size_t(n));
}

py::list ids_to_list(const std::vector<int32_t>& ids) {
  py::list out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    PyObject* v = PyLong_FromLong(ids[i]);
    if (!v) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), v);
  }
  return out;
}

std::vector<int64_t> ids_from_seq(const py::handle& seq, const char* what) {
  PyObject* fast = PySequence_Fast(seq.ptr(), "");
  if (!fast) {
    PyErr_Clear();
    throw lf::TypeError(std::string(what) + ": expected a sequence of ints, got " +
                        std::string(py::str(py::type::of(seq))));
  }
  py::object keep = py::reinterpret_steal<py::object>(fast);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_Check(items[i]))
      throw lf::TypeError(std::string(what) + ": element " + std::to_string(i) + " is " +
                          std::string(py::str(py::type::of(items[i]))) + ", expected int");
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
    if (overflow) throw lf::ValueError(std::string(what) + ": element " + std::to_string(i) + " is out of range");
    out[size_t(i)] = v;
  }
  return out;
}

}  // namespace

// ---- native decode step: the model object keeps every weight's capsule alive ----
struct PyDecodeModel {
  std::deque<Arg> keep;  // stable addresses: views are borrowed while the model is built
  std::unique_ptr<lf::DecodeModel> impl;

  const TensorView* hold(const py::handle& obj, const std::string& name) {
    keep.push_back(to_view(obj, name.c_str()));
    return &keep.back().view;
  }
  lf::DecodeLinearViews linear(const py::dict& d, const std::string& name) {
    lf::DecodeLinearViews v;
    auto get = [&](const char* key) -> const TensorView* {
      if (!d.contains(key) || d[key].is_none()) return nullptr;
      return hold(d[key], name + "." + key);
    };
    v.w = get("weight");
    v.packed = get("packed");
    v.scales = get("scales");
    v.zeros = get("zeros");
    v.bias = get("bias");
    v.group_size = d.contains("group_size") ? d["group_size"].cast<int64_t>() : 0;
    return v;
  }
};

PYBIND11_MODULE(_C, m) {
  m.doc() = "llmforge native kernels (CPU; CUDA when built with it). Call through llmforge.ops.";

  static py::exception<lf::TypeError> type_error(m, "TypeError", PyExc_TypeError);
  static py::exception<lf::ValueError> value_error(m, "ValueError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lf::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const lf::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  // ---- build and machine -------------------------------------------------------
  m.def("built_with_cuda", &lf::built_with_cuda);
  m.def("cuda_device_count", []() {
#ifdef LLMFORGE_WITH_CUDA
    return lf::cuda::device_count();
#else
    return 0;
#endif
  });
  m.def("cpu_isa", []() { return std::string(lf::isa_name(lf::current_isa())); },
        "The CPU vector path kernels use now: scalar, avx2 or avx512.");
  m.def("cpu_best_isa", []() { return std::string(lf::isa_name(lf::cpu_best_isa())); });
  m.def("cpu_vnni", []() { return lf::use_vnni(); }, "AVX512-VNNI int8 dot products in use (AVX-512 path only)");
  m.def("cpu_bf16_dot", []() { return lf::cpu_has_bf16_dot(); }, "the CPU multiplies bf16 natively (AVX512-BF16, AMX)");
  m.def("set_cpu_vnni", [](bool on) { lf::set_vnni(on); }, py::arg("on"),
        "turn the AVX512-VNNI kernels off (or back on where the CPU has them)");
  m.def("set_cpu_isa", [](const std::string& name) { lf::set_isa(name.c_str()); }, py::arg("name"),
        "Use a lower CPU vector path (for tests and benchmarks); raises if the CPU lacks it.");

  // ---- rmsnorm -----------------------------------------------------------------
  m.def("rmsnorm_fwd",
        [](py::handle x, py::handle res, py::handle w, py::handle y, py::handle h_out, py::handle rstd, double eps,
           int threads, intptr_t stream) {
          auto X = to_view(x, "x"), W = to_view(w, "weight"), Y = to_view(y, "y"), R = to_view(rstd, "rstd");
          auto Res = to_view_opt(res, "residual"), H = to_view_opt(h_out, "h_out");
          py::gil_scoped_release nogil;
          lf::rmsnorm_fwd(X.view, ptr(Res), W.view, Y.view, ptr(H), R.view, eps, threads, stream);
        },
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("y"), py::arg("h_out"), py::arg("rstd"),
        py::arg("eps"), py::arg("threads"), py::arg("stream") = 0);
  m.def("rmsnorm_bwd",
        [](py::handle dy, py::handle h, py::handle w, py::handle rstd, py::handle dh_out, py::handle dx,
           py::handle dw, py::handle workspace, int threads, intptr_t stream) {
          auto DY = to_view(dy, "grad_y"), Hh = to_view(h, "h"), W = to_view(w, "weight"), R = to_view(rstd, "rstd");
          auto DX = to_view(dx, "grad_x"), DW = to_view(dw, "grad_weight");
          auto DH = to_view_opt(dh_out, "grad_h_out"), WS = to_view_opt(workspace, "workspace");
          py::gil_scoped_release nogil;
          lf::rmsnorm_bwd(DY.view, Hh.view, W.view, R.view, ptr(DH), DX.view, DW.view, ptr(WS), threads, stream);
        },
        py::arg("grad_y"), py::arg("h"), py::arg("weight"), py::arg("rstd"), py::arg("grad_h_out"),
        py::arg("grad_x"), py::arg("grad_weight"), py::arg("workspace"), py::arg("threads"), py::arg("stream") = 0);
  m.def("rmsnorm_bwd_workspace_rows", &lf::rmsnorm_bwd_workspace_rows, py::arg("rows"), py::arg("device"));

  // ---- tokenizer ----
  py::class_<lf::tok::BpeModel>(m, "BpeModel",
                                "Byte-level BPE model (csrc/bpe.h); use llmforge.tokenizer.Tokenizer.")
      .def(py::init([](const std::vector<py::bytes>& tokens, const std::vector<std::tuple<int32_t, int32_t, int32_t>>& merges,
                       const std::vector<int32_t>& added, const std::string& pattern, bool ignore_merges) {
             std::vector<std::string> toks;
             toks.reserve(tokens.size());
             for (const auto& t : tokens) toks.emplace_back(bytes_view(t));
             std::vector<lf::tok::Merge> ms;
             ms.reserve(merges.size());
             for (const auto& [a, b, r] : merges) ms.push_back({a, b, r});
             const auto pat = lf::tok::pattern_from_name(pattern);
             py::gil_scoped_release nogil;
             return std::make_unique<lf::tok::BpeModel>(std::move(toks), ms, added, pat, ignore_merges);
           }),
           py::arg("tokens"), py::arg("merges"), py::arg("added"), py::arg("pattern"), py::arg("ignore_merges"))
      .def("encode",
           [](lf::tok::BpeModel& self, const py::bytes& text, bool match_added) {
             const auto sv = bytes_view(text);
             std::vector<int32_t> ids;
             {
               py::gil_scoped_release nogil;
               self.encode(sv, match_added, ids);
             }
             return ids_to_list(ids);
           },
           py::arg("text"), py::arg("match_added") = true)
      .def("encode_batch",
           [](lf::tok::BpeModel& self, const std::vector<py::bytes>& texts, bool match_added, int threads) {
             std::vector<std::string_view> views;
             views.reserve(texts.size());
             for (const auto& t : texts) views.push_back(bytes_view(t));
             std::vector<std::vector<int32_t>> ids;
             {
               py::gil_scoped_release nogil;
               self.encode_batch(views, match_added, ids, threads);
             }
             py::list out(ids.size());
             for (size_t i = 0; i < ids.size(); ++i) out[i] = ids_to_list(ids[i]);
             return out;
           },
           py::arg("texts"), py::arg("match_added") = true, py::arg("threads") = 1)
      .def("decode",
           [](const lf::tok::BpeModel& self, const py::handle& ids, bool skip_added) {
             const auto v = ids_from_seq(ids, "decode");
             std::string s;
             {
               py::gil_scoped_release nogil;
               s = self.decode(v.data(), v.size(), skip_added);
             }
             return py::bytes(s);
           },
           py::arg("ids"), py::arg("skip_added") = false)
      .def_property_readonly("vocab_size", &lf::tok::BpeModel::vocab_size)
      .def_property_readonly("num_merges", &lf::tok::BpeModel::num_merges)
      .def_property_readonly("cache_size", &lf::tok::BpeModel::cache_size)
      .def_property_readonly("pattern", [](const lf::tok::BpeModel& self) { return std::string(lf::tok::pattern_name(self.pattern())); });
  py::class_<lf::tok::SpmModel>(m, "SpmModel",
                                "SentencePiece-style BPE model (csrc/spm_bpe.h); use llmforge.tokenizer.SpmTokenizer.")
      .def(py::init([](const std::vector<py::bytes>& pieces, const std::vector<uint8_t>& char_ok,
                       const std::vector<std::tuple<int32_t, int32_t, int32_t, int32_t>>& merges,
                       const std::vector<int32_t>& byte_ids, int32_t unk_id, bool fuse_unk) {
             std::vector<std::string> ps;
             ps.reserve(pieces.size());
             for (const auto& t : pieces) ps.emplace_back(bytes_view(t));
             std::vector<lf::tok::SpmMerge> ms;
             ms.reserve(merges.size());
             for (const auto& [a, b, r, k] : merges) ms.push_back({a, b, r, k});
             py::gil_scoped_release nogil;
             return std::make_unique<lf::tok::SpmModel>(std::move(ps), char_ok, ms, byte_ids, unk_id, fuse_unk);
           }),
           py::arg("pieces"), py::arg("char_ok"), py::arg("merges"), py::arg("byte_ids"), py::arg("unk_id"),
           py::arg("fuse_unk"))
      .def("encode_batch",
           [](lf::tok::SpmModel& self, const std::vector<py::bytes>& texts, bool split, int threads) {
             std::vector<std::string_view> views;
             views.reserve(texts.size());
             for (const auto& t : texts) views.push_back(bytes_view(t));
             std::vector<std::vector<int32_t>> ids;
             {
               py::gil_scoped_release nogil;
               self.encode_batch(views, split, ids, threads);
             }
             py::list out(ids.size());
             for (size_t i = 0; i < ids.size(); ++i) out[i] = ids_to_list(ids[i]);
             return out;
           },
           py::arg("texts"), py::arg("split") = false, py::arg("threads") = 1)
      .def_property_readonly("vocab_size", &lf::tok::SpmModel::vocab_size)
      .def_property_readonly("num_pairs", &lf::tok::SpmModel::num_pairs);
  py::class_<lf::tok::BpeTrainer>(m, "BpeTrainer", "Byte-level BPE trainer (csrc/bpe.h).")
      .def(py::init([](const std::string& pattern, const std::vector<py::bytes>& specials) {
             std::vector<std::string> sp;
             for (const auto& t : specials) sp.emplace_back(bytes_view(t));
             return std::make_unique<lf::tok::BpeTrainer>(lf::tok::pattern_from_name(pattern), std::move(sp));
           }),
           py::arg("pattern"), py::arg("specials"))
      .def("feed",
           [](lf::tok::BpeTrainer& self, const py::bytes& text) {
             const auto sv = bytes_view(text);
             py::gil_scoped_release nogil;
             self.feed(sv);
           },
           py::arg("text"))
      .def("train",
           [](const lf::tok::BpeTrainer& self, int64_t num_new_tokens, int64_t min_frequency) {
             std::vector<lf::tok::Merge> ms;
             {
               py::gil_scoped_release nogil;
               ms = self.train(num_new_tokens, min_frequency);
             }
             std::vector<std::tuple<int32_t, int32_t, int32_t>> out;
             out.reserve(ms.size());
             for (const auto& x : ms) out.emplace_back(x.left, x.right, x.result);
             return out;
           },
           py::arg("num_new_tokens"), py::arg("min_frequency") = 1)
      .def_property_readonly("num_words", &lf::tok::BpeTrainer::num_words)
      .def_property_readonly("num_pieces", &lf::tok::BpeTrainer::num_pieces)
      .def_property_readonly("num_bytes", &lf::tok::BpeTrainer::num_bytes);
  m.def("tok_pretokenize",
        [](const std::string& pattern, const py::bytes& text) {
          const auto sv = bytes_view(text);
          const auto offs = lf::tok::pretokenize_offsets(lf::tok::pattern_from_name(pattern), sv);
          py::list out(offs.size() / 2);
          for (size_t i = 0; i < offs.size() / 2; ++i)
            out[i] = py::bytes(sv.data() + offs[2 * i], offs[2 * i + 1] - offs[2 * i]);
          return out;
        },
        py::arg("pattern"), py::arg("text"), "The pre-tokenizer's pieces of text (bytes), for tests.");

  // ---- paged_kv ----------------------------------------------------------------
  m.def("paged_kv_append",
        [](py::handle k_pool, py::handle v_pool, py::handle table, py::handle lens, py::handle k_new,
           py::handle v_new, py::handle counts, int threads) {
          auto KP = to_view(k_pool, "k_pool"), VP = to_view(v_pool, "v_pool"), T = to_view(table, "block_table");
          auto L = to_view(lens, "seq_lens"), KN = to_view(k_new, "k_new"), VN = to_view(v_new, "v_new");
          auto CN = to_view_opt(counts, "counts");
          py::gil_scoped_release nogil;
          lf::paged_kv_append(KP.view, VP.view, T.view, L.view, KN.view, VN.view, ptr(CN), threads);
        },
        py::arg("k_pool"), py::arg("v_pool"), py::arg("block_table"), py::arg("seq_lens"), py::arg("k_new"),
        py::arg("v_new"), py::arg("counts"), py::arg("threads"));
  m.def("paged_kv_gather",
        [](py::handle pool, py::handle table, py::handle lens, py::handle out, int threads) {
          auto P = to_view(pool, "pool"), T = to_view(table, "block_table"), L = to_view(lens, "seq_lens");
          auto O = to_view(out, "out");
          py::gil_scoped_release nogil;
          lf::paged_kv_gather(P.view, T.view, L.view, O.view, threads);
        },
        py::arg("pool"), py::arg("block_table"), py::arg("seq_lens"), py::arg("out"), py::arg("threads"));
  m.def("paged_decode_attention",
        [](py::handle q, py::handle k_pool, py::handle v_pool, py::handle table, py::handle lens, py::handle out,
           double scale, int threads) {
          auto Q = to_view(q, "q"), KP = to_view(k_pool, "k_pool"), VP = to_view(v_pool, "v_pool");
          auto T = to_view(table, "block_table"), L = to_view(lens, "seq_lens"), O = to_view(out, "out");
          py::gil_scoped_release nogil;
          lf::paged_decode_attention(Q.view, KP.view, VP.view, T.view, L.view, O.view, scale, threads);
        },
        py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("block_table"), py::arg("seq_lens"),
        py::arg("out"), py::arg("scale"), py::arg("threads"));
  m.def("contiguous_decode_attention",
        [](py::handle q, py::handle k, py::handle v, py::handle lens, py::handle out, double scale, int threads) {
          auto Q = to_view(q, "q"), K = to_view(k, "k"), V = to_view(v, "v"), L = to_view(lens, "seq_lens");
          auto O = to_view(out, "out");
          py::gil_scoped_release nogil;
          lf::contiguous_decode_attention(Q.view, K.view, V.view, L.view, O.view, scale, threads);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("seq_lens"), py::arg("out"), py::arg("scale"),
        py::arg("threads"));
  // ---- rope --------------------------------------------------------------------
  m.def("rope_apply",
        [](py::handle x, py::handle cos, py::handle sin, py::handle pos, py::handle y, const std::string& style,
           bool inverse, int threads, intptr_t stream) {
          auto X = to_view(x, "x"), Cs = to_view(cos, "cos"), Sn = to_view(sin, "sin"), Y = to_view(y, "y");
          auto P = to_view_opt(pos, "positions");
          py::gil_scoped_release nogil;
          lf::rope_apply(X.view, Cs.view, Sn.view, ptr(P), Y.view, style.c_str(), inverse, threads, stream);
        },
        py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("positions"), py::arg("y"), py::arg("style"),
        py::arg("inverse"), py::arg("threads"), py::arg("stream") = 0);

  // ---- swiglu ------------------------------------------------------------------
  m.def("swiglu_fwd",
        [](py::handle gate, py::handle up, py::handle y, int threads, intptr_t stream) {
          auto G = to_view(gate, "gate"), U = to_view(up, "up"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::swiglu_fwd(G.view, U.view, Y.view, threads, stream);
        },
        py::arg("gate"), py::arg("up"), py::arg("y"), py::arg("threads"), py::arg("stream") = 0);
  m.def("swiglu_bwd",
        [](py::handle dy, py::handle gate, py::handle up, py::handle dgate, py::handle dup, int threads,
           intptr_t stream) {
          auto DY = to_view(dy, "grad_y"), G = to_view(gate, "gate"), U = to_view(up, "up");
          auto DG = to_view(dgate, "grad_gate"), DU = to_view(dup, "grad_up");
          py::gil_scoped_release nogil;
          lf::swiglu_bwd(DY.view, G.view, U.view, DG.view, DU.view, threads, stream);
        },
        py::arg("grad_y"), py::arg("gate"), py::arg("up"), py::arg("grad_gate"), py::arg("grad_up"),
        py::arg("threads"), py::arg("stream") = 0);
  m.def("swiglu_packed_fwd",
        [](py::handle x, py::handle y, int threads, intptr_t stream) {
          auto X = to_view(x, "x"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::swiglu_packed_fwd(X.view, Y.view, threads, stream);
        },
        py::arg("x"), py::arg("y"), py::arg("threads"), py::arg("stream") = 0);
  m.def("swiglu_packed_bwd",
        [](py::handle dy, py::handle x, py::handle dx, int threads, intptr_t stream) {
          auto DY = to_view(dy, "grad_y"), X = to_view(x, "x"), DX = to_view(dx, "grad_x");
          py::gil_scoped_release nogil;
          lf::swiglu_packed_bwd(DY.view, X.view, DX.view, threads, stream);
        },
        py::arg("grad_y"), py::arg("x"), py::arg("grad_x"), py::arg("threads"), py::arg("stream") = 0);

  // ---- gemm ------------------------------------------------------------------------
  m.def("gemm",
        [](py::handle a, py::handle b, py::handle c, bool accumulate, int threads) {
          auto A = to_view(a, "a"), B = to_view(b, "b"), Cv = to_view(c, "c");
          py::gil_scoped_release nogil;
          lf::gemm(A.view, B.view, Cv.view, accumulate, threads);
        },
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("accumulate"), py::arg("threads"));

  // ---- rmsnorm_gemm ------------------------------------------------------------
  m.def("rmsnorm_gemm_fwd",
        [](py::handle x, py::handle g, py::handle w, py::handle y, py::handle rstd, double eps, int threads,
           int path, intptr_t stream) {
          auto X = to_view(x, "x"), G = to_view(g, "norm_weight"), W = to_view(w, "weight"), Y = to_view(y, "y");
          auto R = to_view(rstd, "rstd");
          py::gil_scoped_release nogil;
          lf::rmsnorm_gemm_fwd(X.view, G.view, W.view, Y.view, R.view, eps, threads, path, stream);
        },
        py::arg("x"), py::arg("norm_weight"), py::arg("weight"), py::arg("y"), py::arg("rstd"), py::arg("eps"),
        py::arg("threads"), py::arg("path") = 0, py::arg("stream") = 0);
  m.def("rmsnorm_gemm_bwd",
        [](py::handle dy, py::handle x, py::handle g, py::handle w, py::handle rstd, py::handle da, py::handle dw,
           int threads, intptr_t stream) {
          auto DY = to_view(dy, "grad_y"), X = to_view(x, "x"), G = to_view(g, "norm_weight");
          auto W = to_view(w, "weight"), R = to_view(rstd, "rstd");
          auto DA = to_view_opt(da, "grad_a"), DW = to_view_opt(dw, "grad_weight");
          py::gil_scoped_release nogil;
          lf::rmsnorm_gemm_bwd(DY.view, X.view, G.view, W.view, R.view, ptr(DA), ptr(DW), threads, stream);
        },
        py::arg("grad_y"), py::arg("x"), py::arg("norm_weight"), py::arg("weight"), py::arg("rstd"),
        py::arg("grad_a"), py::arg("grad_weight"), py::arg("threads"), py::arg("stream") = 0);

  // ---- quantized matmul (int4, int8, W8A8) ---------------------------------------
  m.def("int4_matmul",
        [](py::handle x, py::handle packed, py::handle scales, py::handle zeros, py::handle y, int64_t group_size,
           int threads) {
          auto X = to_view(x, "x"), P = to_view(packed, "packed"), S = to_view(scales, "scales");
          auto Z = to_view(zeros, "zeros"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::int4_matmul(X.view, P.view, S.view, Z.view, Y.view, group_size, threads);
        },
        py::arg("x"), py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("y"), py::arg("group_size"),
        py::arg("threads"));
  m.def("int4_dequant",
        [](py::handle packed, py::handle scales, py::handle zeros, py::handle w, int64_t row0, int64_t group_size,
           int threads) {
          auto P = to_view(packed, "packed"), S = to_view(scales, "scales"), Z = to_view(zeros, "zeros");
          auto W = to_view(w, "w");
          py::gil_scoped_release nogil;
          lf::int4_dequant(P.view, S.view, Z.view, W.view, row0, group_size, threads);
        },
        py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("w"), py::arg("row0"), py::arg("group_size"),
        py::arg("threads"));
  m.def("int8_matmul",
        [](py::handle x, py::handle q, py::handle scale, py::handle y, int threads) {
          auto X = to_view(x, "x"), Q = to_view(q, "q"), S = to_view(scale, "scale"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::int8_matmul(X.view, Q.view, S.view, Y.view, threads);
        },
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("y"), py::arg("threads"));
  m.def("w8a8_matmul",
        [](py::handle xq, py::handle xscale, py::handle q, py::handle scale, py::handle y, int threads) {
          auto XQ = to_view(xq, "xq"), XS = to_view(xscale, "xscale"), Q = to_view(q, "q");
          auto S = to_view(scale, "scale"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::w8a8_matmul(XQ.view, XS.view, Q.view, S.view, Y.view, threads);
        },
        py::arg("xq"), py::arg("xscale"), py::arg("q"), py::arg("scale"), py::arg("y"), py::arg("threads"));

  // ---- quantized matmul on CUDA (kernels/int4_matmul.cu, kernels/int8_matmul.cu) -------
  m.def("int4_cuda_workspace_floats", &lf::int4_cuda_workspace_floats, py::arg("M"), py::arg("N"));
  m.def("int8_cuda_workspace_floats", &lf::int8_cuda_workspace_floats, py::arg("M"), py::arg("N"));
  m.def("int4_matmul_cuda",
        [](py::handle x, py::handle packed, py::handle scales, py::handle zeros, py::handle y, py::handle ws,
           int64_t group_size, intptr_t stream) {
          auto X = to_view(x, "x"), P = to_view(packed, "packed"), S = to_view(scales, "scales");
          auto Z = to_view(zeros, "zeros"), Y = to_view(y, "y"), W = to_view(ws, "workspace");
          py::gil_scoped_release nogil;
          lf::int4_matmul_cuda(X.view, P.view, S.view, Z.view, Y.view, W.view, group_size, stream);
        },
        py::arg("x"), py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("y"), py::arg("workspace"),
        py::arg("group_size"), py::arg("stream"));
  m.def("int4_grad_x_cuda",
        [](py::handle dy, py::handle packed, py::handle scales, py::handle zeros, py::handle dx, int64_t group_size,
           intptr_t stream) {
          auto DY = to_view(dy, "grad_y"), P = to_view(packed, "packed"), S = to_view(scales, "scales");
          auto Z = to_view(zeros, "zeros"), DX = to_view(dx, "grad_x");
          py::gil_scoped_release nogil;
          lf::int4_grad_x_cuda(DY.view, P.view, S.view, Z.view, DX.view, group_size, stream);
        },
        py::arg("grad_y"), py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("grad_x"),
        py::arg("group_size"), py::arg("stream"));
  m.def("int4_dequant_cuda",
        [](py::handle packed, py::handle scales, py::handle zeros, py::handle w, int64_t row0, int64_t group_size,
           intptr_t stream) {
          auto P = to_view(packed, "packed"), S = to_view(scales, "scales"), Z = to_view(zeros, "zeros");
          auto W = to_view(w, "w");
          py::gil_scoped_release nogil;
          lf::int4_dequant_cuda(P.view, S.view, Z.view, W.view, row0, group_size, stream);
        },
        py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("w"), py::arg("row0"), py::arg("group_size"),
        py::arg("stream"));
  m.def("int8_matmul_cuda",
        [](py::handle x, py::handle q, py::handle scale, py::handle y, py::handle ws, intptr_t stream) {
          auto X = to_view(x, "x"), Q = to_view(q, "q"), S = to_view(scale, "scale"), Y = to_view(y, "y");
          auto W = to_view(ws, "workspace");
          py::gil_scoped_release nogil;
          lf::int8_matmul_cuda(X.view, Q.view, S.view, Y.view, W.view, stream);
        },
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("y"), py::arg("workspace"), py::arg("stream"));
  m.def("w8a8_matmul_cuda",
        [](py::handle xq, py::handle xscale, py::handle q, py::handle scale, py::handle y, intptr_t stream) {
          auto XQ = to_view(xq, "xq"), XS = to_view(xscale, "xscale"), Q = to_view(q, "q");
          auto S = to_view(scale, "scale"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::w8a8_matmul_cuda(XQ.view, XS.view, Q.view, S.view, Y.view, stream);
        },
        py::arg("xq"), py::arg("xscale"), py::arg("q"), py::arg("scale"), py::arg("y"), py::arg("stream"));
  // ---- attention ----
  m.def("attention_fwd",
        [](py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse, bool causal, double scale,
           int64_t window, int threads) {
          auto Q = to_view(q, "q"), K = to_view(k, "k"), V = to_view(v, "v"), O = to_view(out, "out");
          auto L = to_view(lse, "lse");
          py::gil_scoped_release nogil;
          lf::attention_fwd(Q.view, K.view, V.view, O.view, L.view, causal, scale, window, threads);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("causal"),
        py::arg("scale"), py::arg("window"), py::arg("threads"));
  m.def("attention_bwd",
        [](py::handle dout, py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
           py::handle dlse, py::handle dq, py::handle dk, py::handle dv, bool causal, double scale, int64_t window,
           int threads) {
          auto DO = to_view(dout, "grad_out"), Q = to_view(q, "q"), K = to_view(k, "k"), V = to_view(v, "v");
          auto O = to_view(out, "out"), L = to_view(lse, "lse"), DQ = to_view(dq, "grad_q");
          auto DK = to_view(dk, "grad_k"), DV = to_view(dv, "grad_v");
          auto DL = to_view_opt(dlse, "grad_lse");
          py::gil_scoped_release nogil;
          lf::attention_bwd(DO.view, Q.view, K.view, V.view, O.view, L.view, ptr(DL), DQ.view, DK.view, DV.view,
                            causal, scale, window, threads);
        },
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("grad_lse"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"), py::arg("causal"),
        py::arg("scale"), py::arg("window"), py::arg("threads"));
  // ---- CUDA fused attention and paged KV cache (kernels/flash_attn_*.cu, kernels/paged_attn.cu) ----
  m.def("flash_attn_fwd",
        [](py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse, py::handle cu_q, py::handle cu_k,
           int64_t max_q, int64_t max_k, bool causal, double scale, int64_t window, intptr_t stream) {
          auto Q = to_view(q, "q"), K = to_view(k, "k"), V = to_view(v, "v"), O = to_view(out, "out");
          auto L = to_view(lse, "lse");
          auto CQ = to_view_opt(cu_q, "cu_seqlens_q"), CK = to_view_opt(cu_k, "cu_seqlens_k");
          py::gil_scoped_release nogil;
          lf::flash_attn_fwd(Q.view, K.view, V.view, O.view, L.view, ptr(CQ), ptr(CK), max_q, max_k, causal, scale,
                             window, stream);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("cu_seqlens_q"),
        py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"), py::arg("max_seqlen_k"), py::arg("causal"),
        py::arg("scale"), py::arg("window"), py::arg("stream"));
  m.def("flash_attn_bwd",
        [](py::handle dout, py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
           py::handle dlse, py::handle dq, py::handle dk, py::handle dv, py::handle delta, py::handle cu_q,
           py::handle cu_k, int64_t max_q, int64_t max_k, bool causal, double scale, int64_t window,
           intptr_t stream) {
          auto DO = to_view(dout, "grad_out"), Q = to_view(q, "q"), K = to_view(k, "k"), V = to_view(v, "v");
          auto O = to_view(out, "out"), L = to_view(lse, "lse"), DQ = to_view(dq, "grad_q");
          auto DK = to_view(dk, "grad_k"), DV = to_view(dv, "grad_v"), DE = to_view(delta, "delta");
          auto DL = to_view_opt(dlse, "grad_lse");
          auto CQ = to_view_opt(cu_q, "cu_seqlens_q"), CK = to_view_opt(cu_k, "cu_seqlens_k");
          py::gil_scoped_release nogil;
          lf::flash_attn_bwd(DO.view, Q.view, K.view, V.view, O.view, L.view, ptr(DL), DQ.view, DK.view, DV.view,
                             DE.view, ptr(CQ), ptr(CK), max_q, max_k, causal, scale, window, stream);
        },
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("grad_lse"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"), py::arg("delta"),
        py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"), py::arg("max_seqlen_k"),
        py::arg("causal"), py::arg("scale"), py::arg("window"), py::arg("stream"));
  m.def("paged_kv_append_cuda",
        [](py::handle k_pool, py::handle v_pool, py::handle table, py::handle lens, py::handle k_new,
           py::handle v_new, py::handle counts, intptr_t stream) {
          auto KP = to_view(k_pool, "k_pool"), VP = to_view(v_pool, "v_pool"), T = to_view(table, "block_table");
          auto L = to_view(lens, "seq_lens"), KN = to_view(k_new, "k_new"), VN = to_view(v_new, "v_new");
          auto CN = to_view_opt(counts, "counts");
          py::gil_scoped_release nogil;
          lf::paged_kv_append_cuda(KP.view, VP.view, T.view, L.view, KN.view, VN.view, ptr(CN), stream);
        },
        py::arg("k_pool"), py::arg("v_pool"), py::arg("block_table"), py::arg("seq_lens"), py::arg("k_new"),
        py::arg("v_new"), py::arg("counts"), py::arg("stream"));
  m.def("paged_decode_workspace_cuda",
        [](py::handle q, py::handle k_pool, py::handle table, int64_t max_len) {
          auto Q = to_view(q, "q"), KP = to_view(k_pool, "k_pool"), T = to_view(table, "block_table");
          return lf::paged_decode_workspace_cuda(Q.view, KP.view, T.view, max_len);
        },
        py::arg("q"), py::arg("k_pool"), py::arg("block_table"), py::arg("max_len"));
  m.def("paged_decode_attention_cuda",
        [](py::handle q, py::handle k_pool, py::handle v_pool, py::handle table, py::handle lens, py::handle out,
           py::handle workspace, double scale, int64_t max_len, intptr_t stream) {
          auto Q = to_view(q, "q"), KP = to_view(k_pool, "k_pool"), VP = to_view(v_pool, "v_pool");
          auto T = to_view(table, "block_table"), L = to_view(lens, "seq_lens"), O = to_view(out, "out");
          auto WS = to_view_opt(workspace, "workspace");
          py::gil_scoped_release nogil;
          lf::paged_decode_attention_cuda(Q.view, KP.view, VP.view, T.view, L.view, O.view, ptr(WS), scale, max_len,
                                          stream);
        },
        py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("block_table"), py::arg("seq_lens"),
        py::arg("out"), py::arg("workspace"), py::arg("scale"), py::arg("max_len"), py::arg("stream"));

  // ---- ggml (GGUF) block quantisation ---------------------------------------------
  m.def("ggml_quantize",
        [](py::handle x, py::handle q, int type, int threads) {
          auto X = to_view(x, "x"), Q = to_view(q, "q");
          py::gil_scoped_release nogil;
          lf::ggml_quantize(X.view, Q.view, type, threads);
        },
        py::arg("x"), py::arg("q"), py::arg("type"), py::arg("threads"));
  m.def("ggml_dequantize",
        [](py::handle q, py::handle y, int type, int threads) {
          auto Q = to_view(q, "q"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::ggml_dequantize(Q.view, Y.view, type, threads);
        },
        py::arg("q"), py::arg("y"), py::arg("type"), py::arg("threads"));

  // ---- native decode step (one call per token; python/llmforge/generate/native.py) ------
  py::class_<PyDecodeModel>(m, "DecodeModel")
      .def(py::init([](const py::dict& cfg, py::handle embed, py::handle cos, py::handle sin, py::handle final_norm,
                       const py::dict& output, const py::list& layers, int threads, py::handle cos_local,
                       py::handle sin_local) {
             auto self = std::make_unique<PyDecodeModel>();
             auto geti = [&](const char* k) { return cfg[k].cast<int64_t>(); };
             lf::DecodeConfig c{geti("dim"), geti("n_layers"), geti("n_heads"), geti("n_kv_heads"), geti("head_dim"),
                                geti("ffn_dim"), geti("vocab"), geti("max_len"), cfg["eps"].cast<double>(),
                                cfg["act_q8"].cast<bool>()};
             if (cfg.contains("n_experts")) {  // MoE: every layer dict holds "moe" instead of gate/up/down
               c.n_experts = geti("n_experts");
               c.top_k = geti("top_k");
               c.expert_ffn = geti("expert_ffn_dim");
               c.shared_ffn = cfg.contains("shared_ffn_dim") ? geti("shared_ffn_dim") : 0;
               c.norm_topk = cfg["norm_topk"].cast<bool>();
             }
             // Gemma's options: absent or None when unused
             auto getf = [&](const char* k) {
               return cfg.contains(k) && !cfg[k].is_none() ? cfg[k].cast<double>() : 0.0;
             };
             c.gelu = cfg.contains("gelu_tanh") && cfg["gelu_tanh"].cast<bool>();
             c.embed_scale = getf("embed_scale");
             c.attn_scale = getf("attn_scale");
             c.attn_softcap = getf("attn_softcap");
             c.final_softcap = getf("final_softcap");
             const TensorView* E = self->hold(embed, "embed");
             const TensorView* C = self->hold(cos, "rope_cos");
             const TensorView* S = self->hold(sin, "rope_sin");
             const TensorView* FN = self->hold(final_norm, "final_norm");
             const TensorView* CL = cos_local.is_none() ? nullptr : self->hold(cos_local, "rope_cos_local");
             const TensorView* SL = sin_local.is_none() ? nullptr : self->hold(sin_local, "rope_sin_local");
             lf::DecodeLinearViews out = self->linear(output, "output");
             std::vector<lf::DecodeLayerViews> ls;
             for (size_t i = 0; i < layers.size(); ++i) {
               const py::dict d = layers[i].cast<py::dict>();
               const std::string p = "layers." + std::to_string(i) + ".";
               // the norms in front of attention / the FFN: absent or None without them (OLMo 2/3)
               auto opt = [&](const char* key) -> const TensorView* {
                 return d.contains(key) && !d[key].is_none() ? self->hold(d[key], p + key) : nullptr;
               };
               lf::DecodeLayerViews v{opt("attn_norm"), opt("mlp_norm"),
                                      self->linear(d["q"].cast<py::dict>(), p + "q"),
                                      self->linear(d["k"].cast<py::dict>(), p + "k"),
                                      self->linear(d["v"].cast<py::dict>(), p + "v"),
                                      self->linear(d["o"].cast<py::dict>(), p + "o")};
               if (c.n_experts > 0) {
                 const py::dict moe = d["moe"].cast<py::dict>();
                 v.moe.router = self->hold(moe["router"], p + "router");
                 const py::list experts = moe["experts"].cast<py::list>();
                 for (size_t e = 0; e < experts.size(); ++e) {
                   const py::dict x = experts[e].cast<py::dict>();
                   const std::string q = p + "experts." + std::to_string(e) + ".";
                   for (const char* k : {"gate", "up", "down"}) v.moe.experts.push_back(self->linear(x[k].cast<py::dict>(), q + k));
                 }
                 if (moe.contains("shared") && !moe["shared"].is_none()) {
                   const py::dict sh = moe["shared"].cast<py::dict>();
                   v.moe.shared_gate = self->hold(sh["gate_w"], p + "shared.gate_w");
                   v.moe.sh_gate = self->linear(sh["gate"].cast<py::dict>(), p + "shared.gate");
                   v.moe.sh_up = self->linear(sh["up"].cast<py::dict>(), p + "shared.up");
                   v.moe.sh_down = self->linear(sh["down"].cast<py::dict>(), p + "shared.down");
                 }
               } else {
                 v.gate = self->linear(d["gate"].cast<py::dict>(), p + "gate");
                 v.up = self->linear(d["up"].cast<py::dict>(), p + "up");
                 v.down = self->linear(d["down"].cast<py::dict>(), p + "down");
               }
               // query/key norms, per head (Qwen3) or over the whole projection (OLMo 2/3): absent or
               // None for other models
               for (const char* key : {"q_norm", "k_norm"})
                 if (d.contains(key) && !d[key].is_none())
                   (key[0] == 'q' ? v.q_norm : v.k_norm) = self->hold(d[key], p + key);
               // Gemma 2/3's norms of the sublayer outputs, Gemma 3's local RoPE: likewise optional
               for (const char* key : {"post_attn_norm", "post_ffn_norm"})
                 if (d.contains(key) && !d[key].is_none())
                   (key[5] == 'a' ? v.post_attn_norm : v.post_ffn_norm) = self->hold(d[key], p + key);
               v.local_rope = d.contains("local_rope") && d["local_rope"].cast<bool>();
               // SmolLM3's NoPE layers: "rope": False (absent or True: RoPE as usual)
               if (d.contains("rope")) {
                 const py::handle r = d["rope"];
                 if (!py::isinstance<py::bool_>(r))
                   throw py::type_error("DecodeModel: " + p + "rope must be a bool, got " +
                                        std::string(py::str(py::type::handle_of(r).attr("__name__"))));
                 v.rope = r.cast<bool>();
               }
               v.window = d.contains("window") && !d["window"].is_none() ? d["window"].cast<int64_t>() : 0;
               ls.push_back(v);
             }
             self->impl = std::make_unique<lf::DecodeModel>(c, *E, *C, *S, *FN, out, ls, threads, CL, SL);
             return self;
           }),
           py::arg("config"), py::arg("embed"), py::arg("rope_cos"), py::arg("rope_sin"), py::arg("final_norm"),
           py::arg("output"), py::arg("layers"), py::arg("threads"), py::arg("rope_cos_local") = py::none(),
           py::arg("rope_sin_local") = py::none())
      .def("forward",
           [](PyDecodeModel& self, py::handle tokens, py::handle logits, bool all_logits) {
             const std::vector<int64_t> ids = ids_from_seq(tokens, "DecodeModel.forward tokens");
             auto L = to_view(logits, "logits");
             py::gil_scoped_release nogil;
             self.impl->forward(ids, L.view, all_logits);
           },
           py::arg("tokens"), py::arg("logits"), py::arg("all_logits") = false)
      .def("forward_paged",
           [](PyDecodeModel& self, py::handle tokens, py::handle positions, py::handle seqs, py::handle table,
              py::handle k_pools, py::handle v_pools, py::handle logits, py::handle out_rows) {
             const std::vector<int64_t> ids = ids_from_seq(tokens, "DecodeModel.forward_paged tokens");
             const std::vector<int64_t> pos = ids_from_seq(positions, "DecodeModel.forward_paged positions");
             const std::vector<int64_t> sq = ids_from_seq(seqs, "DecodeModel.forward_paged seqs");
             const std::vector<int64_t> rows = ids_from_seq(out_rows, "DecodeModel.forward_paged out_rows");
             auto T = to_view(table, "block_table"), K = to_view(k_pools, "k_pools"), V = to_view(v_pools, "v_pools");
             auto L = to_view(logits, "logits");
             py::gil_scoped_release nogil;
             self.impl->forward_paged(ids, pos, sq, T.view, K.view, V.view, L.view, rows);
           },
           py::arg("tokens"), py::arg("positions"), py::arg("seqs"), py::arg("block_table"), py::arg("k_pools"),
           py::arg("v_pools"), py::arg("logits"), py::arg("out_rows"))
      .def("truncate", [](PyDecodeModel& self, int64_t n) { self.impl->truncate(n); }, py::arg("n"))
      .def("load_cache",
           [](PyDecodeModel& self, py::handle k, py::handle v) {
             auto K = to_view(k, "k"), V = to_view(v, "v");
             py::gil_scoped_release nogil;
             self.impl->load_cache(K.view, V.view);
           },
           py::arg("k"), py::arg("v"))
      .def_property_readonly("length", [](const PyDecodeModel& self) { return self.impl->length(); })
      .def_property_readonly("max_len", [](const PyDecodeModel& self) { return self.impl->max_len(); })
      .def_property(
          "threads", [](const PyDecodeModel& self) { return self.impl->threads(); },
          [](PyDecodeModel& self, int t) { self.impl->set_threads(t); });

  // ---- cross_entropy -----------------------------------------------------------
  m.def("cross_entropy_fwd",
        [](py::handle logits, py::handle targets, py::handle loss, py::handle lse, py::handle grad,
           int64_t ignore_index, int threads) {
          auto X = to_view(logits, "logits"), T = to_view(targets, "targets");
          auto L = to_view(loss, "loss"), S = to_view(lse, "lse");
          auto G = to_view_opt(grad, "grad");
          py::gil_scoped_release nogil;
          lf::cross_entropy_fwd(X.view, T.view, L.view, S.view, ptr(G), ignore_index, threads);
        },
        py::arg("logits"), py::arg("targets"), py::arg("loss"), py::arg("lse"), py::arg("grad"),
        py::arg("ignore_index"), py::arg("threads"));
  m.def("cross_entropy_bwd",
        [](py::handle logits, py::handle targets, py::handle lse, py::handle grad_loss, py::handle grad,
           int64_t ignore_index, int threads) {
          auto X = to_view(logits, "logits"), T = to_view(targets, "targets");
          auto S = to_view(lse, "lse"), DL = to_view(grad_loss, "grad_loss"), G = to_view(grad, "grad");
          py::gil_scoped_release nogil;
          lf::cross_entropy_bwd(X.view, T.view, S.view, DL.view, G.view, ignore_index, threads);
        },
        py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("grad_loss"), py::arg("grad"),
        py::arg("ignore_index"), py::arg("threads"));
}
