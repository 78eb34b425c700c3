// Leashed-SGD per shard (Baeckstroem et al. 2021), with recycled slots, a tagged pointer and
// per-entry reader bits so that a learner killed at any instant can be cleaned up after:
//  1. pin(e, role): load current c = (version, slot L); set bit 2e+role in L's reader words;
//     re-load current. If it moved, clear the bit (and try to reclaim L) and start again; else
//     L is pinned: its data and version stay valid and unchanged until unpin().
//  2. push: claim a FREE slot N (CAS -> WRITING, owner e), pin L, tau = version(L) - version
//     read, write N = L - eta(tau) * d(g), CAS current from (v, L) to (v + 1, N).
//  3. On success: store PUBLISHED in N, unpin L, try to reclaim L and N. On failure: unpin L,
//     count the failure, and go back to 2 with the same gradient and N (tau recomputed), or
//     store FREE in N and drop the update after `persistence` failures.
//  4. pull: pin, copy, record the version, unpin.
//  5. try_reclaim(X): if X is PUBLISHED, is not current's slot, and has no reader bit set, CAS
//     its state word (as loaded) to FREE. Every event that can make X reclaimable (superseded,
//     last bit cleared, PUBLISHED stored) is followed by a try_reclaim by the one who caused it.
// Invariants: a slot's data changes only while it is WRITING; a slot is current only after
// the CAS that published it; the version in `current` grows by one per publication and the
// generation in a state word by one per claim, so a late CAS against a recycled slot or an old
// state fails (no ABA). Each learner holds at most one pinned and one WRITING slot per shard
// (plus its kept read pin under the staleness-distance policy), and readers without a handle
// hold one pin each on reserved entries, so V slots never run out (slots_for()).
// Why reclaim is safe (seq_cst on the bit set, the current loads and the bit loads): if a
// pinner's re-load saw X current, its bit set precedes the CAS that superseded X in the single
// total order, which precedes the reclaimer's load of current that saw X superseded, which
// precedes its load of the bits: it sees the bit. Either both see each other or one backs off.
// Recovery (recover()): the entry of a dead process is taken over by CAS (RECOVERING); its
// reader bits are cleared everywhere, its WRITING slots become PUBLISHED if current (it died
// between its CAS and the PUBLISHED store) or FREE otherwise, then every slot is offered to
// try_reclaim and the entry is freed. All of it is idempotent, so a recoverer that dies is
// simply replaced by the next one.
#include "fastps/store.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <thread>

#include "fastps/check.h"
#include "kernels.h"
#include "layout.h"

namespace fastps {

using detail::Header;
using detail::kAlignElems;
using detail::kCacheLine;
using detail::Layout;
using detail::ShardDesc;
using detail::SlotHeader;

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

namespace {

uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

void validate(const StoreConfig& c) {
  FASTPS_CHECK_ARG(c.size >= 1, "Store: size must be at least 1 (got %llu)",
                   static_cast<unsigned long long>(c.size));
  FASTPS_CHECK_ARG(c.size <= (uint64_t{1} << 40), "Store: size %llu is larger than 2^40 elements",
                   static_cast<unsigned long long>(c.size));
  const uint64_t blocks = (c.size + kAlignElems - 1) / kAlignElems;
  FASTPS_CHECK_ARG(c.shards >= 1 && c.shards <= blocks,
                   "Store: shards must be in [1, %llu] for size %llu (one 64-byte block at least "
                   "per shard), got %u",
                   static_cast<unsigned long long>(blocks), static_cast<unsigned long long>(c.size),
                   c.shards);
  FASTPS_CHECK_ARG(c.mode == Mode::kLocked || c.mode == Mode::kHogwild || c.mode == Mode::kLeashed,
                   "Store: unknown mode %u", static_cast<unsigned>(c.mode));
  FASTPS_CHECK_ARG(std::isfinite(c.lr) && c.lr >= 0.0f, "Store: lr must be finite and >= 0 (got %g)",
                   static_cast<double>(c.lr));
  FASTPS_CHECK_ARG(std::isfinite(c.momentum) && c.momentum >= 0.0f && c.momentum < 1.0f,
                   "Store: momentum must be in [0, 1) (got %g)", static_cast<double>(c.momentum));
  FASTPS_CHECK_ARG(!c.nesterov || c.momentum > 0.0f,
                   "Store: nesterov=True needs momentum > 0 (got momentum=%g)",
                   static_cast<double>(c.momentum));
  FASTPS_CHECK_ARG(std::isfinite(c.weight_decay) && c.weight_decay >= 0.0f,
                   "Store: weight_decay must be finite and >= 0 (got %g)",
                   static_cast<double>(c.weight_decay));
  FASTPS_CHECK_ARG(static_cast<uint32_t>(c.nan_guard) <= static_cast<uint32_t>(NanGuard::kOff),
                   "Store: unknown nan_guard %u", static_cast<unsigned>(c.nan_guard));
  FASTPS_CHECK_ARG(c.persistence >= -1, "Store: persistence must be -1 (never drop) or >= 0 (got %d)",
                   c.persistence);
  FASTPS_CHECK_ARG(c.max_learners >= 1 && c.max_learners <= 1024,
                   "Store: max_learners must be in [1, 1024] (got %u)", c.max_learners);
  FASTPS_CHECK_ARG(c.hist_bins >= 1 && c.hist_bins <= 65536,
                   "Store: staleness_bins must be in [1, 65536] (got %u)", c.hist_bins);
  const StepConfig& p = c.step;
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

// Slots a leashed shard needs so claim_slot() never waits while at most max_learners handles
// are open: per learner one pinned latest and one WRITING slot, plus (staleness distance) the
// version its last pull read, kept pinned; one pin per reserved reader entry; the published one.
uint32_t slots_for(const StoreConfig& c) {
  if (c.mode != Mode::kLeashed) return 1;
  return (c.step.kind == StepKind::kDistance ? 3 : 2) * c.max_learners + detail::kInternalEntries + 1;
}

// Offsets of every part of the arena for a config; total size in `total`.
struct Plan {
  uint32_t slots, entries, reader_words;
  uint64_t shards_off, slots_off, entries_off, readers_off, hist_off, cdf_off, data_off, mom_off,
      total;
};

Plan plan(const StoreConfig& c) {
  Plan p{};
  const bool leashed = c.mode == Mode::kLeashed;
  p.slots = slots_for(c);
  uint64_t off = sizeof(Header);
  p.shards_off = off;
  off += uint64_t{c.shards} * sizeof(ShardDesc);
  p.slots_off = off;
  if (leashed) off += uint64_t{c.shards} * p.slots * sizeof(SlotHeader);
  p.entries = c.max_learners + detail::kInternalEntries;
  p.entries_off = off;
  off = round_up(off + uint64_t{p.entries} * sizeof(detail::LearnerEntry), kCacheLine);
  const uint64_t bits = uint64_t{p.entries} * detail::kRolesPerEntry;
  p.reader_words = static_cast<uint32_t>(round_up((bits + 63) / 64, kCacheLine / sizeof(uint64_t)));
  p.readers_off = off;
  if (leashed) off += uint64_t{c.shards} * p.slots * p.reader_words * sizeof(uint64_t);
  p.hist_off = off;
  off = round_up(off + uint64_t{c.shards} * (c.hist_bins + 1) * sizeof(uint64_t), kCacheLine);
  p.cdf_off = off;
  off = round_up(off + 2 * uint64_t{c.hist_bins + 1} * sizeof(uint64_t), kCacheLine);
  p.data_off = off;
  if (!leashed) {
    off += round_up(c.size, kAlignElems) * sizeof(float);
    p.mom_off = c.momentum != 0.0f ? off : 0;
    if (p.mom_off) off += round_up(c.size, kAlignElems) * sizeof(float);
  } else {
    // Filled per shard in create(): sum over shards of V * block bytes.
    const uint64_t per_elem = (c.momentum != 0.0f ? 2 : 1) * sizeof(float);
    off += uint64_t{p.slots} * (round_up(c.size, kAlignElems) + c.shards * kAlignElems) * per_elem;
  }
  p.total = round_up(off, 4096);
  return p;
}

Layout make_layout(char* base) {
  auto* h = reinterpret_cast<Header*>(base);
  auto* cdf = reinterpret_cast<std::atomic<double>*>(base + h->cdf_off);
  return Layout{h,
                reinterpret_cast<ShardDesc*>(base + h->shards_off),
                reinterpret_cast<SlotHeader*>(base + h->slots_off),
                reinterpret_cast<std::atomic<uint64_t>*>(base + h->hist_off),
                reinterpret_cast<detail::LearnerEntry*>(base + h->entries_off),
                reinterpret_cast<std::atomic<uint64_t>*>(base + h->readers_off),
                cdf,
                reinterpret_cast<std::atomic<uint64_t>*>(cdf + h->cfg.hist_bins + 1),
                base};
}

// Locks a shard's robust mutex; returns the nanoseconds spent waiting (0 on the fast path).
uint64_t lock_shard(ShardDesc& d, std::atomic<uint64_t>& torn) {
  int rc = pthread_mutex_trylock(&d.mu);
  uint64_t waited = 0;
  if (rc == EBUSY) {
    const uint64_t t0 = now_ns();
    rc = pthread_mutex_lock(&d.mu);
    waited = now_ns() - t0;
  }
  if (rc == EOWNERDEAD) {
    // The previous owner died holding the lock: the store stays usable, but that owner's update
    // of this shard may be partial. Counted (stats()["torn_shards"]), not repaired.
    pthread_mutex_consistent(&d.mu);
    torn.fetch_add(1, std::memory_order_relaxed);  // statistics only
    rc = 0;
  }
  FASTPS_CHECK(rc == 0, "shard lock failed: %s", std::strerror(rc));
  return waited;
}

struct ShardLock {
  ShardLock(const Layout& L, uint32_t s)
      : d_(L.shards[s]), waited_ns(lock_shard(d_, L.hdr->torn_shards)) {}
  ~ShardLock() { pthread_mutex_unlock(&d_.mu); }
  ShardLock(const ShardLock&) = delete;
  ShardLock& operator=(const ShardLock&) = delete;
  ShardDesc& d_;
  uint64_t waited_ns;
};

// ---- leashed primitives (steps 1, 3 and 5 of the algorithm at the top of this file) ----

uint32_t current_slot(const ShardDesc& d) {
  return static_cast<uint32_t>(d.current.load(std::memory_order_seq_cst) & detail::kSlotMask);
}

void try_reclaim(const Layout& L, uint32_t s, uint32_t i) {
  SlotHeader& h = L.slot(s, i);
  const uint64_t w = h.state.load(std::memory_order_seq_cst);
  if (detail::slot_state(w) != detail::kPublished || current_slot(L.shards[s]) == i) return;
  const std::atomic<uint64_t>* bits = L.slot_readers(s, i);
  for (uint32_t k = 0; k < L.hdr->reader_words; ++k)
    if (bits[k].load(std::memory_order_seq_cst) != 0) return;
  uint64_t expected = w;
  h.state.compare_exchange_strong(expected, detail::make_slot_word(detail::slot_gen(w), 0, detail::kFree),
                                  std::memory_order_seq_cst);
}

struct Bit {
  uint32_t word;
  uint64_t mask;
};

Bit reader_bit(uint32_t entry, uint32_t role) {
  const uint32_t b = entry * detail::kRolesPerEntry + role;
  return {b / 64, uint64_t{1} << (b % 64)};
}

void unpin(const Layout& L, uint32_t s, uint32_t slot, uint32_t entry, uint32_t role = 0) {
  const Bit b = reader_bit(entry, role);
  L.slot_readers(s, slot)[b.word].fetch_and(~b.mask, std::memory_order_seq_cst);
  try_reclaim(L, s, slot);
}

uint64_t pin(const Layout& L, uint32_t s, uint32_t entry, uint32_t role = 0) {
  ShardDesc& d = L.shards[s];
  const Bit b = reader_bit(entry, role);
  for (;;) {
    const uint64_t c = d.current.load(std::memory_order_seq_cst);
    const auto slot = static_cast<uint32_t>(c & detail::kSlotMask);
    L.slot_readers(s, slot)[b.word].fetch_or(b.mask, std::memory_order_seq_cst);
    if (d.current.load(std::memory_order_seq_cst) == c) return c;
    unpin(L, s, slot, entry, role);
  }
}

// ---- registration entries and recovery ----

uint64_t process_start_time(int32_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  const size_t close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i)
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  return 0;
}

bool process_alive(int32_t pid, uint64_t start_time) {
  if (pid == getpid()) return true;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  const uint64_t now = process_start_time(pid);
  return !(start_time && now && now != start_time);  // a different process under a reused pid
}

// Claims a free entry in [lo, hi) for this process; -1 if none is free.
int64_t claim_entry(const Layout& L, uint32_t lo, uint32_t hi) {
  const int32_t pid = getpid();
  for (uint32_t e = lo; e < hi; ++e) {
    detail::LearnerEntry& en = L.entries[e];
    uint64_t w = en.word.load(std::memory_order_relaxed);  // hint only; the CAS decides
    if (detail::entry_state(w) != detail::kEntryFree) continue;
    if (!en.word.compare_exchange_strong(w, detail::make_entry_word(detail::kEntryClaiming, pid),
                                         std::memory_order_acquire))  // pairs with release_entry
      continue;
    en.start_time = process_start_time(pid);
    // Pairs with the acquire load in recover(): start_time is visible with OWNED.
    en.word.store(detail::make_entry_word(detail::kEntryOwned, pid), std::memory_order_release);
    return e;
  }
  return -1;
}

void release_entry(const Layout& L, uint32_t e) {
  // Pairs with the acquire CAS in claim_entry(): this entry's last uses happen before reuse.
  L.entries[e].word.store(detail::make_entry_word(detail::kEntryFree, 0), std::memory_order_release);
}

// Undoes what a dead entry held (see the top of this file). Idempotent.
void recover_entry(const Layout& L, uint32_t e) {
  if (L.hdr->cfg.mode != Mode::kLeashed) return;  // locked: robust mutexes; hogwild: nothing held
  const uint32_t V = L.hdr->slots;
  for (uint32_t s = 0; s < L.hdr->cfg.shards; ++s) {
    for (uint32_t i = 0; i < V; ++i) {
      for (uint32_t role = 0; role < detail::kRolesPerEntry; ++role) {
        const Bit b = reader_bit(e, role);
        L.slot_readers(s, i)[b.word].fetch_and(~b.mask, std::memory_order_seq_cst);
      }
      SlotHeader& h = L.slot(s, i);
      uint64_t w = h.state.load(std::memory_order_seq_cst);
      if (detail::slot_state(w) == detail::kWriting && detail::slot_owner(w) == e + 1) {
        // Only the dead owner could have made it current: "not current" is final here.
        const uint32_t to = current_slot(L.shards[s]) == i ? detail::kPublished : detail::kFree;
        h.state.compare_exchange_strong(w, detail::make_slot_word(detail::slot_gen(w), 0, to),
                                        std::memory_order_seq_cst);
      }
    }
    for (uint32_t i = 0; i < V; ++i) try_reclaim(L, s, i);
  }
}

// Recovers every entry whose process is gone; returns how many.
uint32_t recover_dead(const Layout& L) {
  uint32_t n = 0;
  const int32_t me = getpid();
  for (uint32_t e = 0; e < L.hdr->entries; ++e) {
    detail::LearnerEntry& en = L.entries[e];
    uint64_t w = en.word.load(std::memory_order_acquire);  // pairs with claim_entry's release
    const uint32_t st = detail::entry_state(w);
    const int32_t pid = detail::entry_pid(w);
    if (st == detail::kEntryFree || pid == me) continue;
    // OWNED: the owner's start time identifies it. CLAIMING: not yet written, pid only.
    // RECOVERING: pid is the recoverer's; if it died, take over (recovery is idempotent).
    const uint64_t start = st == detail::kEntryOwned ? en.start_time : 0;
    if (process_alive(pid, start)) continue;
    if (!en.word.compare_exchange_strong(w, detail::make_entry_word(detail::kEntryRecovering, me),
                                         std::memory_order_acq_rel))
      continue;  // someone else got there first
    recover_entry(L, e);
    L.hdr->recovered.fetch_add(1, std::memory_order_relaxed);  // statistics only
    release_entry(L, e);
    ++n;
  }
  return n;
}

// A reserved entry for a reader without a handle (Store::read, snapshot), held for one call.
class InternalEntry {
 public:
  explicit InternalEntry(const Layout& L) : L_(L) {
    const uint32_t lo = L.hdr->cfg.max_learners, hi = L.hdr->entries;
    for (uint32_t tries = 0;; ++tries) {
      const int64_t e = claim_entry(L, lo, hi);
      if (e >= 0) {
        e_ = static_cast<uint32_t>(e);
        return;
      }
      if (tries % 64 == 63) recover_dead(L);
      std::this_thread::yield();
    }
  }
  ~InternalEntry() { release_entry(L_, e_); }
  InternalEntry(const InternalEntry&) = delete;
  InternalEntry& operator=(const InternalEntry&) = delete;
  uint32_t id() const { return e_; }

 private:
  const Layout& L_;
  uint32_t e_ = 0;
};

uint32_t claim_slot(const Layout& L, uint32_t s, uint32_t entry) {
  const uint32_t V = L.hdr->slots;
  for (uint32_t round = 0;; ++round) {
    // Lowest free slot first, so a store touches (and commits memory for) few slots.
    for (uint32_t i = 0; i < V; ++i) {
      SlotHeader& h = L.slot(s, i);
      uint64_t w = h.state.load(std::memory_order_seq_cst);
      if (detail::slot_state(w) != detail::kFree) continue;
      if (h.state.compare_exchange_strong(
              w, detail::make_slot_word(detail::slot_gen(w) + 1, entry + 1, detail::kWriting),
              std::memory_order_seq_cst)) {
        std::atomic<uint32_t>& touched = L.shards[s].slots_touched;
        uint32_t t = touched.load(std::memory_order_relaxed);
        while (t < i + 1 && !touched.compare_exchange_weak(t, i + 1, std::memory_order_relaxed)) {
        }  // statistics only
        return i;
      }
    }
    L.shards[s].slot_waits.fetch_add(1, std::memory_order_relaxed);  // statistics only
    if (round % 64 == 63) recover_dead(L);  // slots held by a dead learner come back
    std::this_thread::yield();
  }
}

// One consistent copy of shard s, used by Store::read, Store::snapshot and Learner::pull: under
// its lock (locked), without synchronisation (hogwild), or from its pinned published version
// (leashed, reader bit `role` of `entry`). `momentum` may be null. Returns the version copied.
// With `kept` non-null the leashed pin stays and its slot goes to *kept (the staleness-distance
// read pin); the caller unpins it later.
uint64_t copy_shard(const Layout& L, uint32_t s, float* params, float* momentum, uint32_t entry,
                    uint32_t role = 0, int32_t* kept = nullptr) {
  ShardDesc& d = L.shards[s];
  const size_t bytes = d.len * sizeof(float);
  switch (L.hdr->cfg.mode) {
    case Mode::kLocked: {
      ShardLock lock(L, s);
      d.lock_wait_ns.fetch_add(lock.waited_ns, std::memory_order_relaxed);  // statistics only
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
      const uint64_t c = pin(L, s, entry, role);
      const auto slot = static_cast<uint32_t>(c & detail::kSlotMask);
      std::memcpy(params, L.slot_params(s, slot), bytes);
      if (momentum) std::memcpy(momentum, L.slot_momentum(s, slot), bytes);
      if (kept)
        *kept = static_cast<int32_t>(slot);
      else
        unpin(L, s, slot, entry, role);
      return c >> detail::kSlotBits;
    }
  }
  return 0;
}

// TAIL-tau: builds the mid-CDF F(b) = (2 * sum_{i<b} h_i + h_b) / (2 * total) of the summed
// shard histograms (b = hist_bins is the overflow bin) and publishes it with cdf_ready.
void build_cdf(const Layout& L) {
  Header& H = *L.hdr;
  uint32_t idle = 0;
  // Pairs with the release store below: a second builder starts after the first has finished.
  if (!H.cdf_building.compare_exchange_strong(idle, 1, std::memory_order_acquire)) return;
  const uint32_t bins = H.cfg.hist_bins;
  std::vector<uint64_t> h(bins + 1, 0);
  uint64_t total = 0;
  for (uint32_t s = 0; s < H.cfg.shards; ++s)
    for (uint32_t b = 0; b <= bins; ++b) h[b] += L.shard_hist(s)[b].load(std::memory_order_relaxed);
  for (uint64_t x : h) total += x;
  uint64_t cum = 0;
  for (uint32_t b = 0; b <= bins; ++b) {
    const double F = total ? static_cast<double>(2 * cum + h[b]) / static_cast<double>(2 * total) : 0.5;
    L.cdf[b].store(F, std::memory_order_relaxed);          // published by cdf_ready below
    L.cdf_hist[b].store(h[b], std::memory_order_relaxed);  // likewise
    cum += h[b];
  }
  H.cdf_builds.fetch_add(1, std::memory_order_relaxed);   // statistics only
  H.cdf_ready.store(1, std::memory_order_release);        // pairs with acquire in eta()
  H.cdf_building.store(0, std::memory_order_release);     // pairs with the CAS above
}

void record(const Layout& L, uint32_t s, uint64_t tau, uint64_t bytes) {
  const uint32_t bins = L.hdr->cfg.hist_bins;
  L.shard_hist(s)[std::min<uint64_t>(tau, bins)].fetch_add(1, std::memory_order_relaxed);
  L.shards[s].updates.fetch_add(1, std::memory_order_relaxed);      // statistics only
  L.shards[s].bytes_applied.fetch_add(bytes, std::memory_order_relaxed);  // statistics only
  const StepConfig& sc = L.hdr->cfg.step;
  if (sc.kind != StepKind::kTailTau) return;
  // The update that completes the warmup, and every refresh-th after it, builds the CDF. Relaxed:
  // the counter only elects; the table is published by cdf_ready.
  const uint64_t k = L.hdr->step_updates.fetch_add(1, std::memory_order_relaxed) + 1;
  if (k == sc.warmup || (sc.refresh && k > sc.warmup && (k - sc.warmup) % sc.refresh == 0))
    build_cdf(L);
}

}  // namespace

// ------------------------------------------------------------------------------------ Store

Store::Store(std::shared_ptr<Arena> arena, const StoreConfig& cfg)
    : arena_(std::move(arena)), cfg_(cfg), lay_(std::make_unique<Layout>(make_layout(arena_->base()))) {}

Store::~Store() {
  if (pinned_) unpin_host(arena_->base());
}

void Store::pin_memory() {
  check_open("pin_memory");
  std::lock_guard<std::mutex> g(pin_mu_);
  if (pinned_ || !pin_error_.empty()) return;
  pin_error_ = pin_host(arena_->base(), arena_->bytes());
  pinned_ = pin_error_.empty();
}

std::shared_ptr<Store> Store::create(const StoreConfig& cfg, const float* init,
                                     const std::string& shared_name) {
  validate(cfg);
  const Plan p = plan(cfg);
  std::shared_ptr<Arena> arena =
      shared_name.empty() ? Arena::create_private(p.total) : Arena::create_shared(shared_name, p.total);
  char* base = arena->base();

  auto* h = new (base) Header();
  h->format_version = detail::kFormatVersion;
  h->cfg = cfg;
  h->slots = p.slots;
  h->total_bytes = p.total;
  h->creator_pid = static_cast<int32_t>(getpid());
  h->shards_off = p.shards_off;
  h->slots_off = p.slots_off;
  h->hist_off = p.hist_off;
  h->entries = p.entries;
  h->reader_words = p.reader_words;
  h->entries_off = p.entries_off;
  h->readers_off = p.readers_off;
  h->cdf_off = p.cdf_off;
  h->data_off = p.data_off;
  h->mom_off = p.mom_off;

  // Shards: S contiguous ranges of whole 64-byte blocks, as equal as blocks allow.
  const uint64_t blocks = (cfg.size + kAlignElems - 1) / kAlignElems;
  const bool leashed = cfg.mode == Mode::kLeashed;
  const uint64_t per_elem_floats = cfg.momentum != 0.0f ? 2 : 1;
  uint64_t leashed_off = p.data_off;
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    auto* d = new (base + p.shards_off + s * sizeof(ShardDesc)) ShardDesc();
    const uint64_t b0 = blocks * s / cfg.shards, b1 = blocks * (s + 1) / cfg.shards;
    d->begin = b0 * kAlignElems;
    d->len = std::min<uint64_t>(b1 * kAlignElems, cfg.size) - d->begin;
    d->len_padded = round_up(d->len, kAlignElems);
    if (leashed) {
      d->slot_stride = d->len_padded * per_elem_floats * sizeof(float);
      d->data_off = leashed_off;
      leashed_off += d->slot_stride * p.slots;
    } else {
      d->data_off = p.data_off + d->begin * sizeof(float);
      d->mom_off = p.mom_off ? p.mom_off + d->begin * sizeof(float) : 0;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&d->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    FASTPS_CHECK(rc == 0, "Store: cannot initialise a shard lock: %s", std::strerror(rc));
    // current = (version 0, slot 0); slot 0 holds the initial values.
    d->current.store(0, std::memory_order_relaxed);      // published by the magic store below
    d->slots_touched.store(1, std::memory_order_relaxed);  // likewise
  }
  FASTPS_CHECK(leashed_off <= p.total || !leashed, "Store: internal layout overflow");
  if (leashed) {
    for (uint64_t i = 0; i < uint64_t{cfg.shards} * p.slots; ++i)
      new (base + p.slots_off + i * sizeof(SlotHeader)) SlotHeader();
    for (uint64_t i = 0; i < uint64_t{cfg.shards} * p.slots * p.reader_words; ++i)
      new (base + p.readers_off + i * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  }
  for (uint32_t e = 0; e < p.entries; ++e)
    new (base + p.entries_off + e * sizeof(detail::LearnerEntry)) detail::LearnerEntry();
  for (uint64_t i = 0; i < uint64_t{cfg.shards} * (cfg.hist_bins + 1); ++i)
    new (base + p.hist_off + i * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  for (uint64_t i = 0; i <= cfg.hist_bins; ++i) {
    new (base + p.cdf_off + i * sizeof(double)) std::atomic<double>(0.0);
    new (base + p.cdf_off + (cfg.hist_bins + 1 + i) * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  }

  std::shared_ptr<Store> st(new Store(arena, cfg));
  const Layout& L = *st->lay_;
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    const ShardDesc& d = L.shards[s];
    float* dst = leashed ? L.slot_params(s, 0) : L.params(s);
    if (init) std::memcpy(dst, init + d.begin, d.len * sizeof(float));
    if (leashed)  // published by the magic store below
      L.slot(s, 0).state.store(detail::make_slot_word(1, 0, detail::kPublished), std::memory_order_relaxed);
  }
  // Pairs with the acquire load in attach(): everything above is visible to attachers.
  h->magic.store(detail::kMagic, std::memory_order_release);
  return st;
}

std::shared_ptr<Store> Store::attach(const std::string& shared_name) {
  std::shared_ptr<Arena> arena = Arena::attach(shared_name);
  FASTPS_CHECK_ARG(arena->bytes() >= sizeof(Header),
                   "attach: shared segment '%s' has %zu bytes, too small for a fastps store",
                   shared_name.c_str(), arena->bytes());
  const Header* h = arena->at<Header>(0);
  // Pairs with the release store at the end of create().
  FASTPS_CHECK_ARG(h->magic.load(std::memory_order_acquire) == detail::kMagic,
                   "attach: shared segment '%s' is not a fastps store (or is still being created)",
                   shared_name.c_str());
  FASTPS_CHECK_ARG(h->format_version == detail::kFormatVersion,
                   "attach: store '%s' has format version %u, expected %u", shared_name.c_str(),
                   h->format_version, detail::kFormatVersion);
  FASTPS_CHECK_ARG(h->total_bytes == arena->bytes(),
                   "attach: store '%s' is %zu bytes, its header says %llu", shared_name.c_str(),
                   arena->bytes(), static_cast<unsigned long long>(h->total_bytes));
  std::shared_ptr<Store> st(new Store(arena, h->cfg));
  recover_dead(*st->lay_);  // a restarted learner attaching cleans up after its predecessor
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
  InternalEntry entry(L);
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
  st.staleness_hist.assign(cfg_.hist_bins + 1, 0);
  if (cfg_.step.kind == StepKind::kTailTau) {
    st.step_builds = L.hdr->cdf_builds.load(std::memory_order_relaxed);
    if (L.hdr->cdf_ready.load(std::memory_order_acquire))  // pairs with build_cdf()
      for (uint32_t b = 0; b <= cfg_.hist_bins; ++b)
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
      st.slots_touched = std::max(st.slots_touched, d.slots_touched.load(std::memory_order_relaxed));
      for (uint32_t i = 0; i < L.hdr->slots; ++i)
        st.slots_in_use +=
            detail::slot_state(L.slot(s, i).state.load(std::memory_order_relaxed)) != detail::kFree;
    }
    const std::atomic<uint64_t>* h = L.shard_hist(s);
    for (uint32_t b = 0; b <= cfg_.hist_bins; ++b)
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
  int64_t e = claim_entry(*lay_, 0, cfg_.max_learners);
  if (e < 0 && recover_dead(*lay_) > 0) e = claim_entry(*lay_, 0, cfg_.max_learners);
  FASTPS_CHECK(e >= 0,
               "learner: %u handles are open, the store's max_learners is %u (close a handle or "
               "create the store with a larger max_learners)",
               cfg_.max_learners, cfg_.max_learners);
  return std::unique_ptr<Learner>(new Learner(shared_from_this(), static_cast<uint32_t>(e)));
}

uint32_t Store::recover() {
  check_open("recover");
  return recover_dead(*lay_);
}

Counters Store::snapshot(float* params, float* momentum) const {
  check_open("save");
  const Layout& L = *lay_;
  const bool has_mom = cfg_.momentum != 0.0f;
  FASTPS_CHECK_ARG(!has_mom || momentum, "save: the store has momentum; a buffer is needed");
  Counters c;
  c.versions.resize(cfg_.shards);
  InternalEntry entry(L);
  for (uint32_t s = 0; s < cfg_.shards; ++s) {
    const uint64_t begin = L.shards[s].begin;
    c.versions[s] = copy_shard(L, s, params + begin, has_mom ? momentum + begin : nullptr,
                               entry.id());
  }
  // Counters are statistics: read relaxed, not synchronised with the shard copies above.
  const uint32_t nb = cfg_.hist_bins + 1;
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
  }
  return c;
}

void Store::restore(const float* params, const float* momentum, const Counters& c) {
  check_open("load");
  const Layout& L = *lay_;
  const uint32_t S = cfg_.shards, nb = cfg_.hist_bins + 1;
  const bool has_mom = cfg_.momentum != 0.0f;
  bool idle = L.hdr->pushes.load(std::memory_order_relaxed) == 0;
  for (uint32_t e = 0; e < cfg_.max_learners; ++e)
    idle = idle && detail::entry_state(L.entries[e].word.load(std::memory_order_relaxed)) ==
                       detail::kEntryFree;
  FASTPS_CHECK(idle,
               "load: the store is already in use (restore only into a fresh store)");
  FASTPS_CHECK_ARG(!has_mom || momentum, "load: the store has momentum; its values are needed");
  FASTPS_CHECK_ARG(c.versions.size() == S, "load: %zu shard versions, expected %u",
                   c.versions.size(), S);
  FASTPS_CHECK_ARG(c.hist.size() == uint64_t{S} * nb, "load: %zu histogram counts, expected %llu",
                   c.hist.size(), static_cast<unsigned long long>(uint64_t{S} * nb));
  FASTPS_CHECK_ARG(c.cdf.size() == nb && c.cdf_hist.size() == nb,
                   "load: TAIL-tau table has %zu entries, expected %u", c.cdf.size(), nb);
  for (uint64_t v : c.versions)
    FASTPS_CHECK_ARG(v < (uint64_t{1} << (64 - detail::kSlotBits)),
                     "load: shard version %llu is out of range", static_cast<unsigned long long>(v));
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
  if (h->magic.load(std::memory_order_acquire) != detail::kMagic ||  // pairs with create()
      h->format_version != detail::kFormatVersion)
    return info;
  info.is_store = true;
  info.creator_pid = h->creator_pid;
  info.size = h->cfg.size;
  info.mode = h->cfg.mode;
  return info;
}

void Store::set_step_hook(StepHook hook) {
  FASTPS_CHECK_ARG(cfg_.step.kind == StepKind::kHook,
                   "set_step_hook: this store's step size is not a hook");
  hook_ = std::move(hook);
}

// ---------------------------------------------------------------------------------- Learner

Learner::Learner(std::shared_ptr<Store> store, uint32_t id)
    : store_(std::move(store)),
      id_(id),
      read_versions_(store_->cfg_.shards, 0),
      pushed_versions_(store_->cfg_.shards, 0) {
  const StoreConfig& c = store_->cfg_;
  if (c.step.kind == StepKind::kDistance) {
    if (c.mode == Mode::kLeashed)
      read_slots_.assign(c.shards, -1);
    else
      snapshot_.resize(c.size);
  }
}

void Learner::release_read_pins() noexcept {
  for (uint32_t s = 0; s < read_slots_.size(); ++s)
    if (read_slots_[s] >= 0) {
      unpin(*store_->lay_, s, static_cast<uint32_t>(read_slots_[s]), id_, 1);
      read_slots_[s] = -1;
    }
}

Learner::~Learner() { close(); }

void Learner::close() noexcept {
  if (!open_) return;
  open_ = false;
  release_read_pins();
  release_entry(*store_->lay_, id_);
}

void Learner::check_open(const char* api) const {
  FASTPS_CHECK(open_, "%s: this learner handle is closed", api);
  store_->check_open(api);
}

void Learner::pull(float* out, size_t n) {
  check_open("pull");
  const StoreConfig& cfg = store_->cfg_;
  FASTPS_CHECK_ARG(n == cfg.size, "pull: out has %zu elements, expected %llu", n,
                   static_cast<unsigned long long>(cfg.size));
  const Layout& L = *store_->lay_;
  const uint32_t S = cfg.shards;
  const bool keep_read = cfg.step.kind == StepKind::kDistance;
  for (uint32_t k = 0; k < S; ++k) {
    const uint32_t s = (id_ + k) % S;  // learners start at different shards
    const ShardDesc& d = L.shards[s];
    float* dst = out + d.begin;
    if (keep_read && cfg.mode == Mode::kLeashed) {
      // Staleness distance keeps what was read pinned (role 1) until the next pull.
      if (read_slots_[s] >= 0) unpin(L, s, static_cast<uint32_t>(read_slots_[s]), id_, 1);
      read_slots_[s] = -1;
      read_versions_[s] = copy_shard(L, s, dst, nullptr, id_, 1, &read_slots_[s]);
    } else {
      read_versions_[s] = copy_shard(L, s, dst, nullptr, id_);
    }
    if (keep_read && cfg.mode != Mode::kLeashed)
      std::memcpy(snapshot_.data() + d.begin, dst, d.len * sizeof(float));
  }
  pulled_ = true;
}

float Learner::eta(uint64_t tau, uint32_t s, uint64_t version, const float* w_now,
                   const float* w_read) {
  const StoreConfig& cfg = store_->cfg_;
  const StepConfig& sc = cfg.step;
  const double lr = cfg.lr;
  double e = lr;
  switch (sc.kind) {
    case StepKind::kConstant:
      return cfg.lr;
    case StepKind::kInverse:
      e = lr / static_cast<double>(tau + 1);
      break;
    case StepKind::kExponential:
      e = lr * std::exp(-sc.beta * static_cast<double>(tau));
      break;
    case StepKind::kTailTau: {
      const Layout& L = *store_->lay_;
      if (L.hdr->cdf_ready.load(std::memory_order_acquire)) {  // pairs with build_cdf()
        const double F = L.cdf[std::min<uint64_t>(tau, cfg.hist_bins)].load(std::memory_order_relaxed);
        e = lr * (1.0 + sc.a * (1.0 - 2.0 * F));
      }
      break;
    }
    case StepKind::kDistance: {
      const size_t len = store_->lay_->shards[s].len;
      const double d2 = cfg.mode == Mode::kHogwild ? detail::hogwild_dist2(w_now, w_read, len)
                                                   : detail::dist2(w_now, w_read, len);
      e = d2 == 0.0 ? sc.eta_max : std::min(sc.c / d2, sc.eta_max);
      break;
    }
    case StepKind::kHook: {
      e = store_->hook_(StepContext{tau, s, id_, version, read_versions_[s]});
      FASTPS_CHECK_ARG(std::isfinite(e) && e >= 0.0,
                       "push: the step_size hook returned %g for tau=%llu at shard %u (expected a "
                       "finite number >= 0); that shard was left unchanged",
                       e, static_cast<unsigned long long>(tau), s);
      break;
    }
  }
  return static_cast<float>(e);
}

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

constexpr uint64_t kWholeShard = ~uint64_t{0};

}  // namespace

std::vector<Chunk> Learner::plan(uint64_t chunk) const {
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

void Learner::check_ready() const {
  const StoreConfig& cfg = store_->cfg_;
  FASTPS_CHECK(cfg.step.kind != StepKind::kDistance || pulled_,
               "push: the StalenessDistance step size needs a pull before the first push");
  FASTPS_CHECK(cfg.step.kind != StepKind::kHook || store_->hook_,
               "push: this store's step size is a Python hook, and none is set in this process "
               "(attach with step_size= the same callable)");
}

// Applies one push, shard by shard in plan order, asking `src` for each chunk of at most
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
    const float* snap = distance && cfg.mode != Mode::kLeashed ? snapshot_.data() + d.begin : nullptr;
    bool landed = true;
    switch (cfg.mode) {
      case Mode::kLocked: {
        ShardLock lock(L, s);  // released on every exit, a throwing hook included
        d.lock_wait_ns.fetch_add(lock.waited_ns, std::memory_order_relaxed);  // statistics only
        const uint64_t v = d.version.load(std::memory_order_relaxed);  // under the shard lock
        const uint64_t tau = v - read_versions_[s];
        args.eta = eta(tau, s, v, L.params(s), snap);
        each_chunk(s, false, [&](uint64_t off, const void* g, uint64_t len) {
          detail::apply_inplace(L.params(s) + off, at(L.momentum(s), off), g, dtype, len, args);
        });
        d.version.store(v + 1, std::memory_order_relaxed);  // under the shard lock
        pushed_versions_[s] = v + 1;
        record(L, s, tau, bytes);
        break;
      }
      case Mode::kHogwild: {
        // Approximate by design: other pushes may interleave with the eta and apply below.
        const uint64_t v0 = d.version.load(std::memory_order_relaxed);
        const uint64_t tau0 = v0 >= read_versions_[s] ? v0 - read_versions_[s] : 0;
        args.eta = eta(tau0, s, v0, L.params(s), snap);
        each_chunk(s, false, [&](uint64_t off, const void* g, uint64_t len) {
          detail::hogwild_apply(L.params(s) + off, at(L.momentum(s), off), g, dtype, len, args);
        });
        const uint64_t v = d.version.fetch_add(1, std::memory_order_relaxed);
        pushed_versions_[s] = v + 1;
        record(L, s, v >= read_versions_[s] ? v - read_versions_[s] : 0, bytes);
        break;
      }
      case Mode::kLeashed: {
        const uint32_t mine = claim_slot(L, s, id_);
        SlotHeader& mh = L.slot(s, mine);
        const uint64_t mine_gen = detail::slot_gen(mh.state.load(std::memory_order_seq_cst));
        auto give_back = [&] {  // never published: FREE again (the owner's store, seq_cst)
          mh.state.store(detail::make_slot_word(mine_gen, 0, detail::kFree), std::memory_order_seq_cst);
        };
        const float* w_read =
            distance ? L.slot_params(s, static_cast<uint32_t>(read_slots_[s])) : nullptr;
        int failures = 0;
        for (bool retry = false;; retry = true) {
          const uint64_t c = pin(L, s, id_);
          const auto latest = static_cast<uint32_t>(c & detail::kSlotMask);
          const uint64_t v = c >> detail::kSlotBits;
          const uint64_t tau = v - read_versions_[s];
          try {
            args.eta = eta(tau, s, v, L.slot_params(s, latest), w_read);
            each_chunk(s, retry, [&](uint64_t off, const void* g, uint64_t len) {
              detail::apply_copy(L.slot_params(s, mine) + off, L.slot_params(s, latest) + off,
                                 at(L.slot_momentum(s, mine), off),
                                 at(L.slot_momentum(s, latest), off), g, dtype, len, args);
            });
          } catch (...) {  // a throwing hook or source: give back the pin and the claimed slot
            unpin(L, s, latest, id_);
            give_back();
            throw;
          }
          uint64_t expected = c;
          const uint64_t desired = ((v + 1) << detail::kSlotBits) | mine;
          if (d.current.compare_exchange_strong(expected, desired, std::memory_order_seq_cst)) {
            mh.state.store(detail::make_slot_word(mine_gen, 0, detail::kPublished),
                           std::memory_order_seq_cst);
            unpin(L, s, latest, id_);  // and try to reclaim it: superseded just now
            try_reclaim(L, s, mine);   // superseded already, before PUBLISHED was stored?
            pushed_versions_[s] = v + 1;
            record(L, s, tau, bytes);
            break;
          }
          unpin(L, s, latest, id_);
          d.cas_failures.fetch_add(1, std::memory_order_relaxed);  // statistics only
          if (cfg.persistence >= 0 && ++failures > cfg.persistence) {
            give_back();
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

void Learner::keep_snapshot(uint32_t s, const float* src) {
  const ShardDesc& d = store_->lay_->shards[s];
  std::memcpy(snapshot_.data() + d.begin, src, d.len * sizeof(float));
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
    for (const Pin& p : pins) unpin(L, p.s, p.slot, id_);
    pins.clear();
  };
  try {
    for (uint32_t k = 0; k < S; ++k) {
      const uint32_t s = (id_ + k) % S;
      ShardDesc& d = L.shards[s];
      const Chunk c{s, d.begin, d.len};
      switch (cfg.mode) {
        case Mode::kLocked: {
          ShardLock lock(L, s);
          d.lock_wait_ns.fetch_add(lock.waited_ns, std::memory_order_relaxed);  // statistics only
          sink.copy(c, L.params(s));
          sink.flush();  // the copy reads the shard: keep the lock until it is done
          read_versions_[s] = d.version.load(std::memory_order_relaxed);  // under the shard lock
          if (keep_read) keep_snapshot(s, L.params(s));
          break;
        }
        case Mode::kHogwild: {
          read_versions_[s] = d.version.load(std::memory_order_relaxed);  // approximate by design
          sink.copy(c, L.params(s));
          if (keep_read) keep_snapshot(s, L.params(s));
          break;
        }
        case Mode::kLeashed: {
          if (keep_read && read_slots_[s] >= 0) {
            unpin(L, s, static_cast<uint32_t>(read_slots_[s]), id_, 1);
            read_slots_[s] = -1;
          }
          const uint64_t cur = pin(L, s, id_, keep_read ? 1 : 0);
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
