// The transfer pipeline (algorithm at the top of fastps/transfer.h) and the CPU copy engine.
#include "fastps/transfer.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "fastps/check.h"
#include "kernels.h"

namespace fastps {
namespace {

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

void free_aligned(char* p) { std::free(p); }

// The CPU engine. Everything it shares with its worker thread is guarded by mu_:
//   1. copy() appends a job with the next ticket and wakes the worker.
//   2. The worker takes jobs in ticket order, sleeps delay_us, copies with mu_ released, then
//      sets done_ to the job's ticket and wakes the waiters.
//   3. wait(t) sleeps on cv_ until done_ >= t. Tickets complete in order, as on a CUDA stream.
class CpuEngine final : public CopyEngine {
 public:
  CpuEngine(uint32_t delay_us, bool record) : delay_us_(delay_us), record_(record) {
    worker_ = std::thread([this] { run(); });
  }
  ~CpuEngine() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;  // the worker finishes the queued copies first
    }
    cv_.notify_all();
    worker_.join();
  }

  uint64_t copy(void* dst, const void* src, size_t bytes) override {
    std::lock_guard<std::mutex> g(mu_);
    jobs_.push_back(Job{static_cast<char*>(dst), static_cast<const char*>(src), bytes, ++issued_});
    cv_.notify_all();
    return issued_;
  }
  void wait(uint64_t ticket) override {
    std::unique_lock<std::mutex> g(mu_);
    FASTPS_CHECK(ticket <= issued_, "copy engine: wait for ticket %llu, only %llu issued",
                 static_cast<unsigned long long>(ticket), static_cast<unsigned long long>(issued_));
    cv_.wait(g, [&] { return done_ >= ticket; });
  }
  void after(uintptr_t) override {}
  void before(uintptr_t) override {}
  HostBuffer alloc_host(size_t bytes) override {
    char* p =
        static_cast<char*>(std::aligned_alloc(64, (std::max<size_t>(bytes, 1) + 63) / 64 * 64));
    FASTPS_CHECK(p != nullptr, "copy engine: cannot allocate %zu bytes of staging memory", bytes);
    return HostBuffer(p, &free_aligned);
  }
  bool host_addressable() const override { return true; }
  const char* name() const override { return "cpu"; }

  std::vector<std::pair<uint64_t, uint64_t>> spans() const {
    std::lock_guard<std::mutex> g(mu_);
    return spans_;
  }

 private:
  struct Job {
    char* dst;
    const char* src;
    size_t bytes;
    uint64_t ticket;
  };

  void run() {
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_ and nothing left
      const Job job = jobs_.front();
      jobs_.pop_front();
      g.unlock();
      const uint64_t t0 = now_ns();
      if (delay_us_) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_));
      std::memcpy(job.dst, job.src, job.bytes);
      const uint64_t t1 = now_ns();
      g.lock();
      if (record_) spans_.emplace_back(t0, t1);
      done_ = job.ticket;
      cv_.notify_all();
    }
  }

  const uint32_t delay_us_;
  const bool record_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  uint64_t issued_ = 0, done_ = 0;
  bool stop_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> spans_;
  std::thread worker_;  // last: started once every member above exists
};

// push's gradient source: the ring of steps 1-3 in fastps/transfer.h.
class RingSource final : public GradSource {
 public:
  RingSource(CopyEngine& eng, const std::vector<Chunk>& plan, const char* grad, size_t esize,
             std::vector<HostBuffer>& ring, HostBuffer& retry, std::vector<uint64_t>& tickets,
             std::vector<uint32_t>& buffers, std::vector<TimelineEvent>* applies)
      : eng_(eng), plan_(plan), grad_(grad), esize_(esize), ring_(ring), retry_(retry),
        tickets_(tickets), buffers_(buffers), applies_(applies) {
    tickets_.assign(plan_.size(), 0);
    buffers_.assign(plan_.size(), 0);
    start_upto(ring_.size());  // step 1
  }

  const void* fetch(const Chunk& c, bool retry) override {
    close_apply();
    if (retry) {  // step 3: the ring has moved on; copy this chunk again, synchronously
      eng_.wait(eng_.copy(retry_.get(), grad_ + c.begin * esize_, c.len * esize_));
      if (applies_) open_apply(index_of(c, 0), static_cast<uint32_t>(ring_.size()));
      return retry_.get();
    }
    const size_t j = index_of(c, next_);  // chunks next_..j-1 belonged to a dropped update
    start_upto(j + ring_.size());         // step 2: their buffers and j-1's are free
    eng_.wait(tickets_[j]);
    next_ = j + 1;
    open_apply(j, buffers_[j]);
    return ring_[buffers_[j]].get();
  }

  // After the push (or when it throws): no copy may still write the ring or read the gradient.
  void finish() {
    close_apply();
    if (started_ > 0) eng_.wait(tickets_[started_ - 1]);
  }

 private:
  size_t index_of(const Chunk& c, size_t from) const {
    size_t j = from;
    while (j < plan_.size() && plan_[j].begin != c.begin) ++j;
    FASTPS_CHECK(j < plan_.size() && plan_[j].len == c.len,
                 "push: internal error: chunk [%llu, +%llu) is not in the transfer plan",
                 static_cast<unsigned long long>(c.begin), static_cast<unsigned long long>(c.len));
    return j;
  }
  void start_upto(size_t end) {
    const size_t R = ring_.size();
    for (end = std::min(end, plan_.size()); started_ < end; ++started_) {
      const Chunk& c = plan_[started_];
      buffers_[started_] = static_cast<uint32_t>(started_ % R);
      tickets_[started_] =
          eng_.copy(ring_[started_ % R].get(), grad_ + c.begin * esize_, c.len * esize_);
    }
  }
  void open_apply(size_t chunk, uint32_t buffer) {
    if (!applies_) return;
    applies_->push_back(
        TimelineEvent{TimelineEvent::kApply, static_cast<uint32_t>(chunk), buffer, now_ns(), 0});
    open_ = true;
  }
  void close_apply() {
    if (open_) applies_->back().end_ns = now_ns();
    open_ = false;
  }

  CopyEngine& eng_;
  const std::vector<Chunk>& plan_;
  const char* grad_;
  size_t esize_;
  std::vector<HostBuffer>& ring_;
  HostBuffer& retry_;
  std::vector<uint64_t>& tickets_;
  std::vector<uint32_t>& buffers_;
  std::vector<TimelineEvent>* applies_;
  size_t started_ = 0, next_ = 0;
  bool open_ = false;
};

// pull's sink: one copy per chunk straight from store memory, or through a narrowing buffer.
class EngineSink final : public ParamSink {
 public:
  EngineSink(CopyEngine& eng, char* out, DType dt, uint64_t chunk, std::vector<HostBuffer>& narrow)
      : eng_(eng), out_(out), dt_(dt), esize_(dtype_size(dt)), chunk_(chunk), narrow_(narrow) {}

  void copy(const Chunk& c, const float* src) override {
    for (uint64_t off = 0; off < c.len; off += chunk_) {
      const uint64_t len = std::min(chunk_, c.len - off);
      char* dst = out_ + (c.begin + off) * esize_;
      if (dt_ == DType::kF32) {
        last_ = eng_.copy(dst, src + off, len * sizeof(float));
        continue;
      }
      const size_t b = k_++ % narrow_.size();
      if (busy_[b]) eng_.wait(busy_[b]);  // the buffer's previous copy has read it
      narrow(narrow_[b].get(), dt_, src + off, len);
      busy_[b] = last_ = eng_.copy(dst, narrow_[b].get(), len * esize_);
    }
  }
  void flush() override {
    if (last_) eng_.wait(last_);
  }

 private:
  CopyEngine& eng_;
  char* out_;
  DType dt_;
  size_t esize_;
  uint64_t chunk_;
  std::vector<HostBuffer>& narrow_;
  uint64_t last_ = 0, busy_[2] = {0, 0};
  size_t k_ = 0;
};

void check_dtype(const char* api, DType dt) {
  FASTPS_CHECK_ARG(dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16,
                   "%s: unknown dtype %u", api, static_cast<unsigned>(dt));
}

}  // namespace

std::unique_ptr<CopyEngine> make_cpu_engine(uint32_t delay_us, bool record) {
  return std::make_unique<CpuEngine>(delay_us, record);
}

std::vector<std::pair<uint64_t, uint64_t>> copy_spans(const CopyEngine& engine) {
  const auto* cpu = dynamic_cast<const CpuEngine*>(&engine);
  return cpu ? cpu->spans() : std::vector<std::pair<uint64_t, uint64_t>>{};
}

Transfer::Transfer(Learner& learner, std::unique_ptr<CopyEngine> d2h,
                   std::unique_ptr<CopyEngine> h2d, const TransferConfig& cfg)
    : learner_(learner), d2h_(std::move(d2h)), h2d_(std::move(h2d)), cfg_(cfg),
      retry_(nullptr, &free_aligned) {
  FASTPS_CHECK_ARG(cfg.chunk_bytes >= 64 && cfg.chunk_bytes % 64 == 0,
                   "transfer: chunk_bytes must be a positive multiple of 64 (got %llu)",
                   static_cast<unsigned long long>(cfg.chunk_bytes));
  FASTPS_CHECK_ARG(cfg.ring >= 1 && cfg.ring <= 64, "transfer: ring must be 1..64 buffers (got %u)",
                   cfg.ring);
  FASTPS_CHECK_ARG(d2h_ && h2d_, "transfer: two copy engines are needed");
  for (uint32_t i = 0; i < cfg.ring; ++i) ring_.push_back(d2h_->alloc_host(cfg.chunk_bytes));
  if (!d2h_->host_addressable() || !h2d_->host_addressable()) learner_.store()->pin_memory();
}

Transfer::~Transfer() = default;

uint32_t Transfer::push(const void* grad, DType dtype, size_t n, std::optional<uintptr_t> stream) {
  check_dtype("push", dtype);
  const StoreConfig& cfg = learner_.store()->config();
  FASTPS_CHECK_ARG(n == cfg.size, "push: grad has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(cfg.size));
  if (d2h_->host_addressable() && cfg.nan_guard != NanGuard::kOff) {
    const int64_t bad = detail::first_nonfinite(grad, dtype, n);
    if (bad >= 0) return learner_.refuse_nonfinite(bad);
  }
  if (!retry_ && cfg.mode == Mode::kLeashed) retry_ = d2h_->alloc_host(cfg_.chunk_bytes);
  const size_t esize = dtype_size(dtype);
  const uint64_t chunk = cfg_.chunk_bytes / esize;
  const std::vector<Chunk> plan = learner_.chunk_plan(chunk);
  applies_.clear();
  if (stream) d2h_->after(*stream);
  RingSource src(*d2h_, plan, static_cast<const char*>(grad), esize, ring_, retry_, tickets_,
                 buffers_, cfg_.record ? &applies_ : nullptr);
  uint32_t dropped = 0;
  try {
    dropped = learner_.push(src, dtype, n, chunk);
  } catch (...) {
    src.finish();
    throw;
  }
  src.finish();
  return dropped;
}

void Transfer::pull(void* out, DType dtype, size_t n, uintptr_t stream) {
  check_dtype("pull", dtype);
  const StoreConfig& cfg = learner_.store()->config();
  FASTPS_CHECK_ARG(n == cfg.size, "pull: out has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(cfg.size));
  if (dtype != DType::kF32 && narrow_.empty())
    for (int i = 0; i < 2; ++i) narrow_.push_back(h2d_->alloc_host(cfg_.chunk_bytes));
  h2d_->after(stream);  // the caller's kernels that read `out` finish before it is overwritten
  EngineSink sink(*h2d_, static_cast<char*>(out), dtype, cfg_.chunk_bytes / dtype_size(dtype),
                  narrow_);
  learner_.pull(sink, n);
  h2d_->before(stream);
}

std::vector<TimelineEvent> Transfer::timeline() const {
  std::vector<TimelineEvent> ev = applies_;
  const auto spans = copy_spans(*d2h_);
  if (spans.empty()) return ev;
  // Tickets of the last push: chunk i's copy is ticket tickets_[i] (retries are not listed).
  for (size_t i = 0; i < tickets_.size(); ++i) {
    const uint64_t t = tickets_[i];
    if (t == 0 || t > spans.size()) continue;
    ev.push_back(TimelineEvent{TimelineEvent::kCopy, static_cast<uint32_t>(i), buffers_[i],
                               spans[t - 1].first, spans[t - 1].second});
  }
  return ev;
}

void narrow(void* dst, DType dt, const float* src, size_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  if (dt == DType::kBF16) {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t x = std::bit_cast<uint32_t>(src[i]);
      // Round to nearest even (c10::BFloat16's rule); NaN becomes the quiet NaN 0x7fc0.
      d[i] = (x & 0x7fffffffu) > 0x7f800000u
                 ? uint16_t{0x7fc0}
                 : static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return;
  }
  FASTPS_CHECK_ARG(dt == DType::kF16, "narrow: dtype %s is not a half-precision type",
                   dtype_name(dt));
  for (size_t i = 0; i < n; ++i)  // the compiler's IEEE conversion: round to nearest even
    d[i] = std::bit_cast<uint16_t>(static_cast<_Float16>(src[i]));
}

}  // namespace fastps
