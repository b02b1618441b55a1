// runtime.cu — see runtime.cuh.
#include <cuda_runtime.h>

#include "runtime.cuh"

namespace lf::cuda {

int device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error (e.g. cudaErrorInsufficientDriver)
    return 0;
  }
  return n;
}

const char* device_name(int device) {
  static thread_local cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "unknown";
  }
  return prop.name;
}

}  // namespace lf::cuda
