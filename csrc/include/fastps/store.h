// fastps::Store: one flat fp32 parameter vector cut into S contiguous, 64-byte-aligned shards,
// updated by learners through Learner handles in one of three consistency modes:
//   locked   a process-shared mutex per shard; pull copies and push applies under it.
//   hogwild  no synchronisation at all; torn pulls and lost element updates are intended.
//   leashed  Leashed-SGD: immutable published versions per shard, pinned reads, CAS publication.
// The whole store (data, versions, locks, slots, counters, histogram) lives in one Arena, so a
// store created with a shared name works from every process that attaches to it.
// Thread safety: every Store and Learner method may be called from any thread; one Learner is
// meant for one learner at a time (its read versions are not synchronised).
#pragma once

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastps/arena.h"
#include "fastps/device.h"

namespace fastps {

enum class Mode : uint32_t { kLocked = 0, kHogwild = 1, kLeashed = 2 };
enum class DType : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

const char* mode_name(Mode m);
const char* dtype_name(DType d);
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
  uint64_t warmup = 1;   ///< TAIL-tau: shard updates before the CDF is first built (scale 1 until)
  uint64_t refresh = 0;  ///< TAIL-tau: rebuild every `refresh` shard updates after; 0 = frozen
  double c = 0.0;        ///< staleness-distance numerator
  double eta_max = 0.0;  ///< staleness-distance cap
};

/// What a step-size hook is told about one shard update.
struct StepContext {
  uint64_t tau;           ///< version at apply - version read
  uint32_t shard;
  uint32_t learner;       ///< handle id
  uint64_t version;       ///< the shard's version the update applies to
  uint64_t version_read;  ///< the version the learner's last pull read
};

/// A per-process step-size callable: returns eta (finite, >= 0) for one shard update.
using StepHook = std::function<double(const StepContext&)>;

struct StoreConfig {
  uint64_t size = 0;          ///< elements in the flat vector
  uint32_t shards = 1;        ///< S; each shard starts on a 64-byte boundary
  Mode mode = Mode::kLeashed;
  float lr = 0.01f;           ///< eta0
  float momentum = 0.0f;      ///< server-side momentum mu in [0, 1)
  bool nesterov = false;
  float weight_decay = 0.0f;
  int32_t persistence = -1;   ///< leashed: failed CAS attempts before a drop; -1 = never drop
  NanGuard nan_guard = NanGuard::kRaise;
  uint32_t max_learners = 16; ///< open handles at once; leashed keeps 2*max_learners+1 slots/shard
  uint32_t hist_bins = 64;    ///< exact staleness counts for tau < hist_bins, then one overflow bin
  StepConfig step;            ///< eta(tau); lr is eta0
};

struct Stats {
  uint64_t clock = 0;          ///< pushes applied to every shard
  uint64_t pushes = 0;         ///< pushes accepted (validated)
  uint64_t shard_updates = 0;  ///< shard updates published or applied
  uint64_t dropped = 0;        ///< leashed shard updates dropped after `persistence` failures
  uint64_t cas_failures = 0;   ///< leashed publication CASes lost to another learner
  uint64_t slot_waits = 0;     ///< leashed: times a writer found no free slot and yielded
  uint64_t lock_wait_ns = 0;   ///< locked: time spent waiting for busy shard locks
  uint64_t bytes_applied = 0;  ///< gradient bytes applied (in the dtype they arrived in)
  uint64_t nonfinite_skipped = 0;  ///< pushes skipped by nan_guard = kSkip
  uint32_t learners = 0;       ///< handles open now, across processes
  uint64_t recovered = 0;      ///< handles of dead processes recovered (recover())
  uint64_t torn_shards = 0;    ///< locked: shard locks taken over from a dead owner
  uint64_t slots_in_use = 0;   ///< leashed: slots not FREE now, summed over shards
  uint32_t slots_touched = 0;  ///< leashed: most slots any shard has ever used (memory touched)
  std::vector<uint64_t> staleness_hist;  ///< hist_bins exact bins + 1 overflow bin
  std::vector<uint64_t> versions;        ///< per-shard version (updates applied to it)
  std::vector<uint64_t> step_hist;  ///< TAIL-tau: the histogram its current CDF was built from
  uint64_t step_builds = 0;         ///< TAIL-tau: times the CDF was built
  bool pinned = false;    ///< this process's mapping is page-locked for CUDA copies
  std::string pin_error;  ///< why pinning failed ("" when pinned or never asked)
};

/// Everything but the parameters and momentum that a checkpoint carries (see Store::snapshot).
struct Counters {
  uint64_t clock = 0, pushes = 0, nonfinite_skipped = 0;
  std::vector<uint64_t> versions;  ///< per shard
  std::vector<uint64_t> hist;      ///< per shard, hist_bins + 1 each, shard-major
  uint64_t step_updates = 0;       ///< TAIL-tau state: shard updates counted, CDF table, and
  uint32_t cdf_ready = 0;          ///< the histogram it was built from
  std::vector<double> cdf;
  std::vector<uint64_t> cdf_hist;
};

/// What a process can learn about a shared segment without using it (for cleanup).
struct SegmentInfo {
  bool is_store = false;
  int32_t creator_pid = 0;
  uint64_t size = 0;
  Mode mode = Mode::kLeashed;
};

/// One piece of a push or pull: elements [begin, begin + len) of shard `shard`.
struct Chunk {
  uint32_t shard;
  uint64_t begin, len;
};

/// Supplies a push's gradient piece by piece (the transfer pipeline, fastps/transfer.h).
class GradSource {
 public:
  virtual ~GradSource() = default;
  /// Returns the gradient of chunk `c` (in the push's dtype), valid until the next call. Calls
  /// follow Learner::plan() in order, except that chunks of a dropped shard update may be
  /// skipped and `retry` repeats the chunks of a shard whose leashed publication was lost.
  virtual const void* fetch(const Chunk& c, bool retry) = 0;
};

/// Receives a pull shard by shard (the transfer pipeline). The store keeps `src` stable (shard
/// lock held in locked mode, version pinned in leashed mode) until the next flush() returns.
class ParamSink {
 public:
  virtual ~ParamSink() = default;
  /// Starts copying src[0..c.len) (store memory) to the destination of chunk `c`.
  virtual void copy(const Chunk& c, const float* src) = 0;
  /// Blocks until every copy started so far has completed.
  virtual void flush() = 0;
};

class Learner;
namespace detail {
struct Layout;
}

class Store : public std::enable_shared_from_this<Store> {
 public:
  /// Creates a store; `init` (nullable) holds cfg.size floats. `shared_name` empty = private.
  /// Throws std::invalid_argument for a bad config, std::runtime_error if memory is unavailable.
  static std::shared_ptr<Store> create(const StoreConfig& cfg, const float* init,
                                       const std::string& shared_name);
  /// Attaches to a shared store created (by this user) in any process.
  static std::shared_ptr<Store> attach(const std::string& shared_name);
  ~Store();

  /// Marks this Store object closed (later calls through it or its handles throw) and, for the
  /// creator of a shared store, unlinks the name. Memory goes when the last handle is dropped.
  void close() noexcept;
  bool closed() const;

  const StoreConfig& config() const { return cfg_; }
  const std::string& name() const { return arena_->name(); }
  bool is_creator() const { return arena_->is_creator(); }
  /// [begin, end) element range of shard s.
  std::pair<uint64_t, uint64_t> shard_range(uint32_t s) const;

  /// Copies the parameters into out[0..size). Consistent per shard in locked and leashed modes.
  /// Blocks on shard locks (locked). Thread-safe.
  void read(float* out, size_t n) const;
  Stats stats() const;
  /// Opens a learner handle. Throws std::runtime_error when max_learners handles are open
  /// (after recovering the handles of processes that died).
  std::unique_ptr<Learner> learner();
  /// Recovers what handles of dead processes held (their registrations, leashed pins and
  /// half-written versions); returns how many handles. Lock-free and safe while learners run;
  /// also done by attach(), by learner() when no place is free, and by writers that find no
  /// free slot. Locked mode needs no recovery of locks: they are robust mutexes.
  uint32_t recover();
  /// Sets this process's step-size callable (config().step.kind must be kHook). Not thread-safe
  /// against concurrent pushes: set it before learners start. The hook may throw; the shard it
  /// was asked about is then left unchanged and the exception propagates out of push().
  void set_step_hook(StepHook hook);
  /// Page-locks this process's mapping of the store (cudaHostRegister) so CUDA copy engines
  /// copy straight from and to it; done once per Store object, on the first CUDA transfer.
  /// A failure is recorded (stats().pin_error), not thrown: copies then go through pageable
  /// memory. Thread-safe.
  void pin_memory();

  /// Copies the parameters (and momentum, when the store has it; `momentum` may be null
  /// otherwise) and returns the counters: a consistent snapshot per shard in locked and
  /// leashed modes (each shard's values, momentum and version from one instant), taken while
  /// learners keep pushing. Blocks on shard locks (locked). Thread-safe.
  Counters snapshot(float* params, float* momentum) const;
  /// Puts a snapshot into a store that no learner has used yet (no handle open, no push
  /// applied). Validates everything first; throws and changes nothing otherwise.
  void restore(const float* params, const float* momentum, const Counters& c);
  /// Reads the header of the shared segment `name` (ownership and format checked as attach).
  static SegmentInfo inspect(const std::string& name);

 private:
  friend class Learner;
  Store(std::shared_ptr<Arena> arena, const StoreConfig& cfg);
  void check_open(const char* api) const;

  std::shared_ptr<Arena> arena_;
  StoreConfig cfg_;
  std::unique_ptr<detail::Layout> lay_;
  StepHook hook_;  // process-local; empty unless set_step_hook() was called
  mutable std::mutex pin_mu_;  // guards pinned_, pin_error_ (process-local)
  bool pinned_ = false;
  std::string pin_error_;
  // Written by close() (release), read by every call through this object or its handles
  // (acquire): publishes nothing but the flag itself. Per Store object, not per segment.
  std::atomic<bool> closed_{false};
};

class Learner {
 public:
  ~Learner();
  Learner(const Learner&) = delete;
  Learner& operator=(const Learner&) = delete;

  /// Copies the parameters into out[0..n) and records, per shard, the version it read.
  /// Blocks on shard locks (locked mode) only. Caller keeps `out` alive until it returns.
  void pull(float* out, size_t n);
  /// Applies w -= eta(tau) * (g + weight_decay * w) (with momentum when set) to every shard,
  /// tau = version at apply - version read at the last pull. Validates before touching any
  /// shard: a refused push changes nothing. Returns the number of shard updates dropped
  /// (leashed with persistence >= 0 only), or all S shards when nan_guard = kSkip skipped a
  /// non-finite gradient. Caller keeps `grad` alive until it returns.
  uint32_t push(const void* grad, DType dtype, size_t n);
  /// The same update with the gradient supplied in chunks of at most `chunk` elements (a
  /// chunk never spans two shards), in plan(chunk) order. No NaN check: the source's owner
  /// checks before calling (a NaN reaching the store this way is applied). If `src` throws,
  /// a leashed shard being written is not published; a locked or hogwild shard may be left
  /// partially updated.
  uint32_t push(GradSource& src, DType dtype, size_t n, uint64_t chunk);
  /// pull() through a sink: per shard, the sink copies from store memory (asynchronously if it
  /// likes); locked mode flushes before each shard's lock is released, leashed unpins every
  /// version after the final flush.
  void pull(ParamSink& sink, size_t n);
  /// The chunks push(src, ..., chunk) asks for, in order: shards from this handle's start
  /// shard on (learners start at different shards), each cut into pieces of <= chunk elements.
  std::vector<Chunk> plan(uint64_t chunk) const;
  /// What push does with a gradient whose element `index` is NaN or Inf, found by the caller:
  /// throws std::invalid_argument (nan_guard raise) or counts a skip and returns S (skip).
  uint32_t refuse_nonfinite(int64_t index);
  const std::shared_ptr<Store>& store() const { return store_; }
  /// Releases this handle's learner slot; later calls throw. Idempotent, never throws.
  void close() noexcept;

  uint32_t id() const { return id_; }
  /// Version of shard s read by the last pull (0 before any pull).
  uint64_t read_version(uint32_t s) const { return read_versions_.at(s); }
  /// Shards applied by the last push call (for error reports when a step hook throws).
  uint32_t last_push_applied() const { return applied_; }
  /// Per shard, the version the last push created (0 where it was dropped or not applied).
  const std::vector<uint64_t>& last_push_versions() const { return pushed_versions_; }

 private:
  friend class Store;
  Learner(std::shared_ptr<Store> store, uint32_t id);
  void check_open(const char* api) const;
  void release_read_pins() noexcept;
  float eta(uint64_t tau, uint32_t s, uint64_t version, const float* w_now, const float* w_read);
  uint32_t push_impl(GradSource& src, DType dtype, uint64_t chunk);
  void keep_snapshot(uint32_t s, const float* src);
  void check_ready() const;  // the step size's preconditions for a push
  void begin_push(DType dtype, size_t n);  // validates a push's arguments, resets its record

  std::shared_ptr<Store> store_;
  uint32_t id_;
  bool open_ = true;
  bool pulled_ = false;
  uint32_t applied_ = 0;
  std::vector<uint64_t> read_versions_;
  std::vector<uint64_t> pushed_versions_;
  // Staleness-distance only: what the last pull read. Leashed keeps the version pinned
  // (read_slots_, -1 = none); the other modes keep a copy (snapshot_).
  std::vector<int32_t> read_slots_;
  std::vector<float> snapshot_;
};

}  // namespace fastps
