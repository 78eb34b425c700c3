// The rules of a store's configuration, written once: StoreConfig::validate() (used by
// Store::create and bound for the Python facade), the integer narrowing the bindings use, and
// the shard split.
#include "fastps/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastps/check.h"

namespace fastps {

namespace {

constexpr uint64_t kBlockElems = 16;  // one 64-byte block of floats (layout.h's kAlignElems)
constexpr uint64_t kMaxSize = uint64_t{1} << 40;
constexpr uint32_t kMaxLearners = 1024;
constexpr uint32_t kMaxBins = 65536;

uint64_t blocks_of(uint64_t size) { return (size + kBlockElems - 1) / kBlockElems; }

void check_shards(const char* api, uint64_t size, uint32_t shards) {
  const uint64_t blocks = blocks_of(size);
  FASTPS_CHECK_ARG(shards >= 1 && shards <= blocks,
                   "%s: shards must be in [1, %llu] for size %llu (one 64-byte block at least per "
                   "shard), got %u",
                   api, static_cast<unsigned long long>(blocks),
                   static_cast<unsigned long long>(size), shards);
}

// Python's _check_number message for a value that is not finite (nan, inf after float32).
void check_finite(const char* name, double v) {
  FASTPS_CHECK_ARG(std::isfinite(v), "Store: %s must be finite (got %g)", name, v);
}

}  // namespace

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kLocked: return "locked";
    case Mode::kHogwild: return "hogwild";
    case Mode::kLeashed: return "leashed";
  }
  return "?";
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "?";
}

size_t dtype_size(DType d) { return d == DType::kF32 ? 4 : 2; }

uint32_t config_u32(const char* name, long long v) {
  FASTPS_CHECK_ARG(v >= 0 && v <= static_cast<long long>(std::numeric_limits<uint32_t>::max()),
                   "Store: %s must be a non-negative 32-bit integer (got %lld)", name, v);
  return static_cast<uint32_t>(v);
}

int32_t config_i32(const char* name, long long v) {
  FASTPS_CHECK_ARG(
      v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
      "Store: %s must be a 32-bit integer (got %lld)", name, v);
  return static_cast<int32_t>(v);
}

uint64_t config_size(long long v) {
  FASTPS_CHECK_ARG(v >= 1, "Store: size must be at least 1 (got %lld)", v);
  return static_cast<uint64_t>(v);
}

void StoreConfig::validate() const {
  FASTPS_CHECK_ARG(size >= 1, "Store: size must be at least 1 (got %llu)",
                   static_cast<unsigned long long>(size));
  FASTPS_CHECK_ARG(size <= kMaxSize, "Store: size %llu is larger than 2^40 elements",
                   static_cast<unsigned long long>(size));
  check_shards("Store", size, shards);
  FASTPS_CHECK_ARG(mode == Mode::kLocked || mode == Mode::kHogwild || mode == Mode::kLeashed,
                   "Store: unknown mode %u", static_cast<unsigned>(mode));
  check_finite("lr", lr);
  FASTPS_CHECK_ARG(lr >= 0.0f, "Store: lr must be finite and >= 0 (got %g)",
                   static_cast<double>(lr));
  check_finite("momentum", momentum);
  FASTPS_CHECK_ARG(momentum >= 0.0f && momentum < 1.0f,
                   "Store: momentum must be in [0, 1) (got %g)", static_cast<double>(momentum));
  FASTPS_CHECK_ARG(!nesterov || momentum > 0.0f,
                   "Store: nesterov=True needs momentum > 0 (got momentum=%g)",
                   static_cast<double>(momentum));
  check_finite("weight_decay", weight_decay);
  FASTPS_CHECK_ARG(weight_decay >= 0.0f, "Store: weight_decay must be finite and >= 0 (got %g)",
                   static_cast<double>(weight_decay));
  FASTPS_CHECK_ARG(static_cast<uint32_t>(nan_guard) <= static_cast<uint32_t>(NanGuard::kOff),
                   "Store: unknown nan_guard %u", static_cast<unsigned>(nan_guard));
  FASTPS_CHECK_ARG(persistence >= -1, "Store: persistence must be -1 (never drop) or >= 0 (got %d)",
                   persistence);
  FASTPS_CHECK_ARG(max_learners >= 1 && max_learners <= kMaxLearners,
                   "Store: max_learners must be in [1, %u] (got %u)", kMaxLearners, max_learners);
  FASTPS_CHECK_ARG(staleness_bins >= 1 && staleness_bins <= kMaxBins,
                   "Store: staleness_bins must be in [1, %u] (got %u)", kMaxBins, staleness_bins);
  const StepConfig& p = step;
  FASTPS_CHECK_ARG(static_cast<uint32_t>(p.kind) <= static_cast<uint32_t>(StepKind::kHook),
                   "Store: unknown step size kind %u", static_cast<unsigned>(p.kind));
  FASTPS_CHECK_ARG(std::isfinite(p.beta) && p.beta >= 0.0,
                   "Exponential: beta must be finite and >= 0 (got %g)", p.beta);
  FASTPS_CHECK_ARG(std::isfinite(p.a) && p.a >= 0.0 && p.a <= 1.0,
                   "TailTau: a must be in [0, 1] (got %g)", p.a);
  FASTPS_CHECK_ARG(p.warmup >= 1, "TailTau: warmup must be at least 1 shard update (got %llu)",
                   static_cast<unsigned long long>(p.warmup));
  FASTPS_CHECK_ARG(std::isfinite(p.c) && p.c >= 0.0,
                   "StalenessDistance: c must be finite and >= 0 (got %g)", p.c);
  FASTPS_CHECK_ARG(std::isfinite(p.eta_max) && p.eta_max >= 0.0,
                   "StalenessDistance: eta_max must be finite and >= 0 (got %g)", p.eta_max);
}

std::vector<std::pair<uint64_t, uint64_t>> shard_ranges(uint64_t size, uint32_t shards,
                                                        const char* api) {
  check_shards(api, size, shards);
  const uint64_t blocks = blocks_of(size);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(shards);
  for (uint32_t s = 0; s < shards; ++s) {
    // 128-bit products: blocks * shards may pass 2^64 for the largest stores.
    using u128 = unsigned __int128;
    const auto b0 = static_cast<uint64_t>(u128{blocks} * s / shards);
    const auto b1 = static_cast<uint64_t>(u128{blocks} * (s + 1) / shards);
    out.emplace_back(b0 * kBlockElems, std::min(b1 * kBlockElems, size));
  }
  return out;
}

}  // namespace fastps
