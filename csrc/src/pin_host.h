// Page-locking of store memory for CUDA copy engines (cudaHostRegister). Internal: the Store
// pins its own arena (Store::pin_memory) and unpins it when it goes.
#pragma once

#include <cstddef>
#include <string>

namespace fastps {

/// Page-locks [p, p + bytes) for CUDA copies (cudaHostRegister). Returns "" on success, else
/// the reason (always a reason in a CPU-only build or without a GPU).
std::string pin_host(void* p, size_t bytes);
/// Undoes pin_host(p, ...). Never throws; errors are ignored (called from destructors).
void unpin_host(void* p) noexcept;

}  // namespace fastps
