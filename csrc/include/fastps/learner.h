// fastps::Learner: one learner's handle on a Store (pull, push), and the two interfaces through
// which the transfer pipeline (fastps/transfer.h) feeds a push and drains a pull chunk by chunk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "fastps/config.h"
#include "fastps/store.h"

namespace fastps {

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
  /// follow Learner::chunk_plan() in order, except that chunks of a dropped shard update may be
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

class Learner {
 public:
  ~Learner();
  Learner(const Learner&) = delete;
  Learner& operator=(const Learner&) = delete;

  /// Copies the parameters into out[0..n) and records, per shard, the version it read.
  /// Blocks on shard locks (locked mode) only. Caller keeps `out` alive until it returns.
  /// The same body as pull(ParamSink&), through a sink that copies at once.
  void pull(float* out, size_t n);
  /// Applies w -= eta(tau) * (g + weight_decay * w) (with momentum when set) to every shard,
  /// tau = version at apply - version read at the last pull. Validates before touching any
  /// shard: a refused push changes nothing. Returns the number of shard updates dropped
  /// (leashed with persistence >= 0 only), or all S shards when nan_guard = kSkip skipped a
  /// non-finite gradient. Caller keeps `grad` alive until it returns.
  uint32_t push(const void* grad, DType dtype, size_t n);
  /// The same update with the gradient supplied in chunks of at most `chunk` elements (a
  /// chunk never spans two shards), in chunk_plan(chunk) order. No NaN check: the source's owner
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
  std::vector<Chunk> chunk_plan(uint64_t chunk) const;
  /// Counts the next push's staleness from `updates` versions before the last pull: every
  /// shard's read version goes back by `updates`, so tau grows by exactly that (a coordinator
  /// applying a gradient computed on a model `updates` store updates older than its own pull).
  /// Needs a pull first; refused for StalenessDistance (it would need that older model) and
  /// beyond a shard's version 0. Validates every shard before changing any.
  void backdate(uint64_t updates);
  /// What push does with a gradient whose element `index` is NaN or Inf, found by the caller:
  /// throws std::invalid_argument (nan_guard raise) or counts a skip and returns S (skip).
  uint32_t refuse_nonfinite(int64_t index);
  const std::shared_ptr<Store>& store() const { return store_; }
  /// Releases this handle's learner slot; later calls throw. Idempotent, never throws.
  void close() noexcept;

  uint32_t id() const { return id_; }
  /// Version of shard s read by the last pull (0 before any pull). Throws std::invalid_argument
  /// for a shard out of range, std::runtime_error once the handle or its store is closed.
  uint64_t read_version(int64_t s) const;
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
  void keep_read_copy(uint32_t s, const float* src);
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
  // (read_slots_, -1 = none); the other modes keep a copy (read_copy_).
  std::vector<int32_t> read_slots_;
  std::vector<float> read_copy_;
};

}  // namespace fastps
