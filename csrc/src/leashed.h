// The Leashed-SGD slot protocol of one shard (the algorithm and its invariants open
// leashed.cc). Every function is lock-free and may run concurrently with any other, in any
// process attached to the arena; `entry` is the caller's registration entry.
#pragma once

#include <cstdint>

#include "layout.h"

namespace fastps::detail {

/// A slot claimed for writing (FREE -> WRITING) and the generation its claim gave it.
struct Claim {
  uint32_t slot;
  uint64_t gen;
};

/// Step 1: pins the shard's current version with reader bit `role` of `entry`; returns the
/// `current` word it pinned ((version << kSlotBits) | slot). The slot's data and version stay
/// unchanged until unpin().
uint64_t pin(const Layout& L, uint32_t s, uint32_t entry, uint32_t role = 0);
/// Clears the reader bit set by pin() and tries to reclaim the slot (step 5).
void unpin(const Layout& L, uint32_t s, uint32_t slot, uint32_t entry, uint32_t role = 0);
/// Step 2: claims the lowest FREE slot of shard s for `entry` (FREE -> WRITING); false when
/// every slot is taken (the caller yields, recovers dead learners and tries again).
bool try_claim(const Layout& L, uint32_t s, uint32_t entry, Claim* out);
/// For a writer that found no free slot in shard s: call after each failed try_claim(), with
/// `round` counting from 0 and `since_ns` (the caller's, 0 at the start). Throws
/// std::runtime_error "store '<name>' is damaged: ..." on the first round if a slot's state word
/// or reader words hold a value no process writes, and once no slot has come free for
/// kSlotWaitLimitS seconds (the V slots are more than max_learners handles can hold at once).
void check_no_slot(const Layout& L, uint32_t s, uint32_t round, uint64_t& since_ns);
constexpr int kSlotWaitLimitS = 10;
/// Step 3: publishes the claimed slot written from the version `seen` (a word pin() returned):
/// CAS current from `seen` to (version + 1, mine). On success stores PUBLISHED in it and returns
/// true; either way unpins seen's slot. On failure the claim stays the caller's, for a retry.
bool publish(const Layout& L, uint32_t s, uint64_t seen, const Claim& mine, uint32_t entry);
/// Gives a claimed, never published slot back (WRITING -> FREE): a dropped update or an error.
void abandon(const Layout& L, uint32_t s, const Claim& mine, uint32_t entry);
/// Recovery of a dead `entry` (which the caller has taken over): clears its reader bits in
/// every slot, ends its WRITING slots (PUBLISHED if current, else FREE) and offers every slot
/// to reclaim. Idempotent.
void recover_slots(const Layout& L, uint32_t entry);

}  // namespace fastps::detail
