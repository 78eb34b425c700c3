#include "fastps/probe.h"

#include <cstring>

namespace fastps {

void probe_copy(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void probe_triad(float* __restrict a, const float* __restrict b, const float* __restrict c, float s,
                 size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

void probe_axpy(float* __restrict w, const float* __restrict g, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] = w[i] + s * g[i];
}

}  // namespace fastps
