// CPU-only build: no CUDA path was compiled.
#include "fastps/check.h"
#include "fastps/device.h"
#include "fastps/transfer.h"
#include "pin_host.h"

namespace fastps {

bool cuda_available() noexcept { return false; }
bool built_with_cuda() noexcept { return false; }
std::string pin_host(void*, size_t) { return "fastps was built without CUDA"; }
void unpin_host(void*) noexcept {}

std::unique_ptr<CopyEngine> make_cuda_engine(int) {
  FASTPS_CHECK(false,
               "transfer: fastps was built without CUDA (reinstall with nvcc on PATH or "
               "FASTPS_CUDA=ON)");
  return nullptr;
}

}  // namespace fastps
