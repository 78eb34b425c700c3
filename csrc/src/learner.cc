// fastps::Learner: one handle's pull and push over every shard, in the store's mode. The
// leashed steps call the slot protocol (leashed.h, algorithm at the top of leashed.cc); the
// locked ones hold the shard lock (shard_lock.h).
#include "fastps/learner.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "fastps/check.h"
#include "kernels.h"
#include "layout.h"
#include "leashed.h"
#include "registry.h"
#include "shard_lock.h"
#include "step_size.h"

namespace fastps {

using detail::Layout;
using detail::ShardDesc;

namespace {

// The host path's source: the whole gradient is in memory, each chunk is a pointer into it.
class HostSource final : public GradSource {
 public:
  HostSource(const void* g, size_t esize) : g_(static_cast<const char*>(g)), esize_(esize) {}
  const void* fetch(const Chunk& c, bool) override { return g_ + c.begin * esize_; }

 private:
  const char* g_;
  size_t esize_;
};

// The host path's sink: copies each shard at once (one call per shard, no per-element cost);
// hogwild's copies go through the one accessor that may race with writers.
class HostSink final : public ParamSink {
 public:
  HostSink(float* out, bool hogwild) : out_(out), hogwild_(hogwild) {}
  void copy(const Chunk& c, const float* src) override {
    if (hogwild_)
      detail::hogwild_copy(out_ + c.begin, src, c.len);
    else
      std::memcpy(out_ + c.begin, src, c.len * sizeof(float));
  }
  void flush() override {}

 private:
  float* out_;
  bool hogwild_;
};

constexpr uint64_t kWholeShard = ~uint64_t{0};

// Claims a slot of shard s for writing; yields while all are taken (recovering the slots of
// dead learners now and then). Cannot wait forever while max_learners bounds the handles; a
// damaged segment ends the wait with std::runtime_error (check_no_slot).
detail::Claim claim_slot(const Layout& L, uint32_t s, uint32_t entry) {
  detail::Claim c{};
  uint64_t since = 0;
  for (uint32_t round = 0; !detail::try_claim(L, s, entry, &c); ++round) {
    detail::check_no_slot(L, s, round, since);  // throws on damage, never waits forever
    L.shards[s].slot_waits.fetch_add(1, std::memory_order_relaxed);  // statistics only
    if (round % 64 == 63) detail::recover_dead(L);  // slots held by a dead learner come back
    std::this_thread::yield();
  }
  return c;
}

}  // namespace

Learner::Learner(std::shared_ptr<Store> store, uint32_t id)
    : store_(std::move(store)), id_(id), read_versions_(store_->cfg_.shards, 0),
      pushed_versions_(store_->cfg_.shards, 0) {
  const StoreConfig& c = store_->cfg_;
  if (c.step.kind == StepKind::kDistance) {
    if (c.mode == Mode::kLeashed)
      read_slots_.assign(c.shards, -1);
    else
      read_copy_.resize(c.size);
  }
}

void Learner::release_read_pins() noexcept {
  for (uint32_t s = 0; s < read_slots_.size(); ++s)
    if (read_slots_[s] >= 0) {
      detail::unpin(*store_->lay_, s, static_cast<uint32_t>(read_slots_[s]), id_, 1);
      read_slots_[s] = -1;
    }
}

Learner::~Learner() { close(); }

void Learner::close() noexcept {
  if (!open_) return;
  open_ = false;
  release_read_pins();
  detail::release_entry(*store_->lay_, id_);
}

void Learner::check_open(const char* api) const {
  FASTPS_CHECK(open_, "%s: this learner handle is closed", api);
  store_->check_open(api);
}

uint64_t Learner::read_version(int64_t s) const {
  check_open("read_version");
  const auto shards = static_cast<int64_t>(read_versions_.size());
  FASTPS_CHECK_ARG(s >= 0 && s < shards, "read_version: shard %lld out of range [0, %lld)",
                   static_cast<long long>(s), static_cast<long long>(shards));
  return read_versions_[static_cast<size_t>(s)];
}

float Learner::eta(uint64_t tau, uint32_t s, uint64_t version, const float* w_now,
                   const float* w_read) {
  const Layout& L = *store_->lay_;
  const detail::StepInputs in{StepContext{tau, s, id_, version, read_versions_[s]}, w_now, w_read,
                              L.shards[s].len};
  return detail::eta(L, store_->hook_, in);
}

std::vector<Chunk> Learner::chunk_plan(uint64_t chunk) const {
  FASTPS_CHECK_ARG(chunk > 0, "plan: chunk must be at least 1 element");
  const Layout& L = *store_->lay_;
  const uint32_t S = store_->cfg_.shards;
  std::vector<Chunk> out;
  for (uint32_t k = 0; k < S; ++k) {
    const uint32_t s = (id_ + k) % S;  // learners start at different shards
    const ShardDesc& d = L.shards[s];
    for (uint64_t off = 0; off < d.len; off += chunk)
      out.push_back(Chunk{s, d.begin + off, std::min(chunk, d.len - off)});
  }
  return out;
}

void Learner::begin_push(DType dtype, size_t n) {
  check_open("push");
  applied_ = 0;
  std::fill(pushed_versions_.begin(), pushed_versions_.end(), 0);
  FASTPS_CHECK_ARG(n == store_->cfg_.size, "push: grad has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(store_->cfg_.size));
  FASTPS_CHECK_ARG(dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16,
                   "push: unknown gradient dtype %u", static_cast<unsigned>(dtype));
}

uint32_t Learner::push(const void* grad, DType dtype, size_t n) {
  begin_push(dtype, n);
  check_ready();
  if (store_->cfg_.nan_guard != NanGuard::kOff) {
    const int64_t bad = detail::first_nonfinite(grad, dtype, n);
    if (bad >= 0) return refuse_nonfinite(bad);
  }
  HostSource src(grad, dtype_size(dtype));
  return push_impl(src, dtype, kWholeShard);
}

uint32_t Learner::push(GradSource& src, DType dtype, size_t n, uint64_t chunk) {
  begin_push(dtype, n);
  FASTPS_CHECK_ARG(chunk > 0, "push: chunk must be at least 1 element");
  return push_impl(src, dtype, chunk);
}

uint32_t Learner::refuse_nonfinite(int64_t index) {
  check_open("push");
  const StoreConfig& cfg = store_->cfg_;
  FASTPS_CHECK_ARG(cfg.nan_guard != NanGuard::kRaise,
                   "push: grad[%lld] is not finite (NaN or Inf); nothing was applied "
                   "(nan_guard='raise'; 'skip' drops such gradients and counts them)",
                   static_cast<long long>(index));
  store_->lay_->hdr->nonfinite_skipped.fetch_add(1, std::memory_order_relaxed);  // stats only
  return cfg.shards;
}

void Learner::backdate(uint64_t updates) {
  check_open("backdate");
  FASTPS_CHECK_ARG(pulled_, "backdate: needs a pull first (it moves the last pull's versions)");
  FASTPS_CHECK_ARG(store_->cfg_.step.kind != StepKind::kDistance || updates == 0,
                   "backdate: the StalenessDistance step size needs the model the gradient was "
                   "computed on, which the store no longer has");
  for (uint32_t s = 0; s < read_versions_.size(); ++s)
    FASTPS_CHECK_ARG(read_versions_[s] >= updates,
                     "backdate: shard %u was read at version %llu, fewer than %llu updates ago", s,
                     static_cast<unsigned long long>(read_versions_[s]),
                     static_cast<unsigned long long>(updates));
  for (uint64_t& v : read_versions_) v -= updates;
}

void Learner::check_ready() const {
  const StoreConfig& cfg = store_->cfg_;
  FASTPS_CHECK(cfg.step.kind != StepKind::kDistance || pulled_,
               "push: the StalenessDistance step size needs a pull before the first push");
  FASTPS_CHECK(cfg.step.kind != StepKind::kHook || store_->hook_,
               "push: this store's step size is a Python hook, and none is set in this process "
               "(attach with step_size= the same callable)");
}
// Applies one push, shard by shard in chunk_plan order, asking `src` for each chunk of at most
// `chunk` elements right before applying it (so a pipelined source overlaps its copies with
// these applies).
uint32_t Learner::push_impl(GradSource& src, DType dtype, uint64_t chunk) {
  check_ready();
  const StoreConfig& cfg = store_->cfg_;
  const bool distance = cfg.step.kind == StepKind::kDistance;
  const Layout& L = *store_->lay_;
  L.hdr->pushes.fetch_add(1, std::memory_order_relaxed);  // statistics only
  const size_t esize = dtype_size(dtype);
  const uint32_t S = cfg.shards;
  detail::ApplyArgs args{cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov};
  uint32_t dropped = 0;
  // Calls fn(offset in shard, gradient chunk, chunk length) over shard s in order.
  auto each_chunk = [&](uint32_t s, bool retry, auto&& fn) {
    const ShardDesc& d = L.shards[s];
    for (uint64_t off = 0; off < d.len; off += std::min(chunk, d.len)) {
      const uint64_t len = std::min(chunk, d.len - off);
      fn(off, src.fetch(Chunk{s, d.begin + off, len}, retry), len);
    }
  };
  auto at = [](float* p, uint64_t off) { return p ? p + off : nullptr; };

  for (uint32_t k = 0; k < S; ++k) {
    const uint32_t s = (id_ + k) % S;
    ShardDesc& d = L.shards[s];
    const uint64_t bytes = d.len * esize;
    const float* read_copy =
        distance && cfg.mode != Mode::kLeashed ? read_copy_.data() + d.begin : nullptr;
    bool landed = true;
    switch (cfg.mode) {
      case Mode::kLocked: {
        detail::ShardLock lock(L, s);  // released on every exit, a throwing hook included
        const uint64_t v = d.version.load(std::memory_order_relaxed);  // under the shard lock
        const uint64_t tau = v - read_versions_[s];
        args.eta = eta(tau, s, v, L.params(s), read_copy);
        each_chunk(s, false, [&](uint64_t off, const void* g, uint64_t len) {
          detail::apply_inplace(L.params(s) + off, at(L.momentum(s), off), g, dtype, len, args);
        });
        d.version.store(v + 1, std::memory_order_relaxed);  // under the shard lock
        pushed_versions_[s] = v + 1;
        detail::record(L, s, tau, bytes);
        break;
      }
      case Mode::kHogwild: {
        // Approximate by design: other pushes may interleave with the eta and apply below.
        const uint64_t v0 = d.version.load(std::memory_order_relaxed);
        const uint64_t tau0 = v0 >= read_versions_[s] ? v0 - read_versions_[s] : 0;
        args.eta = eta(tau0, s, v0, L.params(s), read_copy);
        each_chunk(s, false, [&](uint64_t off, const void* g, uint64_t len) {
          detail::hogwild_apply(L.params(s) + off, at(L.momentum(s), off), g, dtype, len, args);
        });
        const uint64_t v = d.version.fetch_add(1, std::memory_order_relaxed);
        pushed_versions_[s] = v + 1;
        detail::record(L, s, v >= read_versions_[s] ? v - read_versions_[s] : 0, bytes);
        break;
      }
      case Mode::kLeashed: {
        // Steps 2 and 3 of the slot protocol (leashed.cc): claim, pin, write, publish or retry.
        const detail::Claim mine = claim_slot(L, s, id_);
        const float* w_read =
            distance ? L.slot_params(s, static_cast<uint32_t>(read_slots_[s])) : nullptr;
        args.stream = store_->stream_versions_;
        int failures = 0;
        for (bool retry = false;; retry = true) {
          const uint64_t c = detail::pin(L, s, id_);
          const auto latest = static_cast<uint32_t>(c & detail::kSlotMask);
          const uint64_t v = c >> detail::kSlotBits;
          const uint64_t tau = v - read_versions_[s];
          try {
            args.eta = eta(tau, s, v, L.slot_params(s, latest), w_read);
            each_chunk(s, retry, [&](uint64_t off, const void* g, uint64_t len) {
              detail::apply_copy(L.slot_params(s, mine.slot) + off, L.slot_params(s, latest) + off,
                                 at(L.slot_momentum(s, mine.slot), off),
                                 at(L.slot_momentum(s, latest), off), g, dtype, len, args);
            });
          } catch (...) {  // a throwing hook or source: give back the pin and the claimed slot
            detail::unpin(L, s, latest, id_);
            detail::abandon(L, s, mine, id_);
            throw;
          }
          // apply_copy has fenced its streaming stores: the CAS publishes complete data.
          if (detail::publish(L, s, c, mine, id_)) {
            pushed_versions_[s] = v + 1;
            detail::record(L, s, tau, bytes);
            break;
          }
          d.cas_failures.fetch_add(1, std::memory_order_relaxed);  // statistics only
          if (cfg.persistence >= 0 && ++failures > cfg.persistence) {
            detail::abandon(L, s, mine, id_);
            d.dropped.fetch_add(1, std::memory_order_relaxed);  // statistics only
            ++dropped;
            landed = false;
            break;
          }
        }
        break;
      }
    }
    if (landed) ++applied_;
  }
  if (dropped == 0) L.hdr->clock.fetch_add(1, std::memory_order_relaxed);  // statistics only
  return dropped;
}

void Learner::keep_read_copy(uint32_t s, const float* src) {
  const ShardDesc& d = store_->lay_->shards[s];
  if (store_->cfg_.mode == Mode::kHogwild)
    detail::hogwild_copy(read_copy_.data() + d.begin, src, d.len);
  else
    std::memcpy(read_copy_.data() + d.begin, src, d.len * sizeof(float));
}

void Learner::pull(float* out, size_t n) {
  HostSink sink(out, store_->cfg_.mode == Mode::kHogwild);
  pull(sink, n);
}

void Learner::pull(ParamSink& sink, size_t n) {
  check_open("pull");
  const StoreConfig& cfg = store_->cfg_;
  FASTPS_CHECK_ARG(n == cfg.size, "pull: out has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(cfg.size));
  const Layout& L = *store_->lay_;
  const uint32_t S = cfg.shards;
  const bool keep_read = cfg.step.kind == StepKind::kDistance;
  struct Pin {
    uint32_t s, slot;
  };
  std::vector<Pin> pins;  // leashed: released after the final flush
  auto release = [&] {
    for (const Pin& p : pins) detail::unpin(L, p.s, p.slot, id_);
    pins.clear();
  };
  try {
    for (uint32_t k = 0; k < S; ++k) {
      const uint32_t s = (id_ + k) % S;  // learners start at different shards
      ShardDesc& d = L.shards[s];
      const Chunk c{s, d.begin, d.len};
      switch (cfg.mode) {
        case Mode::kLocked: {
          detail::ShardLock lock(L, s);
          sink.copy(c, L.params(s));
          sink.flush();  // the copy reads the shard: keep the lock until it is done
          read_versions_[s] = d.version.load(std::memory_order_relaxed);  // under the shard lock
          if (keep_read) keep_read_copy(s, L.params(s));
          break;
        }
        case Mode::kHogwild: {
          read_versions_[s] = d.version.load(std::memory_order_relaxed);  // approximate by design
          sink.copy(c, L.params(s));
          if (keep_read) keep_read_copy(s, L.params(s));
          break;
        }
        case Mode::kLeashed: {
          // Staleness distance keeps what was read pinned (role 1) until the next pull.
          if (keep_read && read_slots_[s] >= 0) {
            detail::unpin(L, s, static_cast<uint32_t>(read_slots_[s]), id_, 1);
            read_slots_[s] = -1;
          }
          const uint64_t cur = detail::pin(L, s, id_, keep_read ? 1 : 0);
          const auto slot = static_cast<uint32_t>(cur & detail::kSlotMask);
          if (keep_read)
            read_slots_[s] = static_cast<int32_t>(slot);  // stays pinned until the next pull
          else
            pins.push_back(Pin{s, slot});
          read_versions_[s] = cur >> detail::kSlotBits;
          sink.copy(c, L.slot_params(s, slot));
          break;
        }
      }
    }
    sink.flush();
  } catch (...) {
    try {
      sink.flush();  // copies may still read pinned versions
    } catch (...) {
    }
    release();
    throw;
  }
  release();
  pulled_ = true;
}

}  // namespace fastps
