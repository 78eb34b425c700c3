// The vocabulary of the store: enums, the configuration structs and the rules they obey. Both
// the public API (store.h, learner.h, transfer.h) and the internal files (kernels.h, layout.h)
// include this header, and nothing heavier, for these types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace fastps {

enum class Mode : uint32_t { kLocked = 0, kHogwild = 1, kLeashed = 2 };
enum class DType : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

/// "locked", "hogwild", "leashed" ("?" for a value outside the enum). Thread-safe.
const char* mode_name(Mode m);
/// "float32", "float16", "bfloat16" ("?" for a value outside the enum). Thread-safe.
const char* dtype_name(DType d);
/// Bytes per element of `d`: 4 for float32, 2 for the half-precision types.
size_t dtype_size(DType d);

/// What push does with a gradient holding NaN or Inf (checked before any shard changes).
enum class NanGuard : uint32_t {
  kRaise = 0,  ///< refuse the push with std::invalid_argument
  kSkip = 1,   ///< apply nothing, count it in Stats::nonfinite_skipped
  kOff = 2,    ///< no check (no extra pass over the gradient)
};

/// Step-size policies eta(tau), evaluated per shard update (formulas in docs/step_size.md).
enum class StepKind : uint32_t {
  kConstant = 0,     ///< lr
  kInverse = 1,      ///< lr / (tau + 1)
  kExponential = 2,  ///< lr * exp(-beta * tau)
  kTailTau = 3,      ///< lr * (1 + a * (1 - 2 F(tau))), F the mid-CDF of observed staleness
  kDistance = 4,     ///< min(c / ||w_now - w_read||^2, eta_max); eta_max at distance 0
  kHook = 5,         ///< a callable set per process with Store::set_step_hook
};

struct StepConfig {
  StepKind kind = StepKind::kConstant;
  double beta = 0.0;     ///< exponential decay rate
  double a = 1.0;        ///< TAIL-tau amplitude in [0, 1]
  uint64_t warmup = 1;  ///< TAIL-tau: shard updates before the CDF is first built (scale 1 until)
  uint64_t refresh = 0;  ///< TAIL-tau: rebuild every `refresh` shard updates after; 0 = frozen
  double c = 0.0;  ///< staleness-distance numerator
  double eta_max = 0.0;  ///< staleness-distance cap
};

/// A store's configuration. Lives inside the arena's header (so every attacher reads the same
/// one): a standard-layout struct whose fields keep their types and order.
struct StoreConfig {
  uint64_t size = 0;  ///< elements in the flat vector
  uint32_t shards = 1;  ///< S; each shard starts on a 64-byte boundary (see shard_ranges())
  Mode mode = Mode::kLeashed;
  float lr = 0.01f;  ///< eta0
  float momentum = 0.0f;  ///< server-side momentum mu in [0, 1)
  bool nesterov = false;
  float weight_decay = 0.0f;
  int32_t persistence = -1;  ///< leashed: failed CAS attempts before a drop; -1 = never drop
  NanGuard nan_guard = NanGuard::kRaise;
  /// Open handles at once. Leashed keeps 2*max_learners+5 version slots per shard
  /// (3*max_learners+5 under StalenessDistance): see slots_for() in csrc/src/arena_plan.cc.
  uint32_t max_learners = 16;
  uint32_t staleness_bins = 64;  ///< exact staleness counts for tau < staleness_bins, + overflow
  StepConfig step;  ///< eta(tau); lr is eta0

  /// Checks every range rule of a store's configuration (the one copy of them: Store::create
  /// and the Python facade both call it). Throws std::invalid_argument naming the Python
  /// argument, e.g. "Store: max_learners must be in [1, 1024] (got 0)". Thread-safe.
  void validate() const;
};

/// Narrows an integer argument of the Store constructor into a 32-bit config field; throws
/// std::invalid_argument "Store: <name> must be a non-negative 32-bit integer (got <v>)".
uint32_t config_u32(const char* name, long long v);
/// Likewise for a signed 32-bit field ("Store: <name> must be a 32-bit integer (got <v>)").
int32_t config_i32(const char* name, long long v);
/// Likewise for `size`, whose rule is "at least 1" ("Store: size must be at least 1 (got <v>)").
uint64_t config_size(long long v);

/// The [begin, end) element ranges of `shards` contiguous shards of a `size`-element vector:
/// whole 64-byte blocks (16 floats), as equal as blocks allow, the last one ending at `size`.
/// The split every Store uses. Throws std::invalid_argument "<api>: shards must be in [1, B]
/// for size N ..." unless 1 <= shards <= B = ceil(size / 16). Thread-safe.
std::vector<std::pair<uint64_t, uint64_t>> shard_ranges(uint64_t size, uint32_t shards,
                                                        const char* api = "shard_ranges");

}  // namespace fastps
