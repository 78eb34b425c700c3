#include "kernels.h"

#include <cstring>

// One declaration list for each compiled instruction set (definitions in kernels_impl.h).
#define FASTPS_DECLARE_KERNELS(NS)                                                        \
  namespace fastps::detail::NS {                                                          \
  void apply_inplace(float*, float*, const void*, DType, size_t, const ApplyArgs&);       \
  void apply_copy(float*, const float*, float*, const float*, const void*, DType, size_t, \
                  const ApplyArgs&);                                                      \
  int64_t first_nonfinite(const void*, DType, size_t);                                    \
  double dist2(const float*, const float*, size_t);                                       \
  void triad(float*, const float*, const float*, float, size_t);                          \
  void axpy(float*, const float*, float, size_t);                                         \
  }
FASTPS_DECLARE_KERNELS(base)
#if FASTPS_HAVE_AVX2_KERNELS
FASTPS_DECLARE_KERNELS(avx2)
#endif

namespace fastps::detail {
namespace {

#if FASTPS_HAVE_AVX2_KERNELS
const bool kAvx2 = __builtin_cpu_supports("avx2");
#define FASTPS_KERNEL(fn) (kAvx2 ? avx2::fn : base::fn)
#else
#define FASTPS_KERNEL(fn) (base::fn)
#endif

}  // namespace

const char* kernel_isa() {
#if FASTPS_HAVE_AVX2_KERNELS
  if (kAvx2) return "avx2";
#endif
  return "base";
}

void apply_inplace(float* w, float* m, const void* g, DType dt, size_t n, const ApplyArgs& a) {
  FASTPS_KERNEL(apply_inplace)(w, m, g, dt, n, a);
}

void apply_copy(float* w_out, const float* w_in, float* m_out, const float* m_in, const void* g,
                DType dt, size_t n, const ApplyArgs& a) {
  FASTPS_KERNEL(apply_copy)(w_out, w_in, m_out, m_in, g, dt, n, a);
}

int64_t first_nonfinite(const void* g, DType dt, size_t n) {
  return FASTPS_KERNEL(first_nonfinite)(g, dt, n);
}

double dist2(const float* a, const float* b, size_t n) { return FASTPS_KERNEL(dist2)(a, b, n); }

void triad(float* a, const float* b, const float* c, float s, size_t n) {
  FASTPS_KERNEL(triad)(a, b, c, s, n);
}

void axpy(float* w, const float* g, float s, size_t n) { FASTPS_KERNEL(axpy)(w, g, s, n); }

// Named in csrc/tests/tsan.supp, the only suppressions there: a race whose stack passes through
// one of these three functions is hogwild's intended race.
void hogwild_apply(float* w, float* m, const void* g, DType dt, size_t n, const ApplyArgs& a) {
  apply_inplace(w, m, g, dt, n, a);
}

void hogwild_copy(float* dst, const float* src, size_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

double hogwild_dist2(const float* live, const float* read, size_t n) {
  return dist2(live, read, n);
}

}  // namespace fastps::detail
