// skinny_gemm.cu — the split-K plan and the deterministic split-K reduction used by the
// decode-shaped weight-only matmuls (kernels/skinny_gemm.cuh).
#include <cuda_runtime.h>

#include "skinny_gemm.cuh"

namespace lf::cuda {
namespace {

__global__ void splitk_reduce_kernel(const float* __restrict__ ws, float* __restrict__ y, int64_t count, int splits) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < splits; ++k) s += ws[k * count + i];  // fixed order: bitwise reproducible
    y[i] = s;
  }
}

}  // namespace

void splitk_reduce(const float* ws, float* y, int64_t count, int splits, cudaStream_t s) {
  int64_t blocks = (count + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  splitk_reduce_kernel<<<static_cast<unsigned>(blocks), 256, 0, s>>>(ws, y, count, splits);
}

int skinny_splits(int64_t N, int64_t K, int kK, int max_splits, int* kb_per_split) {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    sms = 108;
  }
  const int64_t nblocks = (N + kSkinnyRows - 1) / kSkinnyRows;
  const int64_t nkb = (K + kK - 1) / kK;
  int64_t splits = (4 * static_cast<int64_t>(sms) + nblocks - 1) / nblocks;
  if (splits > max_splits) splits = max_splits;
  if (splits > nkb) splits = nkb;
  if (splits < 1) splits = 1;
  const int64_t kps = (nkb + splits - 1) / splits;
  *kb_per_split = static_cast<int>(kps);
  return static_cast<int>((nkb + kps - 1) / kps);  // no empty split
}

}  // namespace lf::cuda
