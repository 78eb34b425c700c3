// Step sizes: eta(tau) for one shard update under each StepKind, and the staleness record that
// every applied update leaves (the per-shard histogram and the TAIL-tau CDF built from it).
#pragma once

#include <cstdint>

#include "fastps/store.h"
#include "layout.h"

namespace fastps::detail {

/// What eta() needs besides the config: the update's context, and for the staleness-distance
/// policy the shard's parameters now and as the learner read them (len elements each).
struct StepInputs {
  StepContext ctx;
  const float* w_now;
  const float* w_read;
  uint64_t len;
};

/// eta for one shard update. Calls `hook` for StepKind::kHook (it may throw; a result that is
/// not finite and >= 0 throws std::invalid_argument). Thread-safe if the hook is.
float eta(const Layout& L, const StepHook& hook, const StepInputs& in);
/// Records an applied shard update: staleness histogram, update and byte counters, and under
/// TAIL-tau the warmup/refresh count that elects the one builder of the CDF. Lock-free.
void record(const Layout& L, uint32_t s, uint64_t tau, uint64_t bytes);
/// TAIL-tau: if the process holding the CDF build (Header::cdf_building) is gone, takes the
/// build over (clears the flag and builds the CDF now); true if it did. Lock-free; called by
/// recover_dead(), so by Store::recover(), attach() and learner() when no place is free.
bool recover_cdf_build(const Layout& L);
/// Test support: takes the CDF build for this process without building, as a builder does on
/// entry to the build (so a test can kill a process that holds it); false if it is held.
bool hold_cdf_build(const Layout& L);

}  // namespace fastps::detail
