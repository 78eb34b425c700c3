// fastps::Store: creating and attaching the arena, whole-store reads (read, save, stats), load,
// recovery and inspection. The mechanisms live beside it: the arena plan (arena_plan.cc), shard
// locks (shard_lock.cc), the leashed slot protocol (leashed.cc), the learner registry
// (registry.cc) and step sizes (step_size.cc); learner handles are in learner.cc.
#include "fastps/store.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "arena.h"
#include "arena_plan.h"
#include "fastps/check.h"
#include "fastps/learner.h"
#include "kernels.h"
#include "layout.h"
#include "leashed.h"
#include "pin_host.h"
#include "registry.h"
#include "shard_lock.h"
#include "step_size.h"
#include "validate.h"

namespace fastps {

using detail::Header;
using detail::Layout;
using detail::ShardDesc;

namespace {

// One consistent copy of shard s for a reader without a handle (Store::read, Store::save):
// under its lock (locked), without synchronisation (hogwild), or from its pinned published
// version (leashed, the reader's reserved entry). `momentum` may be null. Returns the version.
uint64_t copy_shard(const Layout& L, uint32_t s, float* params, float* momentum, uint32_t entry) {
  ShardDesc& d = L.shards[s];
  const size_t bytes = d.len * sizeof(float);
  switch (L.hdr->cfg.mode) {
    case Mode::kLocked: {
      detail::ShardLock lock(L, s);
      std::memcpy(params, L.params(s), bytes);
      if (momentum) std::memcpy(momentum, L.momentum(s), bytes);
      return d.version.load(std::memory_order_relaxed);  // under the shard lock
    }
    case Mode::kHogwild: {
      const uint64_t v = d.version.load(std::memory_order_relaxed);  // approximate by design
      detail::hogwild_copy(params, L.params(s), d.len);
      if (momentum) detail::hogwild_copy(momentum, L.momentum(s), d.len);
      return v;
    }
    case Mode::kLeashed: {
      const uint64_t c = detail::pin(L, s, entry);
      const auto slot = static_cast<uint32_t>(c & detail::kSlotMask);
      std::memcpy(params, L.slot_params(s, slot), bytes);
      if (momentum) std::memcpy(momentum, L.slot_momentum(s, slot), bytes);
      detail::unpin(L, s, slot, entry);
      return c >> detail::kSlotBits;
    }
  }
  return 0;
}

// The last-level cache one core reaches: sysfs's per-instance L3 size (sysconf may report the
// sum over a package's L3 instances), else sysconf's, else 32 MiB.
uint64_t llc_bytes() {
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
  uint64_t v = 0;
  char unit = 0;
  if (f >> v) {
    if (f >> unit) v <<= unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0;
    if (v > 0) return v;
  }
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? static_cast<uint64_t>(l3) : uint64_t{32} << 20;
}

// Leashed versions are written with non-temporal stores when a push's working set (the latest
// version, the gradient and the new version: 12 bytes per element) is larger than the last-level
// cache: the new version would not stay cached for the next push anyway, and ordinary stores
// would first read each of its lines (write-allocate). Smaller stores keep ordinary stores, so
// the next push finds the version just written in cache.
bool stream_versions(const StoreConfig& cfg) {
  static const uint64_t llc = llc_bytes();
  return cfg.mode == Mode::kLeashed && cfg.size * 3 * sizeof(float) > llc;
}

}  // namespace

Store::Store(std::shared_ptr<Arena> arena, const StoreConfig& cfg)
    : arena_(std::move(arena)), cfg_(cfg),
      lay_(std::make_unique<Layout>(detail::make_layout(arena_->base()))),
      stream_versions_(stream_versions(cfg)) {
  lay_->name = arena_->name().c_str();  // arena_ outlives lay_ (declared first)
}

Store::~Store() {
  if (pinned_) unpin_host(arena_->base());
}

const std::string& Store::name() const { return arena_->name(); }

bool Store::is_creator() const { return arena_->is_creator(); }

void Store::pin_memory() {
  check_open("pin_memory");
  std::lock_guard<std::mutex> g(pin_mu_);
  if (pinned_ || !pin_error_.empty()) return;
  pin_error_ = pin_host(arena_->base(), arena_->bytes());
  pinned_ = pin_error_.empty();
}

namespace {

// Arena::reclaim's judge for Store::create: throws (naming who keeps the segment alive) unless
// `base` is a fastps store whose creator is gone and none of whose registered learner processes
// runs; then returns the creator's pid.
int32_t judge_stale(const std::string& name, const char* base, size_t bytes) {
  const auto* h = reinterpret_cast<const Header*>(base);
  // Pairs with the release store at the end of init_arena().
  FASTPS_CHECK(bytes >= sizeof(Header) &&
                   h->magic.load(std::memory_order_acquire) == detail::kMagic &&
                   h->format_version == detail::kFormatVersion && h->total_bytes == bytes,
               "Store: cannot create shared segment '%s': File exists, and /dev/shm/fastps.%s is "
               "not a fastps store of this version (or is still being created); remove it "
               "(fastps.cleanup('%s', force=True)) or pick another name",
               name.c_str(), name.c_str(), name.c_str());
  FASTPS_CHECK(!detail::process_alive(h->creator_pid, h->creator_start_time),
               "Store: cannot create shared segment '%s': File exists, and its creator (pid %d) "
               "is running; attach to it with fastps.Store.attach('%s'), close it there, or pick "
               "another name (fastps.cleanup() removes segments whose creator is gone)",
               name.c_str(), h->creator_pid, name.c_str());
  const Layout L = detail::make_layout(const_cast<char*>(base));
  for (uint32_t e = 0; e < h->entries; ++e) {
    // Pairs with claim_entry's release store: start_time is visible with OWNED.
    const uint64_t w = L.entries[e].word.load(std::memory_order_acquire);
    const uint32_t st = detail::entry_state(w);
    const int32_t pid = detail::entry_pid(w);
    const uint64_t start = st == detail::kEntryOwned ? L.entries[e].start_time : 0;
    FASTPS_CHECK(st == detail::kEntryFree || !detail::process_alive(pid, start),
                 "Store: cannot create shared segment '%s': File exists; its creator (pid %d) is "
                 "gone, but pid %d still uses it as a learner; stop that process, or attach to "
                 "the store with fastps.Store.attach('%s')",
                 name.c_str(), h->creator_pid, pid, name.c_str());
  }
  return h->creator_pid;
}

}  // namespace

std::shared_ptr<Store> Store::create(const StoreConfig& cfg, const float* init,
                                     const std::string& shared_name) {
  cfg.validate();
  const detail::ArenaPlan p = detail::plan_arena(cfg);
  std::shared_ptr<Arena> arena;
  int32_t reclaimed = 0;
  for (int tries = 0; !arena; ++tries) {
    if (shared_name.empty()) {
      arena = Arena::create_private(p.total);
      break;
    }
    try {
      arena = Arena::create_shared(shared_name, p.total);
    } catch (const SegmentExists&) {
      if (tries == 3) throw;  // reclaimed three times and recreated by others each time
      int32_t pid = 0;
      const bool gone = Arena::reclaim(shared_name, [&](const char* base, size_t bytes) {
        pid = judge_stale(shared_name, base, bytes);
      });
      if (gone) reclaimed = pid;
    }
  }
  detail::init_arena(arena->base(), p, cfg, init);
  std::shared_ptr<Store> st(new Store(arena, cfg));
  st->reclaimed_pid_ = reclaimed;
  return st;
}

std::shared_ptr<Store> Store::attach(const std::string& shared_name) {
  std::shared_ptr<Arena> arena = Arena::attach(shared_name);
  // Every immutable word checked before anything is dereferenced.
  const StoreConfig cfg = detail::check_arena(arena->base(), arena->bytes(), shared_name);
  std::shared_ptr<Store> st(new Store(arena, cfg));
  detail::recover_dead(*st->lay_);  // a restarted learner attaching cleans up after its predecessor
  return st;
}

void Store::close() noexcept {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;  // pairs with check_open()
  arena_->unlink();
}

bool Store::closed() const { return closed_.load(std::memory_order_acquire); }

void Store::check_open(const char* api) const {
  FASTPS_CHECK(!closed(), "%s: the store is closed", api);
}

std::pair<uint64_t, uint64_t> Store::shard_range(uint32_t s) const {
  FASTPS_CHECK_ARG(s < cfg_.shards, "shard_range: shard %u out of range [0, %u)", s, cfg_.shards);
  const ShardDesc& d = lay_->shards[s];
  return {d.begin, d.begin + d.len};
}

void Store::read(float* out, size_t n) const {
  check_open("read");
  FASTPS_CHECK_ARG(n == cfg_.size, "read: out has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(cfg_.size));
  const Layout& L = *lay_;
  detail::InternalEntry entry(L);
  for (uint32_t s = 0; s < cfg_.shards; ++s)
    copy_shard(L, s, out + L.shards[s].begin, nullptr, entry.id());
}
Stats Store::stats() const {
  check_open("stats");
  const Layout& L = *lay_;
  Stats st;
  st.clock = L.hdr->clock.load(std::memory_order_relaxed);
  st.pushes = L.hdr->pushes.load(std::memory_order_relaxed);
  st.nonfinite_skipped = L.hdr->nonfinite_skipped.load(std::memory_order_relaxed);
  for (uint32_t e = 0; e < cfg_.max_learners; ++e)
    st.learners += detail::entry_state(L.entries[e].word.load(std::memory_order_relaxed)) ==
                   detail::kEntryOwned;
  st.recovered = L.hdr->recovered.load(std::memory_order_relaxed);
  st.torn_shards = L.hdr->torn_shards.load(std::memory_order_relaxed);
  st.staleness_hist.assign(cfg_.staleness_bins + 1, 0);
  if (cfg_.step.kind == StepKind::kTailTau) {
    st.step_builds = L.hdr->cdf_builds.load(std::memory_order_relaxed);
    if (L.hdr->cdf_ready.load(std::memory_order_acquire))  // pairs with build_cdf()
      for (uint32_t b = 0; b <= cfg_.staleness_bins; ++b)
        st.step_hist.push_back(L.cdf_hist[b].load(std::memory_order_relaxed));
  }
  st.versions.resize(cfg_.shards);
  for (uint32_t s = 0; s < cfg_.shards; ++s) {
    const ShardDesc& d = L.shards[s];
    st.shard_updates += d.updates.load(std::memory_order_relaxed);
    st.dropped += d.dropped.load(std::memory_order_relaxed);
    st.cas_failures += d.cas_failures.load(std::memory_order_relaxed);
    st.slot_waits += d.slot_waits.load(std::memory_order_relaxed);
    st.lock_wait_ns += d.lock_wait_ns.load(std::memory_order_relaxed);
    st.bytes_applied += d.bytes_applied.load(std::memory_order_relaxed);
    st.versions[s] = cfg_.mode == Mode::kLeashed
                         ? d.current.load(std::memory_order_relaxed) >> detail::kSlotBits
                         : d.version.load(std::memory_order_relaxed);
    if (cfg_.mode == Mode::kLeashed) {
      st.slots_touched =
          std::max(st.slots_touched, d.slots_touched.load(std::memory_order_relaxed));
      for (uint32_t i = 0; i < L.slot_count; ++i)
        st.slots_in_use +=
            detail::slot_state(L.slot(s, i).state.load(std::memory_order_relaxed)) != detail::kFree;
    }
    const std::atomic<uint64_t>* h = L.shard_hist(s);
    for (uint32_t b = 0; b <= cfg_.staleness_bins; ++b)
      st.staleness_hist[b] += h[b].load(std::memory_order_relaxed);
  }
  {
    std::lock_guard<std::mutex> g(pin_mu_);
    st.pinned = pinned_;
    st.pin_error = pin_error_;
  }
  return st;
}

std::unique_ptr<Learner> Store::learner() {
  check_open("learner");
  int64_t e = detail::claim_entry(*lay_, 0, cfg_.max_learners);
  if (e < 0 && detail::recover_dead(*lay_) > 0)
    e = detail::claim_entry(*lay_, 0, cfg_.max_learners);
  FASTPS_CHECK(e >= 0,
               "learner: %u handles are open, the store's max_learners is %u (close a handle or "
               "create the store with a larger max_learners)",
               cfg_.max_learners, cfg_.max_learners);
  return std::unique_ptr<Learner>(new Learner(shared_from_this(), static_cast<uint32_t>(e)));
}

uint32_t Store::recover() {
  check_open("recover");
  return detail::recover_dead(*lay_);
}

Counters Store::save(float* params, float* momentum) const {
  check_open("save");
  const Layout& L = *lay_;
  const bool has_mom = cfg_.momentum != 0.0f;
  FASTPS_CHECK_ARG(!has_mom || momentum, "save: the store has momentum; a buffer is needed");
  Counters c;
  c.versions.resize(cfg_.shards);
  detail::InternalEntry entry(L);
  for (uint32_t s = 0; s < cfg_.shards; ++s) {
    const uint64_t begin = L.shards[s].begin;
    c.versions[s] =
        copy_shard(L, s, params + begin, has_mom ? momentum + begin : nullptr, entry.id());
  }
  // Counters are statistics: read relaxed, not synchronised with the shard copies above.
  const uint32_t nb = cfg_.staleness_bins + 1;
  c.hist.resize(uint64_t{cfg_.shards} * nb);
  for (uint32_t s = 0; s < cfg_.shards; ++s)
    for (uint32_t b = 0; b < nb; ++b)
      c.hist[uint64_t{s} * nb + b] = L.shard_hist(s)[b].load(std::memory_order_relaxed);
  c.clock = L.hdr->clock.load(std::memory_order_relaxed);
  c.pushes = L.hdr->pushes.load(std::memory_order_relaxed);
  c.nonfinite_skipped = L.hdr->nonfinite_skipped.load(std::memory_order_relaxed);
  c.step_updates = L.hdr->step_updates.load(std::memory_order_relaxed);
  c.cdf_ready = L.hdr->cdf_ready.load(std::memory_order_acquire);  // pairs with build_cdf()
  for (uint32_t b = 0; b < nb; ++b) {
    c.cdf.push_back(L.cdf[b].load(std::memory_order_relaxed));
    c.cdf_hist.push_back(L.cdf_hist[b].load(std::memory_order_relaxed));
    // A mid-CDF value is in [0, 1] (0 before the first build); anything else is damage, and a
    // NaN would make a checkpoint that no JSON reader takes.
    if (!(c.cdf[b] >= 0.0 && c.cdf[b] <= 1.0))
      detail::throw_damaged(L, "TAIL-tau table entry %u is %g, expected a value in [0, 1]", b,
                            c.cdf[b]);
  }
  return c;
}

void Store::load(const float* params, const float* momentum, const Counters& c) {
  check_open("load");
  const Layout& L = *lay_;
  const uint32_t S = cfg_.shards, nb = cfg_.staleness_bins + 1;
  const bool has_mom = cfg_.momentum != 0.0f;
  bool idle = L.hdr->pushes.load(std::memory_order_relaxed) == 0;
  for (uint32_t e = 0; e < cfg_.max_learners; ++e)
    idle = idle && detail::entry_state(L.entries[e].word.load(std::memory_order_relaxed)) ==
                       detail::kEntryFree;
  FASTPS_CHECK(idle, "load: the store is already in use (load only into a fresh store)");
  FASTPS_CHECK_ARG(!has_mom || momentum, "load: the store has momentum; its values are needed");
  FASTPS_CHECK_ARG(c.versions.size() == S, "load: %zu shard versions, expected %u",
                   c.versions.size(), S);
  FASTPS_CHECK_ARG(c.hist.size() == uint64_t{S} * nb, "load: %zu histogram counts, expected %llu",
                   c.hist.size(), static_cast<unsigned long long>(uint64_t{S} * nb));
  FASTPS_CHECK_ARG(c.cdf.size() == nb && c.cdf_hist.size() == nb,
                   "load: TAIL-tau table has %zu entries, expected %u", c.cdf.size(), nb);
  for (uint64_t v : c.versions)
    FASTPS_CHECK_ARG(v < (uint64_t{1} << (64 - detail::kSlotBits)),
                     "load: shard version %llu is out of range",
                     static_cast<unsigned long long>(v));
  for (uint32_t s = 0; s < S; ++s) {
    ShardDesc& d = L.shards[s];
    const size_t bytes = d.len * sizeof(float);
    if (cfg_.mode == Mode::kLeashed) {
      // Slot 0 is the published version of a fresh store; nobody else can see it yet.
      std::memcpy(L.slot_params(s, 0), params + d.begin, bytes);
      if (has_mom) std::memcpy(L.slot_momentum(s, 0), momentum + d.begin, bytes);
      d.current.store(c.versions[s] << detail::kSlotBits, std::memory_order_seq_cst);
    } else {
      std::memcpy(L.params(s), params + d.begin, bytes);
      if (has_mom) std::memcpy(L.momentum(s), momentum + d.begin, bytes);
      d.version.store(c.versions[s], std::memory_order_release);  // before any learner exists
    }
    uint64_t updates = 0;
    for (uint32_t b = 0; b < nb; ++b) {
      L.shard_hist(s)[b].store(c.hist[uint64_t{s} * nb + b], std::memory_order_relaxed);
      updates += c.hist[uint64_t{s} * nb + b];
    }
    d.updates.store(updates, std::memory_order_relaxed);  // statistics only
  }
  L.hdr->clock.store(c.clock, std::memory_order_relaxed);
  L.hdr->pushes.store(c.pushes, std::memory_order_relaxed);
  L.hdr->nonfinite_skipped.store(c.nonfinite_skipped, std::memory_order_relaxed);
  L.hdr->step_updates.store(c.step_updates, std::memory_order_relaxed);
  for (uint32_t b = 0; b < nb; ++b) {
    L.cdf[b].store(c.cdf[b], std::memory_order_relaxed);
    L.cdf_hist[b].store(c.cdf_hist[b], std::memory_order_relaxed);
  }
  L.hdr->cdf_ready.store(c.cdf_ready ? 1 : 0, std::memory_order_release);  // pairs with eta()
}

SegmentInfo Store::inspect(const std::string& name) {
  std::shared_ptr<Arena> arena = Arena::attach(name, "cleanup");
  SegmentInfo info;
  if (arena->bytes() < sizeof(Header)) return info;
  const Header* h = arena->at<Header>(0);
  if (h->magic.load(std::memory_order_acquire) != detail::kMagic ||  // pairs with init_arena()
      h->format_version != detail::kFormatVersion)
    return info;
  info.is_store = true;
  info.creator_pid = h->creator_pid;
  info.size = h->cfg.size;
  info.mode = h->cfg.mode;
  info.creator_alive = detail::process_alive(h->creator_pid, h->creator_start_time);
  return info;
}

bool Store::creator_alive() const {
  check_open("creator_alive");
  if (!arena_->is_shared()) return true;
  return detail::process_alive(lay_->hdr->creator_pid, lay_->hdr->creator_start_time);
}

bool Store::hold_cdf_build() {
  check_open("hold_cdf_build");
  return detail::hold_cdf_build(*lay_);
}

void Store::set_step_hook(StepHook hook) {
  FASTPS_CHECK_ARG(cfg_.step.kind == StepKind::kHook,
                   "set_step_hook: this store's step size is not a hook");
  hook_ = std::move(hook);
}

}  // namespace fastps
