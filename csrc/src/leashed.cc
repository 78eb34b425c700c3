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
// hold one pin each on reserved entries, so V slots never run out (slots_for()). Debug builds
// check every transition with FASTPS_DCHECK (relaxed loads: they add no synchronisation).
// Why reclaim is safe (seq_cst on the bit set, the current loads and the bit loads): if a
// pinner's re-load saw X current, its bit set precedes the CAS that superseded X in the single
// total order, which precedes the reclaimer's load of current that saw X superseded, which
// precedes its load of the bits: it sees the bit. Either both see each other or one backs off.
// Recovery (recover_slots()): the dead entry's reader bits are cleared everywhere, its WRITING
// slots become PUBLISHED if current (it died between its CAS and the PUBLISHED store) or FREE
// otherwise, then every slot is offered to try_reclaim. All of it is idempotent, so a recoverer
// that dies is simply replaced by the next one.
#include "leashed.h"

#include <string>

#include "fastps/check.h"
#include "shard_lock.h"
#include "validate.h"

namespace fastps::detail {

namespace {

struct Bit {
  uint32_t word;
  uint64_t mask;
};

Bit reader_bit(uint32_t entry, uint32_t role) {
  const uint32_t b = entry * kRolesPerEntry + role;
  return {b / 64, uint64_t{1} << (b % 64)};
}

uint32_t current_slot(const ShardDesc& d) {
  return static_cast<uint32_t>(d.current.load(std::memory_order_seq_cst) & kSlotMask);
}

// Debug check: slot i of shard s is WRITING and owned by `entry` with generation `gen`.
bool is_mine(const Layout& L, uint32_t s, const Claim& c, uint32_t entry) {
  const uint64_t w = L.slot(s, c.slot).state.load(std::memory_order_relaxed);  // debug only
  return slot_state(w) == kWriting && slot_owner(w) == entry + 1 && slot_gen(w) == c.gen;
}

// Step 5.
void try_reclaim(const Layout& L, uint32_t s, uint32_t i) {
  SlotHeader& h = L.slot(s, i);
  const uint64_t w = h.state.load(std::memory_order_seq_cst);
  if (slot_state(w) != kPublished || current_slot(L.shards[s]) == i) return;
  const std::atomic<uint64_t>* bits = L.slot_readers(s, i);
  for (uint32_t k = 0; k < L.reader_words; ++k)
    if (bits[k].load(std::memory_order_seq_cst) != 0) return;
  uint64_t expected = w;  // superseded, unread: PUBLISHED -> FREE
  h.state.compare_exchange_strong(expected, make_slot_word(slot_gen(w), 0, kFree),
                                  std::memory_order_seq_cst);
}

}  // namespace

void unpin(const Layout& L, uint32_t s, uint32_t slot, uint32_t entry, uint32_t role) {
  const Bit b = reader_bit(entry, role);
  [[maybe_unused]] const uint64_t was =
      L.slot_readers(s, slot)[b.word].fetch_and(~b.mask, std::memory_order_seq_cst);
  FASTPS_DCHECK(was & b.mask);  // the bit this entry set in pin()
  try_reclaim(L, s, slot);
}

uint64_t pin(const Layout& L, uint32_t s, uint32_t entry, uint32_t role) {
  ShardDesc& d = L.shards[s];
  const Bit b = reader_bit(entry, role);
  for (;;) {
    const uint64_t c = d.current.load(std::memory_order_seq_cst);
    const auto slot = static_cast<uint32_t>(c & kSlotMask);
    // Only a publishing CAS writes `current`, always with a slot below V: anything else is damage,
    // and would address reader words outside the mapping.
    if (slot >= L.slot_count) [[unlikely]]
      throw_damaged(L, "shard %u's current version %llu names slot %u, it has %u slots", s,
                    static_cast<unsigned long long>(c >> kSlotBits), slot, L.slot_count);
    L.slot_readers(s, slot)[b.word].fetch_or(b.mask, std::memory_order_seq_cst);
    if (d.current.load(std::memory_order_seq_cst) == c) {
      // Current at the re-load and pinned since: PUBLISHED, or WRITING just before its
      // writer's PUBLISHED store; never FREE (reclaim needs it unread).
      FASTPS_DCHECK(slot_state(L.slot(s, slot).state.load(std::memory_order_relaxed)) != kFree);
      return c;
    }
    unpin(L, s, slot, entry, role);
  }
}

bool try_claim(const Layout& L, uint32_t s, uint32_t entry, Claim* out) {
  // Lowest free slot first, so a store touches (and commits memory for) few slots.
  for (uint32_t i = 0; i < L.slot_count; ++i) {
    SlotHeader& h = L.slot(s, i);
    uint64_t w = h.state.load(std::memory_order_seq_cst);
    if (slot_state(w) != kFree) continue;
    const uint64_t gen = slot_gen(w) + 1;
    if (!h.state.compare_exchange_strong(w, make_slot_word(gen, entry + 1, kWriting),
                                         std::memory_order_seq_cst))
      continue;  // FREE -> WRITING lost to another writer
    FASTPS_DCHECK(current_slot(L.shards[s]) != i);  // a FREE slot is never current
    std::atomic<uint32_t>& touched = L.shards[s].slots_touched;
    uint32_t t = touched.load(std::memory_order_relaxed);
    while (t < i + 1 && !touched.compare_exchange_weak(t, i + 1, std::memory_order_relaxed)) {
    }  // statistics only
    *out = Claim{i, gen};
    return true;
  }
  return false;
}

void check_no_slot(const Layout& L, uint32_t s, uint32_t round, uint64_t& since_ns) {
  if (round == 0) {
    since_ns = now_ns();
    // What try_claim() saw taken: a state or an owner nobody writes, or a reader bit beyond
    // the registration entries, keeps a slot from coming back ever (relaxed: a diagnosis).
    const uint32_t entries = L.hdr->cfg.max_learners + kInternalEntries;  // validated by attach
    const uint32_t bits = entries * kRolesPerEntry;
    for (uint32_t i = 0; i < L.slot_count; ++i) {
      const uint64_t w = L.slot(s, i).state.load(std::memory_order_relaxed);
      const uint32_t st = slot_state(w), owner = slot_owner(w);
      const bool ok = st == kWriting ? owner >= 1 && owner <= entries
                                     : (st == kFree || st == kPublished) && owner == 0;
      if (!ok)
        throw_damaged(L, "shard %u's slot %u has state word %#llx", s, i,
                      static_cast<unsigned long long>(w));
      const std::atomic<uint64_t>* r = L.slot_readers(s, i);
      for (uint32_t k = 0; k < L.reader_words; ++k) {
        const uint64_t x = r[k].load(std::memory_order_relaxed);
        const uint64_t valid = bits >= 64 * (k + 1) ? ~uint64_t{0}
                               : bits <= 64 * k     ? 0
                                                    : (uint64_t{1} << (bits - 64 * k)) - 1;
        if (x & ~valid)
          throw_damaged(L, "shard %u's slot %u has reader word %u = %#llx (%u entries)", s, i, k,
                        static_cast<unsigned long long>(x), entries);
      }
    }
    return;
  }
  if (round % 64 != 0 || now_ns() - since_ns < uint64_t{kSlotWaitLimitS} * 1'000'000'000) return;
  std::string held;
  for (uint32_t i = 0; i < L.slot_count && i < 16; ++i)
    held += format(" %#llx", static_cast<unsigned long long>(
                                 L.slot(s, i).state.load(std::memory_order_relaxed)));  // diagnosis
  throw_damaged(L,
                "shard %u has had no free version slot for %d s (%u slots for %u learners; "
                "state words:%s%s)",
                s, kSlotWaitLimitS, L.slot_count, L.hdr->cfg.max_learners, held.c_str(),
                L.slot_count > 16 ? " ..." : "");
}

bool publish(const Layout& L, uint32_t s, uint64_t seen, const Claim& mine, uint32_t entry) {
  FASTPS_DCHECK(is_mine(L, s, mine, entry));
  const auto latest = static_cast<uint32_t>(seen & kSlotMask);
  const uint64_t v = seen >> kSlotBits;
  uint64_t expected = seen;
  const uint64_t desired = ((v + 1) << kSlotBits) | mine.slot;
  if (!L.shards[s].current.compare_exchange_strong(expected, desired, std::memory_order_seq_cst)) {
    unpin(L, s, latest, entry);
    return false;
  }
  // WRITING -> PUBLISHED: only the owner stores here, and nobody else changes a WRITING word.
  FASTPS_DCHECK(is_mine(L, s, mine, entry));
  L.slot(s, mine.slot)
      .state.store(make_slot_word(mine.gen, 0, kPublished), std::memory_order_seq_cst);
  unpin(L, s, latest, entry);  // and try to reclaim it: superseded just now
  try_reclaim(L, s, mine.slot);  // superseded already, before PUBLISHED was stored?
  return true;
}

void abandon(const Layout& L, uint32_t s, const Claim& mine, uint32_t entry) {
  FASTPS_DCHECK(is_mine(L, s, mine, entry));
  FASTPS_DCHECK(current_slot(L.shards[s]) != mine.slot);  // never published
  // WRITING -> FREE (the owner's store, seq_cst like every state transition).
  L.slot(s, mine.slot).state.store(make_slot_word(mine.gen, 0, kFree), std::memory_order_seq_cst);
}

void recover_slots(const Layout& L, uint32_t e) {
  FASTPS_DCHECK(entry_state(L.entries[e].word.load(std::memory_order_relaxed)) ==
                kEntryRecovering);  // taken over by the caller
  const uint32_t V = L.slot_count;
  for (uint32_t s = 0; s < L.hdr->cfg.shards; ++s) {
    for (uint32_t i = 0; i < V; ++i) {
      for (uint32_t role = 0; role < kRolesPerEntry; ++role) {
        const Bit b = reader_bit(e, role);
        L.slot_readers(s, i)[b.word].fetch_and(~b.mask, std::memory_order_seq_cst);
      }
      SlotHeader& h = L.slot(s, i);
      uint64_t w = h.state.load(std::memory_order_seq_cst);
      if (slot_state(w) == kWriting && slot_owner(w) == e + 1) {
        // Only the dead owner could have made it current: "not current" is final here.
        const uint32_t to = current_slot(L.shards[s]) == i ? kPublished : kFree;
        h.state.compare_exchange_strong(w, make_slot_word(slot_gen(w), 0, to),
                                        std::memory_order_seq_cst);
      }
    }
    for (uint32_t i = 0; i < V; ++i) try_reclaim(L, s, i);
  }
}

}  // namespace fastps::detail
