// The transfer pipeline: push from and pull into memory the CPU does not address directly (a
// GPU's), in chunks on a CopyEngine, overlapping each chunk's copy with the store's work on the
// chunk before it. The pipeline is written once against CopyEngine; two engines implement it:
//   CUDA  cudaMemcpyAsync on the engine's own stream, a CUDA event per copy, pinned staging
//         (csrc/cuda/copy_engine.cu; only in CUDA builds);
//   CPU   a worker thread that memcpys, with the same ticket API and an optional injected delay,
//         so chunking, ordering, overlap and buffer reuse are tested on machines without a GPU.
//
// push (D2H), with a ring of R staging buffers and the chunks c_0..c_m-1 of Learner::chunk_plan():
//   1. Order the engine after the caller's stream (the gradient is complete), then start the
//      copies of c_0..c_R-1 into buffers 0..R-1.
//   2. Learner::push asks for chunk c_j: every chunk before j has been applied (or skipped by a
//      dropped shard), so their buffers are free: start the copies of c_j+1..c_j+R-1 that are
//      not started yet, each into buffer i % R; then wait for c_j's copy and hand out buffer j % R.
//   3. The store applies c_j while c_j+1 is in flight. A leashed retry of a shard copies its
//      chunks again, synchronously, into a separate buffer (the ring has moved on).
// pull (H2D): per shard, the store holds the shard stable (lock or pin) and the sink starts one
// copy per chunk straight from store memory (half precision: narrowed into a staging buffer
// first); the copies are awaited before the lock or pins are released, then the caller's
// stream is ordered after them.
// Invariant: a staging buffer is refilled only after the chunk it held was applied, and copies
// on one engine complete in the order they were started (tickets are FIFO).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fastps/config.h"
#include "fastps/learner.h"

namespace fastps {

/// Host memory from an engine: pinned (CUDA) or 64-byte aligned (CPU); freed by its deleter.
using HostBuffer = std::unique_ptr<char, void (*)(char*)>;

/// An asynchronous copier of byte ranges. One engine serves one thread at a time.
class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  /// Starts dst[0..bytes) = src[0..bytes); returns its ticket (1, 2, 3, ...). Copies complete
  /// in ticket order. The caller keeps both buffers alive and unchanged until wait(ticket).
  virtual uint64_t copy(void* dst, const void* src, size_t bytes) = 0;
  /// Blocks until copy `ticket` (and so every earlier one) has completed. Throws
  /// std::runtime_error if a copy failed.
  virtual void wait(uint64_t ticket) = 0;
  /// Copies started after this call wait for the work queued on `stream` (a cudaStream_t,
  /// 0 = the legacy default stream) so far. No-op for the CPU engine.
  virtual void after(uintptr_t stream) = 0;
  /// Work queued on `stream` after this call waits for every copy started so far. No-op for
  /// the CPU engine.
  virtual void before(uintptr_t stream) = 0;
  /// Staging memory suited to this engine's copies.
  virtual HostBuffer alloc_host(size_t bytes) = 0;
  /// True if copies may read and write memory the CPU can address (the CPU engine): then the
  /// pipeline checks gradients for NaN itself.
  virtual bool host_addressable() const = 0;
  virtual const char* name() const = 0;
};

/// What happened when, for tests and benchmarks (CPU engine copies and every apply).
struct TimelineEvent {
  enum Kind : uint32_t { kCopy = 0, kApply = 1 };
  Kind kind;
  uint32_t chunk;  ///< index in the push's plan
  uint32_t buffer;  ///< staging buffer (ring index; ring size = the retry buffer)
  uint64_t start_ns, end_ns;
};

/// The CPU engine: a worker thread copies; `delay_us` is added to every copy (to test overlap).
/// With `record` the start and end of each copy are kept (copy_spans()).
std::unique_ptr<CopyEngine> make_cpu_engine(uint32_t delay_us, bool record);
/// The CUDA engine on GPU `device`, with its own non-blocking stream. Throws std::runtime_error
/// in a CPU-only build or when the device is not there.
std::unique_ptr<CopyEngine> make_cuda_engine(int device);
/// [start_ns, end_ns] of each copy of a recording CPU engine, by ticket - 1; empty otherwise.
std::vector<std::pair<uint64_t, uint64_t>> copy_spans(const CopyEngine& engine);

struct TransferConfig {
  uint64_t chunk_bytes = 4u << 20;  ///< bytes of gradient (in the pushed dtype) per chunk
  uint32_t ring = 2;  ///< staging buffers for push (>= 1; 2 = double buffering)
  bool record = false;  ///< keep a timeline of the last push
};

/// One learner's pipelined path to the store. Not thread-safe: one call at a time, like the
/// learner handle it serves; the handle must outlive it.
class Transfer {
 public:
  /// `d2h` serves push, `h2d` pull. Pins the store's memory when the engines are CUDA ones.
  Transfer(Learner& learner, std::unique_ptr<CopyEngine> d2h, std::unique_ptr<CopyEngine> h2d,
           const TransferConfig& cfg);
  ~Transfer();

  /// Learner::push with `grad` (n elements of dtype in the engine's source memory): blocks
  /// until every shard update is applied. Waits for the work queued on `stream` first (none:
  /// the caller has made sure the gradient is complete, e.g. by waiting on an event).
  /// Returns the shard updates dropped, as Learner::push does.
  uint32_t push(const void* grad, DType dtype, size_t n, std::optional<uintptr_t> stream);
  /// Learner::pull into `out` (n elements of dtype f32, f16 or bf16 in the engine's destination
  /// memory; half precision is narrowed on the CPU with round-to-nearest-even). Returns when the
  /// copies are complete; work queued on `stream` afterwards is ordered after them.
  void pull(void* out, DType dtype, size_t n, uintptr_t stream);

  /// Events of the last push (record = true): its copies and applies.
  std::vector<TimelineEvent> timeline() const;
  const TransferConfig& config() const { return cfg_; }
  const char* engine_name() const { return d2h_->name(); }

 private:
  Learner& learner_;
  std::unique_ptr<CopyEngine> d2h_, h2d_;
  TransferConfig cfg_;
  std::vector<HostBuffer> ring_;  // push staging, cfg_.ring buffers of chunk_bytes
  HostBuffer retry_;  // push staging for leashed retries
  std::vector<HostBuffer> narrow_;  // pull staging for half precision, 2 buffers
  std::vector<TimelineEvent> applies_;
  std::vector<uint64_t> tickets_;  // ticket of each chunk of the last push (0 = not started)
  std::vector<uint32_t> buffers_;  // staging buffer of each chunk of the last push
};

/// dst[i] = src[i] narrowed to fp16 or bf16 (dt) with round-to-nearest-even (NaN stays NaN):
/// the pull path's conversion. Throws std::invalid_argument for dt = kF32. Thread-safe; the
/// caller keeps both buffers (n elements each) alive until it returns.
void narrow(void* dst, DType dt, const float* src, size_t n);

}  // namespace fastps
