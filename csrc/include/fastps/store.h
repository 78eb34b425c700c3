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

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "fastps/config.h"

namespace fastps {

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
  std::vector<uint64_t> staleness_hist;  ///< staleness_bins exact bins + 1 overflow bin
  std::vector<uint64_t> versions;        ///< per-shard version (updates applied to it)
  std::vector<uint64_t> step_hist;  ///< TAIL-tau: the histogram its current CDF was built from
  uint64_t step_builds = 0;         ///< TAIL-tau: times the CDF was built
  bool pinned = false;    ///< this process's mapping is page-locked for CUDA copies
  std::string pin_error;  ///< why pinning failed ("" when pinned or never asked)
};

/// Everything but the parameters and momentum that a checkpoint carries (see Store::save).
struct Counters {
  uint64_t clock = 0, pushes = 0, nonfinite_skipped = 0;
  std::vector<uint64_t> versions;  ///< per shard
  std::vector<uint64_t> hist;      ///< per shard, staleness_bins + 1 each, shard-major
  uint64_t step_updates = 0;       ///< TAIL-tau state: shard updates counted, CDF table, and
  uint32_t cdf_ready = 0;          ///< the histogram it was built from
  std::vector<double> cdf;
  std::vector<uint64_t> cdf_hist;
};

/// Whether process `pid` runs: it exists and is not a zombie (killed, not yet reaped). The
/// rule the registry applies to learners, without their start time (for callers that recorded
/// only a pid, such as a checkpoint's temporary file). The calling process is always alive.
bool process_alive(int32_t pid);

/// What a process can learn about a shared segment without using it (for cleanup).
struct SegmentInfo {
  bool is_store = false;
  int32_t creator_pid = 0;
  uint64_t size = 0;
  Mode mode = Mode::kLeashed;
  /// The creator process is running: its pid exists and has the start time recorded at
  /// creation (so an unrelated process that reused the pid is not taken for it).
  bool creator_alive = false;
};

class Arena;
class Learner;
namespace detail {
struct Layout;
}

class Store : public std::enable_shared_from_this<Store> {
 public:
  /// Creates a store; `init` (nullable) holds cfg.size floats. `shared_name` empty = private.
  /// Throws std::invalid_argument for a bad config, std::runtime_error if memory is unavailable.
  /// A shared name that exists is reclaimed (unlinked and created anew, reclaimed_pid() set)
  /// when it is a store of this user whose creator and registered learner processes are all
  /// gone; otherwise std::runtime_error names its creator's pid, the live learner or the path.
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
  /// The shared name ("" for a private store).
  const std::string& name() const;
  /// True for the Store object that created the memory, in the process that created it (it
  /// unlinks a shared name on close; a child made by fork() holds a copy and is not the creator).
  bool is_creator() const;
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
  /// otherwise) and returns the counters: a consistent checkpoint per shard in locked and
  /// leashed modes (each shard's values, momentum and version from one instant), taken while
  /// learners keep pushing. Blocks on shard locks (locked). Thread-safe. The caller keeps both
  /// buffers (config().size floats each) alive until it returns.
  Counters save(float* params, float* momentum) const;
  /// Puts a checkpoint into a store that no learner has used yet (no handle open, no push
  /// applied). Validates everything first; throws and changes nothing otherwise.
  void load(const float* params, const float* momentum, const Counters& c);
  /// Reads the header of the shared segment `name` (ownership and format checked as attach).
  static SegmentInfo inspect(const std::string& name);
  /// True while the process that created this store runs (the pid and start time its header
  /// records; a zombie counts as gone); true for a private store. Cheap (one kill(), one read
  /// of /proc/<pid>/stat), thread-safe; throws std::runtime_error once this object is closed.
  bool creator_alive() const;
  /// The creator pid of the stale segment create() reclaimed under this name (0 if none).
  int32_t reclaimed_pid() const { return reclaimed_pid_; }
  /// Test support: takes TAIL-tau's CDF build for this process as a builder does, without
  /// building (a test then kills the process); false if it was held. recover() takes it over.
  bool hold_cdf_build();

 private:
  friend class Learner;
  Store(std::shared_ptr<Arena> arena, const StoreConfig& cfg);
  void check_open(const char* api) const;

  std::shared_ptr<Arena> arena_;
  StoreConfig cfg_;
  std::unique_ptr<detail::Layout> lay_;
  bool stream_versions_ = false;  // leashed: write new versions with non-temporal stores
  StepHook hook_;  // process-local; empty unless set_step_hook() was called
  int32_t reclaimed_pid_ = 0;  // set once by create(), before the Store is shared
  mutable std::mutex pin_mu_;  // guards pinned_, pin_error_ (process-local)
  bool pinned_ = false;
  std::string pin_error_;
  // Written by close() (release), read by every call through this object or its handles
  // (acquire): publishes nothing but the flag itself. Per Store object, not per segment.
  std::atomic<bool> closed_{false};
};

}  // namespace fastps
