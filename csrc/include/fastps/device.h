// What the build and the machine offer for the CUDA path.
#pragma once

#include <cstddef>
#include <string>

namespace fastps {

/// True when a CUDA driver and at least one GPU answer (always false in a CPU-only build).
/// Never throws; safe on machines without a driver (cudart is linked statically).
bool cuda_available() noexcept;
/// True when the extension was compiled with the CUDA path.
bool built_with_cuda() noexcept;
/// Page-locks [p, p + bytes) for CUDA copies (cudaHostRegister). Returns "" on success, else
/// the reason (always a reason in a CPU-only build or without a GPU).
std::string pin_host(void* p, size_t bytes);
/// Undoes pin_host(p, ...). Never throws; errors are ignored (called from destructors).
void unpin_host(void* p) noexcept;

}  // namespace fastps
