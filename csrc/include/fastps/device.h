// What the build and the machine offer for the CUDA path.
#pragma once

namespace fastps {

/// True when a CUDA driver and at least one GPU answer (always false in a CPU-only build).
/// Never throws; safe on machines without a driver (cudart is linked statically).
bool cuda_available() noexcept;
/// True when the extension was compiled with the CUDA path.
bool built_with_cuda() noexcept;

}  // namespace fastps
