// Where everything of a store lives in its arena: the byte offsets computed from a config
// (plan_arena), the placement of every structure at them (init_arena), and a process's
// pointers into a mapped arena (make_layout). The picture is at the top of layout.h.
#pragma once

#include <cstdint>
#include <vector>

#include "fastps/config.h"
#include "layout.h"

namespace fastps::detail {

/// Offsets of every part of the arena for one config; `total` is the arena's size in bytes.
struct ArenaPlan {
  uint32_t slots, entries, reader_words;
  uint64_t shards_off, slots_off, entries_off, readers_off, hist_off, cdf_off, data_off, mom_off,
      total;
};

/// Where one shard lives: what init_arena() writes into its ShardDesc and attach compares.
struct ShardPlan {
  uint64_t begin, len, len_padded, data_off, mom_off, slot_stride;
};

/// Slots a leashed shard needs so a writer never waits for one while at most max_learners
/// handles are open (1 in the other modes).
uint32_t slots_for(const StoreConfig& c);
/// The arena plan of a validated config. Pure; thread-safe.
ArenaPlan plan_arena(const StoreConfig& c);
/// The ShardPlan of every shard of a validated config under plan p. Pure; thread-safe.
std::vector<ShardPlan> plan_shards(const StoreConfig& c, const ArenaPlan& p);
/// Constructs the header, shard descriptors (with their robust process-shared mutexes), slot
/// headers, reader bits, entries, histograms and the TAIL-tau table at `base` (zeroed memory
/// of p.total bytes), and copies `init` (nullable, c.size floats) into the first version. The
/// header's magic is stored last, with release: pairs with the acquire load in attach().
/// Throws std::runtime_error if a shard lock cannot be initialised.
void init_arena(char* base, const ArenaPlan& p, const StoreConfig& c, const float* init);
/// This process's view of a mapped, initialised arena.
Layout make_layout(char* base);

}  // namespace fastps::detail
