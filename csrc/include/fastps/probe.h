// STREAM-style kernels that measure what the machine's memory gives a single thread, so the
// store benchmark can report its throughput as a fraction of it (same compiler, same flags).
#pragma once

#include <cstddef>

namespace fastps {

/// dst[i] = src[i] (8 bytes moved per element). Blocks; thread-safe for disjoint buffers.
void probe_copy(float* dst, const float* src, size_t n);
/// a[i] = b[i] + s * c[i] (three streams, 12 bytes per element: a leashed push's shape).
void probe_triad(float* a, const float* b, const float* c, float s, size_t n);
/// w[i] += s * g[i] in place (two streams, 12 bytes per element: a locked/hogwild push's shape).
void probe_axpy(float* w, const float* g, float s, size_t n);
/// The instruction set the store's kernels (and these probes) run with here: "avx2" or "base".
const char* kernel_isa();

}  // namespace fastps
