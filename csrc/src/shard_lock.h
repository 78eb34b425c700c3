// Locked mode's shard locks: a robust, process-shared pthread mutex per shard (in ShardDesc).
// A lock whose owner died is taken over (EOWNERDEAD -> consistent) and counted as torn.
#pragma once

#include <cstdint>

#include "layout.h"

namespace fastps::detail {

/// Monotonic nanoseconds (steady_clock).
uint64_t now_ns();

/// Locks shard s for the scope (blocking); releases on every exit, exceptions included. The
/// time spent waiting is added to the shard's lock_wait_ns (the uncontended trylock path makes
/// no clock call). Throws std::runtime_error if the mutex reports an error.
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
