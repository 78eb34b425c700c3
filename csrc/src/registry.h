// The learner registry: one registration entry per open handle (and a few for readers without
// a handle), owned by a process identified by its pid and start time, and the recovery of what
// the entries of dead processes held. Lock-free; safe from any thread of any attached process.
#pragma once

#include <cstdint>

#include "layout.h"

namespace fastps::detail {

/// The start time of process `pid` (field 22 of /proc/<pid>/stat), 0 if unknown.
uint64_t process_start_time(int32_t pid);
/// True unless process `pid` is known to be gone: no such pid, a zombie (killed or exited but
/// not yet reaped by its parent: /proc/<pid>/stat state 'Z' with no thread left, or 'X'), or a
/// pid with another start time than `start_time` (a different process under a reused pid; 0 =
/// not checked). The calling process is always alive; another user's process counts as alive.
/// The one liveness rule: recovery, Store::creator_alive, inspect and reclaim all use it.
bool process_alive(int32_t pid, uint64_t start_time);

/// Claims a free entry in [lo, hi) for this process (FREE -> CLAIMING -> OWNED); -1 if none.
int64_t claim_entry(const Layout& L, uint32_t lo, uint32_t hi);
/// Frees entry e (its owner is done with it, or recovery has undone what it held).
void release_entry(const Layout& L, uint32_t e);
/// Recovers every entry whose process is gone: takes it over (CAS -> RECOVERING), undoes what
/// it held (leashed: recover_slots()) and frees it; then takes over TAIL-tau's CDF build if a
/// dead process held it (recover_cdf_build()). Returns how many entries.
uint32_t recover_dead(const Layout& L);

/// A reserved entry for a reader without a handle (Store::read, Store::save), held for one
/// call. Waits (yielding, recovering dead readers now and then) while all are taken.
class InternalEntry {
 public:
  explicit InternalEntry(const Layout& L);
  ~InternalEntry() { release_entry(L_, e_); }
  InternalEntry(const InternalEntry&) = delete;
  InternalEntry& operator=(const InternalEntry&) = delete;
  uint32_t id() const { return e_; }

 private:
  const Layout& L_;
  uint32_t e_ = 0;
};

}  // namespace fastps::detail
