// bindings.cpp — the only file that includes pybind11: turns Python arguments into
// TensorViews (via DLPack; no torch headers anywhere in csrc/) and defines one
// function per op. Argument checks live in each op's adapter (csrc/<op>.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "device.h"
#include "dlpack.h"
#include "isa.h"
#include "rmsnorm.h"
#include "rmsnorm_gemm.h"
#include "rope.h"
#include "swiglu.h"
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

Arg to_view(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw lf::TypeError(std::string(name) + " is None, expected a tensor");
  py::object cap;
  if (PyCapsule_CheckExact(obj.ptr())) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else if (py::hasattr(obj, "__dlpack__")) {
    cap = obj.attr("__dlpack__")();
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

}  // namespace

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

  // ---- rope --------------------------------------------------------------------
  m.def("rope_apply",
        [](py::handle x, py::handle cos, py::handle sin, py::handle pos, py::handle y, const std::string& style,
           bool inverse, int threads) {
          auto X = to_view(x, "x"), Cs = to_view(cos, "cos"), Sn = to_view(sin, "sin"), Y = to_view(y, "y");
          auto P = to_view_opt(pos, "positions");
          py::gil_scoped_release nogil;
          lf::rope_apply(X.view, Cs.view, Sn.view, ptr(P), Y.view, style.c_str(), inverse, threads);
        },
        py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("positions"), py::arg("y"), py::arg("style"),
        py::arg("inverse"), py::arg("threads"));

  // ---- swiglu ------------------------------------------------------------------
  m.def("swiglu_fwd",
        [](py::handle gate, py::handle up, py::handle y, int threads) {
          auto G = to_view(gate, "gate"), U = to_view(up, "up"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::swiglu_fwd(G.view, U.view, Y.view, threads);
        },
        py::arg("gate"), py::arg("up"), py::arg("y"), py::arg("threads"));
  m.def("swiglu_bwd",
        [](py::handle dy, py::handle gate, py::handle up, py::handle dgate, py::handle dup, int threads) {
          auto DY = to_view(dy, "grad_y"), G = to_view(gate, "gate"), U = to_view(up, "up");
          auto DG = to_view(dgate, "grad_gate"), DU = to_view(dup, "grad_up");
          py::gil_scoped_release nogil;
          lf::swiglu_bwd(DY.view, G.view, U.view, DG.view, DU.view, threads);
        },
        py::arg("grad_y"), py::arg("gate"), py::arg("up"), py::arg("grad_gate"), py::arg("grad_up"),
        py::arg("threads"));
  m.def("swiglu_packed_fwd",
        [](py::handle x, py::handle y, int threads) {
          auto X = to_view(x, "x"), Y = to_view(y, "y");
          py::gil_scoped_release nogil;
          lf::swiglu_packed_fwd(X.view, Y.view, threads);
        },
        py::arg("x"), py::arg("y"), py::arg("threads"));
  m.def("swiglu_packed_bwd",
        [](py::handle dy, py::handle x, py::handle dx, int threads) {
          auto DY = to_view(dy, "grad_y"), X = to_view(x, "x"), DX = to_view(dx, "grad_x");
          py::gil_scoped_release nogil;
          lf::swiglu_packed_bwd(DY.view, X.view, DX.view, threads);
        },
        py::arg("grad_y"), py::arg("x"), py::arg("grad_x"), py::arg("threads"));

  // ---- rmsnorm_gemm ------------------------------------------------------------
  m.def("rmsnorm_gemm_fwd",
        [](py::handle x, py::handle g, py::handle w, py::handle y, py::handle rstd, double eps, int threads,
           int path) {
          auto X = to_view(x, "x"), G = to_view(g, "norm_weight"), W = to_view(w, "weight"), Y = to_view(y, "y");
          auto R = to_view(rstd, "rstd");
          py::gil_scoped_release nogil;
          lf::rmsnorm_gemm_fwd(X.view, G.view, W.view, Y.view, R.view, eps, threads, path);
        },
        py::arg("x"), py::arg("norm_weight"), py::arg("weight"), py::arg("y"), py::arg("rstd"), py::arg("eps"),
        py::arg("threads"), py::arg("path") = 0);
  m.def("rmsnorm_gemm_bwd",
        [](py::handle dy, py::handle x, py::handle g, py::handle w, py::handle rstd, py::handle da, py::handle dw,
           int threads) {
          auto DY = to_view(dy, "grad_y"), X = to_view(x, "x"), G = to_view(g, "norm_weight");
          auto W = to_view(w, "weight"), R = to_view(rstd, "rstd");
          auto DA = to_view_opt(da, "grad_a"), DW = to_view_opt(dw, "grad_weight");
          py::gil_scoped_release nogil;
          lf::rmsnorm_gemm_bwd(DY.view, X.view, G.view, W.view, R.view, ptr(DA), ptr(DW), threads);
        },
        py::arg("grad_y"), py::arg("x"), py::arg("norm_weight"), py::arg("weight"), py::arg("rstd"),
        py::arg("grad_a"), py::arg("grad_weight"), py::arg("threads"));
}
