// ggml_quants.h — llama.cpp's GGUF block quantisation at the native boundary: argument
// checks, then the CPU kernels (csrc/cpu/ggml_quants.cpp).
#pragma once
#include "tensor.h"

namespace lf {

// x: (rows, cols) float32, contiguous, finite; cols a multiple of the type's block size.
// q: (rows, cols / block * block_bytes) uint8, contiguous. type: ggml's enum ggml_type id.
void ggml_quantize(const TensorView& x, const TensorView& q, int type, int threads);
// The inverse: q as above, y (rows, cols) float32. Raises if a block decodes to a
// non-finite value (corrupt bytes).
void ggml_dequantize(const TensorView& q, const TensorView& y, int type, int threads);

}  // namespace lf
