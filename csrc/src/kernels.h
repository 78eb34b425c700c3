// The fused per-shard kernels: widen the gradient, add weight decay, update momentum, step.
// Element math is fixed and contraction is off (-ffp-contract=off), so results are bitwise
// equal to the same float32 expression evaluated by numpy.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastps/config.h"

namespace fastps::detail {

struct ApplyArgs {
  float eta;           // step size for this shard update
  float weight_decay;  // lambda in g + lambda * w
  float momentum;      // mu; 0 disables the momentum buffer
  bool nesterov;
  bool stream = false;  // apply_copy: write w_out (and m_out) with non-temporal stores
};

/// In place: w[i] -= eta * d[i] (momentum buffer m updated in place when momentum > 0).
void apply_inplace(float* w, float* m, const void* g, DType dt, size_t n, const ApplyArgs& a);
/// Out of place (leashed): w_out = w_in - eta * d, m_out from m_in; in and out must not overlap.
/// With a.stream the outputs are written with non-temporal stores (x86) and fenced (sfence)
/// before it returns, so a following CAS publishes them; the values are the same bits.
void apply_copy(float* w_out, const float* w_in, float* m_out, const float* m_in, const void* g,
                DType dt, size_t n, const ApplyArgs& a);

/// Index of the first NaN or Inf in g[0..n), or -1. One read pass (vectorised OR of an
/// all-ones-exponent test), then a scan to locate the element only when one exists.
int64_t first_nonfinite(const void* g, DType dt, size_t n);

/// Squared Euclidean distance sum((a - b)^2): float within blocks of 512, double across.
double dist2(const float* a, const float* b, size_t n);

/// STREAM-style probe kernels (the benchmark's baselines), same compiler, flags and ISA.
void triad(float* a, const float* b, const float* c, float s, size_t n);
void axpy(float* w, const float* g, float s, size_t n);

/// The instruction set the kernels run with on this machine: "avx2" or "base".
const char* kernel_isa();

/// The one place where hogwild touches shared parameters: unsynchronised by design. Concurrent
/// calls race element by element; a torn read or a lost update is Hogwild!'s intended semantics.
/// ThreadSanitizer's suppressions (csrc/tests/tsan.supp) name these three functions and nothing
/// else.
void hogwild_apply(float* w, float* m, const void* g, DType dt, size_t n, const ApplyArgs& a);
void hogwild_copy(float* dst, const float* src, size_t n);
double hogwild_dist2(const float* live, const float* read, size_t n);

}  // namespace fastps::detail
