// CUDA build: the device probe. The copy engines come with the GPU hot-path issue.
#include <cuda_runtime.h>

#include "fastps/device.h"

namespace fastps {

bool cuda_available() noexcept {
  int n = 0;
  // Without a driver this returns an error code (cudart is static), which means "no GPU".
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

bool built_with_cuda() noexcept { return true; }

}  // namespace fastps
