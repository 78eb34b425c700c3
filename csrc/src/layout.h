// Arena layout of a store. Every structure here is placed in the arena at a byte offset and
// reached through Layout's pointers, computed per process from the arena's base address.
//
//   [Header][ShardDesc x S][SlotHeader x S*V (leashed)][hist: S x (bins+1) u64][data...]
//
// data: locked/hogwild: params[n] then momentum[n] (when momentum > 0), one flat vector each,
// shards at 64-byte-aligned offsets inside them. leashed: per shard, V slot blocks, each
// params[len] then momentum[len], every block 64-byte aligned.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "fastps/config.h"

namespace fastps::detail {

constexpr uint64_t kMagic = 0x3153502d54534146ull;  // "FAST-PS1"
// 2: Header::creator_start_time. 3: Header::checksum; the leashed data region is exactly V slot
// blocks per shard (no slack after the last one).
constexpr uint32_t kFormatVersion = 3;
constexpr size_t kCacheLine = 64;
constexpr uint64_t kAlignElems = kCacheLine / sizeof(float);

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "process-shared counters need address-free, lock-free 64-bit atomics");
static_assert(std::atomic<double>::is_always_lock_free,
              "the shared TAIL-tau table needs lock-free atomic doubles");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "process-shared slot states need address-free, lock-free 32-bit atomics");

// Leashed slot states. FREE -> WRITING (a writer claims it; the owner's entry is recorded) ->
// PUBLISHED (stored by the writer right after its CAS made the slot current) -> FREE (reclaimed
// once: PUBLISHED, no longer current, and no reader bit set). A WRITING slot whose CAS failed
// stays the writer's for its retry, or goes back to FREE when the update is dropped.
// The state word packs (generation << 32) | (owner entry + 1) << 8 | state; the generation
// grows with every claim, so a reclaimer's CAS from an old observation always fails (no ABA).
enum SlotState : uint32_t { kFree = 0, kWriting = 1, kPublished = 2 };

inline uint32_t slot_state(uint64_t w) { return static_cast<uint32_t>(w & 0xff); }
inline uint32_t slot_owner(uint64_t w) { return static_cast<uint32_t>((w >> 8) & 0xffffff); }
inline uint64_t slot_gen(uint64_t w) { return w >> 32; }
inline uint64_t make_slot_word(uint64_t gen, uint32_t owner, uint32_t state) {
  return (gen << 32) | (uint64_t{owner} << 8) | state;
}

// Registration entries: one per learner handle (the first max_learners) and a few for readers
// without a handle (Store::read, Store::save). The word packs (state << 32) | pid.
enum EntryState : uint32_t {
  kEntryFree = 0,
  kEntryClaiming = 1,
  kEntryOwned = 2,
  kEntryRecovering = 3
};
constexpr uint32_t kInternalEntries = 4;
constexpr uint32_t kRolesPerEntry = 2;  // reader bits per entry: 0 transient pin, 1 kept read pin

inline uint64_t make_entry_word(uint32_t state, int32_t pid) {
  return (uint64_t{state} << 32) | static_cast<uint32_t>(pid);
}
inline uint32_t entry_state(uint64_t w) { return static_cast<uint32_t>(w >> 32); }
inline int32_t entry_pid(uint64_t w) { return static_cast<int32_t>(w & 0xffffffffu); }

// `current` of a leashed shard packs (version << kSlotBits) | slot. The version doubles as the
// ABA tag: it grows by one on every publication, so a recycled slot never looks current again.
constexpr uint32_t kSlotBits = 16;
constexpr uint64_t kSlotMask = (uint64_t{1} << kSlotBits) - 1;

struct alignas(kCacheLine) Header {
  // Written by the creator last, with release, after everything else is initialised; read
  // with acquire by attach(): pairs so that an attacher sees a complete store.
  std::atomic<uint64_t> magic;
  uint32_t format_version;
  uint32_t reserved;
  StoreConfig cfg;  // immutable after creation
  uint32_t slots;  // V per shard in leashed mode, 1 otherwise
  uint64_t total_bytes;
  int32_t creator_pid;  // the process that created the store (for fastps.cleanup())
  uint32_t entries;  // registration entries: max_learners + kInternalEntries
  uint32_t reader_words;  // 64-bit reader-bit words per slot, padded to a cache line
  uint64_t entries_off, readers_off;
  uint64_t shards_off, slots_off, hist_off, cdf_off, data_off, mom_off;
  uint64_t creator_start_time;  // its start time (/proc/<pid>/stat), to detect a reused pid
  // FNV-1a of the immutable bytes (the header from format_version up to here, and each shard
  // descriptor up to its lock): written by init_arena() before the magic, checked by attach.
  uint64_t checksum;
  // Recovery statistics, relaxed: entries whose process died and were recovered, and locked
  // shards whose lock was taken over from a dead owner (their last update may be partial).
  alignas(kCacheLine) std::atomic<uint64_t> recovered;
  std::atomic<uint64_t> torn_shards;
  // Written by push() after validation (pushes) and after its last shard (clock), relaxed:
  // statistics only, read by stats().
  alignas(kCacheLine) std::atomic<uint64_t> pushes;
  alignas(kCacheLine) std::atomic<uint64_t> clock;
  std::atomic<uint64_t> nonfinite_skipped;  // statistics only, relaxed
  // TAIL-tau state. step_updates: fetch_add (relaxed) by every shard update while the policy
  // is on; its return value elects the one builder of each CDF (warmup, then every refresh).
  alignas(kCacheLine) std::atomic<uint64_t> step_updates;
  // 1 once a CDF is in the table: stored with release by the builder after the table, loaded
  // with acquire by eta(): pairs so that a reader that sees 1 sees a complete table.
  std::atomic<uint32_t> cdf_ready;
  // The pid of the process building the CDF now, 0 when none: taken by the builder (CAS 0 ->
  // pid, acquire) and given back by it (store 0, release), so two never interleave their
  // writes and a second would-be builder skips its rebuild; read (acquire) by recovery, which
  // takes the build over (CAS dead pid -> 0, release) when that process is gone.
  std::atomic<uint32_t> cdf_building;
  std::atomic<uint64_t> cdf_builds;  // statistics only, relaxed
};

struct alignas(kCacheLine) ShardDesc {
  uint64_t begin, len;  // element range [begin, begin + len)
  uint64_t data_off;  // locked/hogwild: params of this shard; leashed: slot 0's block
  uint64_t mom_off;  // locked/hogwild: momentum of this shard (0 when none)
  uint64_t slot_stride;  // leashed: bytes between slot blocks; momentum at + len_padded floats
  uint64_t len_padded;  // len rounded up to kAlignElems
  // locked only: process-shared, robust mutex guarding params, momentum and version.
  alignas(kCacheLine) pthread_mutex_t mu;
  // locked: written under mu, read under mu (and relaxed by stats()).
  // hogwild: fetch_add relaxed after each apply, loaded relaxed by pull: approximate by design.
  // leashed: unused; the version lives in `current`.
  alignas(kCacheLine) std::atomic<uint64_t> version;
  // leashed only: (version << kSlotBits) | slot of the latest published version. Written by the
  // publishing CAS (seq_cst), read by pin() (seq_cst): the CAS publishes the slot's data and
  // version; the two seq_cst loads in pin() pair with it in the Dekker pattern described there.
  std::atomic<uint64_t> current;
  // Statistics, written by whoever updates this shard, read by stats(); relaxed throughout.
  alignas(kCacheLine) std::atomic<uint64_t> updates;
  std::atomic<uint64_t> dropped;
  std::atomic<uint64_t> cas_failures;
  std::atomic<uint64_t> slot_waits;
  std::atomic<uint64_t> lock_wait_ns;
  std::atomic<uint64_t> bytes_applied;
  // leashed: 1 + highest slot index ever claimed (slots whose pages were touched). Raised by
  // claim_slot() with a relaxed CAS-max, read by stats(): statistics only.
  std::atomic<uint32_t> slots_touched;
};

struct alignas(kCacheLine) SlotHeader {
  // make_slot_word(gen, owner, SlotState). Written by CAS (claim, reclaim, recovery) or by a
  // store of its owning writer (PUBLISHED after its CAS, FREE on a drop); read by claim_slot,
  // try_reclaim and stats. seq_cst, the reclaim argument at the top of leashed.cc needs it.
  std::atomic<uint64_t> state;
};

// Registration entry. `word` is claimed by CAS (FREE -> CLAIMING -> OWNED by a pid), released
// by a store of FREE, taken over for recovery by CAS (-> RECOVERING); acq_rel/acquire so that
// `start_time` (written while CLAIMING) is visible to whoever sees OWNED.
struct LearnerEntry {
  std::atomic<uint64_t> word;
  uint64_t start_time;  // the owner's start time (/proc/<pid>/stat), to detect a reused pid
};

static_assert(sizeof(SlotHeader) == kCacheLine, "one slot header per cache line");
static_assert(sizeof(LearnerEntry) == 16, "entries are 16 bytes (tests/test_segment_fuzz.py)");
// The format of a shared segment, pinned (tests/test_segment_fuzz.py finds the words it damages
// through these): changing one is a new kFormatVersion.
static_assert(sizeof(Header) == 512 && sizeof(ShardDesc) == 256, "segment format changed");
static_assert(offsetof(Header, cfg) == 16 && offsetof(Header, slots) == 120 &&
                  offsetof(Header, entries) == 140 && offsetof(Header, reader_words) == 144,
              "segment format changed");
static_assert(offsetof(Header, entries_off) == 152 && offsetof(Header, readers_off) == 160 &&
                  offsetof(Header, shards_off) == 168 && offsetof(Header, slots_off) == 176 &&
                  offsetof(Header, hist_off) == 184 && offsetof(Header, cdf_off) == 192 &&
                  offsetof(Header, data_off) == 200 && offsetof(Header, checksum) == 224,
              "segment format changed");
static_assert(offsetof(ShardDesc, mu) == 64,
              "the immutable part of a shard descriptor is 64 bytes");
static_assert(offsetof(ShardDesc, current) == 136, "segment format changed");
static_assert(sizeof(Header) % kCacheLine == 0, "header keeps what follows aligned");
static_assert(sizeof(ShardDesc) % kCacheLine == 0, "shard descriptors are cache-line sized");

// Per-process view of an arena: raw pointers derived from the offsets in Header, and this
// process's copies of the counts that address memory (validated by attach, so a word another
// process writes later cannot move an index out of the mapping).
struct Layout {
  Header* hdr;
  ShardDesc* shards;
  SlotHeader* slots;  // S*V, shard-major (leashed)
  std::atomic<uint64_t>* hist;  // S*(bins+1), shard-major
  LearnerEntry* entries;  // hdr->entries
  // Reader bits: per (shard, slot) hdr->reader_words words; bit 2*entry + role. Set by pin()
  // (fetch_or) before it re-checks `current`, cleared by unpin() and recovery (fetch_and), read
  // by try_reclaim(). seq_cst: the Dekker pairing at the top of leashed.cc.
  std::atomic<uint64_t>* readers;
  // TAIL-tau: cdf[bins+1] (mid-CDF per tau bin) then cdf_hist[bins+1] (the counts it was built
  // from). Written by the builder (relaxed, published by cdf_ready), read by eta() and stats().
  std::atomic<double>* cdf;
  std::atomic<uint64_t>* cdf_hist;
  char* base;
  uint32_t slot_count;  // V (hdr->slots)
  uint32_t reader_words;  // hdr->reader_words
  const char* name = "";  // the store's shared name, for "store '<name>' is damaged" messages

  SlotHeader& slot(uint32_t s, uint32_t i) const { return slots[uint64_t{s} * slot_count + i]; }
  std::atomic<uint64_t>* slot_readers(uint32_t s, uint32_t i) const {
    return readers + (uint64_t{s} * slot_count + i) * reader_words;
  }
  std::atomic<uint64_t>* shard_hist(uint32_t s) const {
    return hist + uint64_t{s} * (hdr->cfg.staleness_bins + 1);
  }
  float* params(uint32_t s) const { return reinterpret_cast<float*>(base + shards[s].data_off); }
  float* momentum(uint32_t s) const {
    return shards[s].mom_off ? reinterpret_cast<float*>(base + shards[s].mom_off) : nullptr;
  }
  float* slot_params(uint32_t s, uint32_t i) const {
    const ShardDesc& d = shards[s];
    return reinterpret_cast<float*>(base + d.data_off + uint64_t{i} * d.slot_stride);
  }
  float* slot_momentum(uint32_t s, uint32_t i) const {
    return hdr->cfg.momentum != 0.0f ? slot_params(s, i) + shards[s].len_padded : nullptr;
  }
};

}  // namespace fastps::detail
