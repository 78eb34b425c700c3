// Locked mode's shard locks: a robust, process-shared pthread mutex per shard (in ShardDesc).
// A lock whose owner died is taken over (EOWNERDEAD -> consistent) and counted as torn. A lock
// word that no live thread can release (damaged shared memory) ends the wait with an error.
#pragma once

#include <pthread.h>

#include <cstdint>
#include <string>

#include "layout.h"

namespace fastps::detail {

/// Monotonic nanoseconds (steady_clock).
uint64_t now_ns();

/// Initialises a shard lock in place: robust and process-shared. Throws std::runtime_error.
void init_shard_lock(pthread_mutex_t* mu);
/// "" when `mu` has the attributes init_shard_lock() gives (its kind word, glibc), else what
/// is wrong with it. Reads only `mu`'s bytes; for attach's check of a mapped segment.
std::string check_shard_lock(const pthread_mutex_t& mu);

/// Locks shard s for the scope (blocking); releases on every exit, exceptions included. The
/// time spent waiting is added to the shard's lock_wait_ns (the uncontended trylock path makes
/// no clock call). A wait looks at the lock word every 100 ms and throws std::runtime_error
/// when it names no owner, a thread that does not exist, or the calling thread (which never
/// holds a shard lock it asks for: a step-size hook calling into its own store, or damage);
/// likewise if the mutex reports an error.
class ShardLock {
 public:
  ShardLock(const Layout& L, uint32_t s);
  ~ShardLock();
  ShardLock(const ShardLock&) = delete;
  ShardLock& operator=(const ShardLock&) = delete;

 private:
  ShardDesc& d_;
};

}  // namespace fastps::detail
