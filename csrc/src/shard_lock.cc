#include "shard_lock.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "fastps/check.h"

namespace fastps::detail {

namespace {

constexpr long kWaitSliceNs = 100'000'000;  // how often a waiter looks at the lock word

#if defined(__GLIBC__)
// glibc's robust-mutex lock word: the owner's thread id, and flags (<linux/futex.h>).
constexpr unsigned kTidMask = 0x3fffffffu, kOwnerDied = 0x40000000u;

// Why nobody can ever release shard s's lock, judging by its word now; "" if someone may.
std::string stuck_reason(const Layout& L, uint32_t s) {
  // A racy look at glibc's word (atomic, relaxed): only a hint, the mutex calls decide.
  const auto w =
      static_cast<unsigned>(__atomic_load_n(&L.shards[s].mu.__data.__lock, __ATOMIC_RELAXED));
  const unsigned tid = w & kTidMask;
  if (w == 0 || (w & kOwnerDied)) return "";  // free, or the next locker takes it over
  if (tid == 0)
    return format("store '%s' is damaged: shard %u's lock word %#x names no owner", L.name, s, w);
  if (tid == static_cast<unsigned>(gettid()))
    return format(
        "store '%s': shard %u's lock is held by this thread (a step-size hook may not "
        "call into its own store), or the segment is damaged",
        L.name, s);
  struct stat st{};
  if (stat("/proc/self", &st) != 0) return "";  // no /proc: cannot tell, keep waiting
  if (stat(("/proc/" + std::to_string(tid)).c_str(), &st) == 0) return "";  // it may unlock
  return format(
      "store '%s' is damaged: shard %u's lock is held by thread %u, which does not "
      "exist",
      L.name, s, tid);
}
#else
std::string stuck_reason(const Layout&, uint32_t) { return ""; }
#endif

// Locks shard s's robust mutex; returns the nanoseconds spent waiting (0 on the fast path).
uint64_t lock_shard(const Layout& L, uint32_t s) {
  ShardDesc& d = L.shards[s];
  int rc = pthread_mutex_trylock(&d.mu);
  uint64_t waited = 0;
  if (rc == EBUSY) {
    const uint64_t t0 = now_ns();
    for (;;) {
      timespec until{};
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += kWaitSliceNs;
      if (until.tv_nsec >= 1'000'000'000) {
        until.tv_nsec -= 1'000'000'000;
        ++until.tv_sec;
      }
      rc = pthread_mutex_timedlock(&d.mu, &until);
      if (rc != ETIMEDOUT) break;
      const std::string why = stuck_reason(L, s);
      FASTPS_CHECK(why.empty(), "%s", why.c_str());
    }
    waited = now_ns() - t0;
  }
  if (rc == EOWNERDEAD) {
    // The previous owner died holding the lock: the store stays usable, but that owner's update
    // of this shard may be partial. Counted (stats()["torn_shards"]), not repaired.
    pthread_mutex_consistent(&d.mu);
    L.hdr->torn_shards.fetch_add(1, std::memory_order_relaxed);  // statistics only
    rc = 0;
  }
  // Every lock is made consistent after EOWNERDEAD, so ENOTRECOVERABLE (or EINVAL) is damage.
  FASTPS_CHECK(rc == 0, "store '%s' is damaged: shard %u's lock failed: %s", L.name, s,
               std::strerror(rc));
  return waited;
}

}  // namespace

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

void init_shard_lock(pthread_mutex_t* mu) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  const int rc = pthread_mutex_init(mu, &attr);
  pthread_mutexattr_destroy(&attr);
  FASTPS_CHECK(rc == 0, "Store: cannot initialise a shard lock: %s", std::strerror(rc));
}

std::string check_shard_lock(const pthread_mutex_t& mu) {
#if defined(__GLIBC__)
  // The kind word selects glibc's lock protocol (robust, shared, PI, PP, ...): a damaged one
  // could send lock() down a path that never returns. It never changes after init.
  pthread_mutex_t ref;
  init_shard_lock(&ref);
  const int want = ref.__data.__kind;
  pthread_mutex_destroy(&ref);
  const int got = __atomic_load_n(&mu.__data.__kind, __ATOMIC_RELAXED);  // immutable after init
  if (got != want) return format("lock kind %#x, expected %#x", got, want);
#else
  (void)mu;
#endif
  return "";
}

ShardLock::ShardLock(const Layout& L, uint32_t s) : d_(L.shards[s]) {
  const uint64_t waited = lock_shard(L, s);
  d_.lock_wait_ns.fetch_add(waited, std::memory_order_relaxed);  // statistics only
}

ShardLock::~ShardLock() { pthread_mutex_unlock(&d_.mu); }

}  // namespace fastps::detail
