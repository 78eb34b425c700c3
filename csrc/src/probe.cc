#include "fastps/probe.h"

#include <cstring>

#include "kernels.h"

namespace fastps {

void probe_copy(float* dst, const float* src, size_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

void probe_triad(float* a, const float* b, const float* c, float s, size_t n) {
  detail::triad(a, b, c, s, n);
}

void probe_axpy(float* w, const float* g, float s, size_t n) { detail::axpy(w, g, s, n); }

const char* kernel_isa() { return detail::kernel_isa(); }

}  // namespace fastps
