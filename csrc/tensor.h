// tensor.h — the view of a tensor that crosses the native boundary, and the
// argument checks every op runs on it. No torch and no pybind11 here: a view is
// a pointer, a shape, element strides, a dtype and a device, filled from a
// DLPack capsule by bindings.cpp.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

namespace lf {

// Raised for a wrong dtype (Python TypeError) or any other bad argument (ValueError).
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };

enum class DType : int { f32, f16, bf16, f64, i8, u8, i16, i32, i64, other };
enum class DeviceKind : int { cpu, cuda, other };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::i16: return "int16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    default: return "unsupported dtype";
  }
}

inline int dtype_size(DType d) {
  switch (d) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: case DType::i16: return 2;
    case DType::i8: case DType::u8: return 1;
    default: return 0;
  }
}

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  DType dtype = DType::other;
  DeviceKind device = DeviceKind::other;
  int device_index = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t size(int i) const { return shape[i < 0 ? i + ndim : i]; }
  int64_t stride(int i) const { return strides[i < 0 ? i + ndim : i]; }
  bool is_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
  std::string shape_str() const {
    std::ostringstream s;
    s << "(";
    for (int i = 0; i < ndim; ++i) s << shape[i] << (i + 1 < ndim ? ", " : "");
    s << (ndim == 1 ? ",)" : ")");
    return s.str();
  }
};

// ---- checks: plain messages naming the op and the argument --------------------
template <class... A>
[[noreturn]] inline void fail_value(const A&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw ValueError(s.str());
}
template <class... A>
[[noreturn]] inline void fail_type(const A&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw TypeError(s.str());
}

#define LF_CHECK(cond, ...) \
  do { if (!(cond)) ::lf::fail_value(__VA_ARGS__); } while (0)

inline void check_dtype(const char* op, const char* arg, const TensorView& t,
                        std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::ostringstream s;
  s << op << ": " << arg << " has dtype " << dtype_name(t.dtype) << ", expected one of {";
  bool first = true;
  for (DType d : allowed) { s << (first ? "" : ", ") << dtype_name(d); first = false; }
  s << "}";
  throw TypeError(s.str());
}

inline void check_same_dtype(const char* op, const char* arg, const TensorView& t, const TensorView& ref,
                             const char* ref_name) {
  if (t.dtype != ref.dtype)
    fail_type(op, ": ", arg, " has dtype ", dtype_name(t.dtype), " but ", ref_name, " has ",
              dtype_name(ref.dtype), "; they must match");
}

inline void check_contiguous(const char* op, const char* arg, const TensorView& t) {
  LF_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous (shape ", t.shape_str(),
           "); call .contiguous() first");
}

inline void check_ndim(const char* op, const char* arg, const TensorView& t, int ndim) {
  LF_CHECK(t.ndim == ndim, op, ": ", arg, " must have ", ndim, " dimensions, got shape ", t.shape_str());
}

inline void check_shape(const char* op, const char* arg, const TensorView& t,
                        std::initializer_list<int64_t> shape) {
  bool ok = t.ndim == static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) { if (ok && t.shape[i] != s) ok = false; ++i; }
  if (!ok) {
    std::ostringstream s;
    s << op << ": " << arg << " has shape " << t.shape_str() << ", expected (";
    i = 0;
    for (int64_t d : shape) { s << d << (++i < static_cast<int>(shape.size()) ? ", " : ""); }
    s << (shape.size() == 1 ? ",)" : ")");
    throw ValueError(s.str());
  }
}

inline void check_same_device(const char* op, const char* arg, const TensorView& t, const TensorView& ref,
                              const char* ref_name) {
  LF_CHECK(t.device == ref.device && t.device_index == ref.device_index, op, ": ", arg, " and ", ref_name,
           " are on different devices");
}

inline void check_cpu(const char* op, const char* arg, const TensorView& t) {
  LF_CHECK(t.device == DeviceKind::cpu, op, ": ", arg, " must be a CPU tensor");
}

inline void check_aligned(const char* op, const char* arg, const TensorView& t, int bytes) {
  LF_CHECK(reinterpret_cast<uintptr_t>(t.data) % bytes == 0, op, ": ", arg, " must be ", bytes,
           "-byte aligned");
}

}  // namespace lf
