// CPU-only build: no CUDA path was compiled.
#include "fastps/device.h"

namespace fastps {

bool cuda_available() noexcept { return false; }
bool built_with_cuda() noexcept { return false; }

}  // namespace fastps
