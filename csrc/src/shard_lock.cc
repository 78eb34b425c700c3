#include "shard_lock.h"

#include <pthread.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "fastps/check.h"

namespace fastps::detail {

namespace {

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

}  // namespace

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

ShardLock::ShardLock(const Layout& L, uint32_t s) : d_(L.shards[s]) {
  const uint64_t waited = lock_shard(d_, L.hdr->torn_shards);
  d_.lock_wait_ns.fetch_add(waited, std::memory_order_relaxed);  // statistics only
}

ShardLock::~ShardLock() { pthread_mutex_unlock(&d_.mu); }

}  // namespace fastps::detail
