// The kernels, compiled once per instruction set (kernels_base.cc, kernels_avx2.cc) into the
// namespace FASTPS_KERNEL_NS; kernels.cc picks one at run time. Included only by those files.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#ifndef FASTPS_KERNEL_NS
#error "define FASTPS_KERNEL_NS before including kernels_impl.h"
#endif

namespace fastps::detail::FASTPS_KERNEL_NS {
namespace {

struct F32 {
  using T = float;
  static float widen(float x) { return x; }
};

struct BF16 {
  using T = uint16_t;
  static float widen(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
};

// IEEE half to float without F16C, branch-free so the loop still vectorises
// (the exponent-rebias method: normal, subnormal and Inf/NaN handled by selects).
struct F16 {
  using T = uint16_t;
  static float widen(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent+mantissa in place
    const uint32_t exp = em & 0x0f800000u;
    const uint32_t normal = em + ((127u - 15u) << 23);
    const uint32_t infnan = em + ((255u - 31u) << 23);
    const float sub = std::bit_cast<float>(em + (113u << 23)) - std::bit_cast<float>(113u << 23);
    const uint32_t sub_bits = std::bit_cast<uint32_t>(sub);
    const uint32_t bits = exp == 0x0f800000u ? infnan : (exp == 0 ? sub_bits : normal);
    return std::bit_cast<float>(bits | sign);
  }
};

// kMom: 0 none, 1 heavy ball, 2 Nesterov.
template <bool kWd, int kMom>
inline float step(float w, float& m, float g, const ApplyArgs& a) {
  float d = g;
  if constexpr (kWd) d = d + a.weight_decay * w;
  if constexpr (kMom > 0) {
    m = a.momentum * m + d;
    d = kMom == 2 ? d + a.momentum * m : m;
  }
  return w - a.eta * d;
}

template <typename L, bool kWd, int kMom>
void inplace_t(float* __restrict w, float* __restrict m, const typename L::T* __restrict g,
               size_t n, const ApplyArgs& a) {
  if constexpr (kMom == 0) {
    float unused = 0.0f;
    for (size_t i = 0; i < n; ++i) w[i] = step<kWd, 0>(w[i], unused, L::widen(g[i]), a);
  } else {
    for (size_t i = 0; i < n; ++i) w[i] = step<kWd, kMom>(w[i], m[i], L::widen(g[i]), a);
  }
}

// Writes src[0..n) (a block in L1) to dst with non-temporal stores where the ISA has them:
// the destination's lines are not read first (no write-allocate) and do not evict the cache.
// Plain stores for the unaligned head and the tail. The caller fences (sfence) once at the end.
inline void stream_out(float* __restrict dst, const float* __restrict src, size_t n) {
  size_t i = 0;
#if defined(__AVX__)
  constexpr uintptr_t kAlign = 32;
#elif defined(__SSE2__)
  constexpr uintptr_t kAlign = 16;
#else
  constexpr uintptr_t kAlign = 0;
#endif
  if constexpr (kAlign != 0) {
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & (kAlign - 1)) != 0; ++i)
      dst[i] = src[i];
#if defined(__AVX__)
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#elif defined(__SSE2__)
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
  }
  for (; i < n; ++i) dst[i] = src[i];
}

// Orders the non-temporal stores above before any later store (the publishing CAS): they are
// weakly ordered, unlike ordinary x86 stores.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

template <typename L, bool kWd, int kMom>
void copy_t(float* __restrict wo, const float* __restrict wi, float* __restrict mo,
            const float* __restrict mi, const typename L::T* __restrict g, size_t n,
            const ApplyArgs& a) {
  if constexpr (kMom == 0) {
    float unused = 0.0f;
    for (size_t i = 0; i < n; ++i) wo[i] = step<kWd, 0>(wi[i], unused, L::widen(g[i]), a);
  } else {
    for (size_t i = 0; i < n; ++i) {
      float mm = mi[i];
      wo[i] = step<kWd, kMom>(wi[i], mm, L::widen(g[i]), a);
      mo[i] = mm;
    }
  }
}

// copy_t with non-temporal output: each block is computed by the same loop into an L1 buffer
// (the same bits), then streamed to wo (and mo).
template <typename L, bool kWd, int kMom>
void copy_stream_t(float* __restrict wo, const float* __restrict wi, float* __restrict mo,
                   const float* __restrict mi, const typename L::T* __restrict g, size_t n,
                   const ApplyArgs& a) {
  constexpr size_t kBlock = 1024;  // 4 KiB per output buffer
  alignas(64) float wb[kBlock];
  alignas(64) float mb[kMom > 0 ? kBlock : 1];
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t len = std::min(kBlock, n - i);
    copy_t<L, kWd, kMom>(wb, wi + i, mb, kMom > 0 ? mi + i : nullptr, g + i, len, a);
    stream_out(wo + i, wb, len);
    if constexpr (kMom > 0) stream_out(mo + i, mb, len);
  }
  stream_fence();
}

// Resolves the runtime (dtype, weight decay, momentum kind) to one template instance.
template <template <typename, bool, int> class Fn, typename... Args>
void dispatch(DType dt, const ApplyArgs& a, Args&&... args) {
  const bool wd = a.weight_decay != 0.0f;
  const int mom = a.momentum == 0.0f ? 0 : (a.nesterov ? 2 : 1);
  auto by_mom = [&]<typename L, bool kWd>() {
    switch (mom) {
      case 0: return Fn<L, kWd, 0>::run(args...);
      case 1: return Fn<L, kWd, 1>::run(args...);
      default: return Fn<L, kWd, 2>::run(args...);
    }
  };
  auto by_wd = [&]<typename L>() {
    if (wd) return by_mom.template operator()<L, true>();
    return by_mom.template operator()<L, false>();
  };
  switch (dt) {
    case DType::kF32: return by_wd.template operator()<F32>();
    case DType::kF16: return by_wd.template operator()<F16>();
    case DType::kBF16: return by_wd.template operator()<BF16>();
  }
}

template <typename L, bool kWd, int kMom>
struct Inplace {
  static void run(float* w, float* m, const void* g, size_t n, const ApplyArgs& a) {
    inplace_t<L, kWd, kMom>(w, m, static_cast<const typename L::T*>(g), n, a);
  }
};

template <typename L, bool kWd, int kMom>
struct Copy {
  static void run(float* wo, const float* wi, float* mo, const float* mi, const void* g, size_t n,
                  const ApplyArgs& a) {
    const auto* gt = static_cast<const typename L::T*>(g);
    if (a.stream)
      copy_stream_t<L, kWd, kMom>(wo, wi, mo, mi, gt, n, a);
    else
      copy_t<L, kWd, kMom>(wo, wi, mo, mi, gt, n, a);
  }
};

}  // namespace

void apply_inplace(float* w, float* m, const void* g, DType dt, size_t n, const ApplyArgs& a) {
  dispatch<Inplace>(dt, a, w, m, g, n, a);
}

void apply_copy(float* w_out, const float* w_in, float* m_out, const float* m_in, const void* g,
                DType dt, size_t n, const ApplyArgs& a) {
  dispatch<Copy>(dt, a, w_out, w_in, m_out, m_in, g, n, a);
}

namespace {

template <typename U, U kExpMask>
int64_t first_nonfinite_t(const U* g, size_t n) {
  // Four independent OR accumulators over 64-byte steps: the test is one AND and one compare
  // per element, so a single accumulator chain, not memory, would bound the loop.
  constexpr size_t kStep = 64 / sizeof(U);
  U acc[4][kStep / 4] = {};
  size_t i = 0;
  for (; i + kStep <= n; i += kStep)
    for (size_t k = 0; k < kStep; ++k)
      acc[k % 4][k / 4] |= static_cast<U>((g[i + k] & kExpMask) == kExpMask);
  U any = 0;
  for (auto& row : acc)
    for (U a : row) any |= a;
  for (; i < n; ++i) any |= static_cast<U>((g[i] & kExpMask) == kExpMask);
  if (!any) return -1;
  for (size_t j = 0; j < n; ++j)
    if ((g[j] & kExpMask) == kExpMask) return static_cast<int64_t>(j);
  return -1;
}

}  // namespace

int64_t first_nonfinite(const void* g, DType dt, size_t n) {
  switch (dt) {
    case DType::kF32:
      return first_nonfinite_t<uint32_t, 0x7f800000u>(static_cast<const uint32_t*>(g), n);
    case DType::kF16:
      return first_nonfinite_t<uint16_t, 0x7c00u>(static_cast<const uint16_t*>(g), n);
    case DType::kBF16:
      return first_nonfinite_t<uint16_t, 0x7f80u>(static_cast<const uint16_t*>(g), n);
  }
  return -1;
}

double dist2(const float* a, const float* b, size_t n) {
  // Blocks of 512 elements summed in 16 float lanes (vectorised), each block's sum added to a
  // double: float rounding only within a block (relative error ~1e-5), no drift across blocks.
  constexpr size_t kBlock = 512, kLanes = 16;
  double total = 0.0;
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    float acc[kLanes] = {};
    for (size_t j = 0; j < kBlock; j += kLanes)
      for (size_t k = 0; k < kLanes; ++k) {
        const float d = a[i + j + k] - b[i + j + k];
        acc[k] += d * d;
      }
    float block = 0.0f;
    for (float x : acc) block += x;
    total += block;
  }
  for (; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    total += d * d;
  }
  return total;
}

void triad(float* __restrict a, const float* __restrict b, const float* __restrict c, float s,
           size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

void axpy(float* __restrict w, const float* __restrict g, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] = w[i] + s * g[i];
}

}  // namespace fastps::detail::FASTPS_KERNEL_NS
