#include "registry.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "fastps/store.h"
#include "leashed.h"
#include "step_size.h"

namespace fastps::detail {

namespace {

// Fields 3 (state) and 22 (start time) of /proc/<pid>/stat; false if it cannot be read.
bool read_stat(int32_t pid, char* state, uint64_t* start_time) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return false;
  const size_t close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos || close + 2 >= line.size()) return false;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    if (i == 3) *state = field[0];
    if (i == 22) {
      *start_time = std::strtoull(field.c_str(), nullptr, 10);
      return true;
    }
  }
  return false;
}

// A zombie's thread-group leader ('Z') is a dead process unless other threads of it still run
// (a leader that called pthread_exit shows 'Z' too): /proc/<pid>/task lists them.
bool live_threads(int32_t pid) {
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (!d) return false;
  int n = 0;
  while (const dirent* e = readdir(d))
    if (e->d_name[0] != '.' && std::atoi(e->d_name) != pid) ++n;
  closedir(d);
  return n > 0;
}

}  // namespace

uint64_t process_start_time(int32_t pid) {
  char state = 0;
  uint64_t start = 0;
  return read_stat(pid, &state, &start) ? start : 0;
}

bool process_alive(int32_t pid, uint64_t start_time) {
  if (pid == getpid()) return true;
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char state = 0;
  uint64_t now = 0;
  if (!read_stat(pid, &state, &now)) return true;  // no /proc: kill() said it exists
  if (state == 'X') return false;                  // dead, being reaped
  if (state == 'Z' && !live_threads(pid)) return false;  // killed, not yet reaped by its parent
  return !(start_time && now && now != start_time);  // a different process under a reused pid
}

int64_t claim_entry(const Layout& L, uint32_t lo, uint32_t hi) {
  const int32_t pid = getpid();
  for (uint32_t e = lo; e < hi; ++e) {
    LearnerEntry& en = L.entries[e];
    uint64_t w = en.word.load(std::memory_order_relaxed);  // hint only; the CAS decides
    if (entry_state(w) != kEntryFree) continue;
    if (!en.word.compare_exchange_strong(w, make_entry_word(kEntryClaiming, pid),
                                         std::memory_order_acquire))  // pairs with release_entry
      continue;
    en.start_time = process_start_time(pid);
    // Pairs with the acquire load in recover_dead(): start_time is visible with OWNED.
    en.word.store(make_entry_word(kEntryOwned, pid), std::memory_order_release);
    return e;
  }
  return -1;
}

void release_entry(const Layout& L, uint32_t e) {
  // Pairs with the acquire CAS in claim_entry(): this entry's last uses happen before reuse.
  L.entries[e].word.store(make_entry_word(kEntryFree, 0), std::memory_order_release);
}

uint32_t recover_dead(const Layout& L) {
  uint32_t n = 0;
  const int32_t me = getpid();
  for (uint32_t e = 0; e < L.hdr->entries; ++e) {
    LearnerEntry& en = L.entries[e];
    uint64_t w = en.word.load(std::memory_order_acquire);  // pairs with claim_entry's release
    const uint32_t st = entry_state(w);
    const int32_t pid = entry_pid(w);
    if (st == kEntryFree || pid == me) continue;
    // OWNED: the owner's start time identifies it. CLAIMING: not yet written, pid only.
    // RECOVERING: pid is the recoverer's; if it died, take over (recovery is idempotent).
    const uint64_t start = st == kEntryOwned ? en.start_time : 0;
    // A pid <= 0 or an unknown state is written by no process (damage): recover it like a dead
    // owner's, or a reader waiting for an entry (InternalEntry) would wait forever.
    const bool damaged = pid <= 0 || st > kEntryRecovering;
    if (!damaged && process_alive(pid, start)) continue;
    if (!en.word.compare_exchange_strong(w, make_entry_word(kEntryRecovering, me),
                                         std::memory_order_acq_rel))
      continue;  // someone else got there first
    // Locked mode holds nothing to undo (robust mutexes); hogwild holds nothing at all.
    if (L.hdr->cfg.mode == Mode::kLeashed) recover_slots(L, e);
    L.hdr->recovered.fetch_add(1, std::memory_order_relaxed);  // statistics only
    release_entry(L, e);
    ++n;
  }
  recover_cdf_build(L);
  return n;
}

InternalEntry::InternalEntry(const Layout& L) : L_(L) {
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

}  // namespace fastps::detail

namespace fastps {
bool process_alive(int32_t pid) { return detail::process_alive(pid, 0); }
}  // namespace fastps
