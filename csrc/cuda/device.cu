// CUDA build: the device probe and page-locking of store memory.
#include <cuda_runtime.h>

#include "fastps/device.h"
#include "pin_host.h"

namespace fastps {

bool cuda_available() noexcept {
  int n = 0;
  // Without a driver this returns an error code (cudart is static), which means "no GPU".
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

bool built_with_cuda() noexcept { return true; }

std::string pin_host(void* p, size_t bytes) {
  if (!cuda_available()) return "no CUDA device answers";
  const cudaError_t err = cudaHostRegister(p, bytes, cudaHostRegisterPortable);
  if (err == cudaSuccess) return "";
  cudaGetLastError();  // clear it: a failed registration leaves the context usable
  return std::string("cudaHostRegister failed: ") + cudaGetErrorString(err);
}

void unpin_host(void* p) noexcept {
  if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
}

}  // namespace fastps
