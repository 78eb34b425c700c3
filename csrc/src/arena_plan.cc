#include "arena_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "fastps/check.h"
#include "registry.h"
#include "shard_lock.h"
#include "validate.h"

namespace fastps::detail {

namespace {

uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

// Per learner one pinned latest and one WRITING slot, plus (staleness distance) the version its
// last pull read, kept pinned; one pin per reserved reader entry (kInternalEntries = 4); the
// published one: V = 2 * max_learners + 5, or 3 * max_learners + 5 under StalenessDistance.
uint32_t slots_for(const StoreConfig& c) {
  if (c.mode != Mode::kLeashed) return 1;
  return (c.step.kind == StepKind::kDistance ? 3 : 2) * c.max_learners + kInternalEntries + 1;
}

ArenaPlan plan_arena(const StoreConfig& c) {
  ArenaPlan p{};
  const bool leashed = c.mode == Mode::kLeashed;
  const uint64_t bins = c.staleness_bins;
  p.slots = slots_for(c);
  uint64_t off = sizeof(Header);
  p.shards_off = off;
  off += uint64_t{c.shards} * sizeof(ShardDesc);
  p.slots_off = off;
  if (leashed) off += uint64_t{c.shards} * p.slots * sizeof(SlotHeader);
  p.entries = c.max_learners + kInternalEntries;
  p.entries_off = off;
  off = round_up(off + uint64_t{p.entries} * sizeof(LearnerEntry), kCacheLine);
  const uint64_t bits = uint64_t{p.entries} * kRolesPerEntry;
  p.reader_words = static_cast<uint32_t>(round_up((bits + 63) / 64, kCacheLine / sizeof(uint64_t)));
  p.readers_off = off;
  if (leashed) off += uint64_t{c.shards} * p.slots * p.reader_words * sizeof(uint64_t);
  p.hist_off = off;
  off = round_up(off + uint64_t{c.shards} * (bins + 1) * sizeof(uint64_t), kCacheLine);
  p.cdf_off = off;
  off = round_up(off + 2 * (bins + 1) * sizeof(uint64_t), kCacheLine);
  p.data_off = off;
  if (!leashed) {
    off += round_up(c.size, kAlignElems) * sizeof(float);
    p.mom_off = c.momentum != 0.0f ? off : 0;
    if (p.mom_off) off += round_up(c.size, kAlignElems) * sizeof(float);
  } else {
    // V slot blocks per shard (plan_shards()); the shards' padded lengths sum to the padded size.
    const uint64_t per_elem = (c.momentum != 0.0f ? 2 : 1) * sizeof(float);
    off += uint64_t{p.slots} * round_up(c.size, kAlignElems) * per_elem;
  }
  p.total = round_up(off, 4096);
  return p;
}

std::vector<ShardPlan> plan_shards(const StoreConfig& c, const ArenaPlan& p) {
  const bool leashed = c.mode == Mode::kLeashed;
  const uint64_t per_elem = (c.momentum != 0.0f ? 2 : 1) * sizeof(float);
  std::vector<ShardPlan> out;
  for (const auto& [begin, end] : shard_ranges(c.size, c.shards, "Store")) {
    ShardPlan d{};
    d.begin = begin;
    d.len = end - begin;
    d.len_padded = round_up(d.len, kAlignElems);
    if (leashed) {
      // Every shard before this one is whole 64-byte blocks: their padded lengths sum to begin.
      d.slot_stride = d.len_padded * per_elem;
      d.data_off = p.data_off + begin * per_elem * p.slots;
    } else {
      d.data_off = p.data_off + begin * sizeof(float);
      d.mom_off = p.mom_off ? p.mom_off + begin * sizeof(float) : 0;
    }
    out.push_back(d);
  }
  return out;
}

void init_arena(char* base, const ArenaPlan& p, const StoreConfig& cfg, const float* init) {
  auto* h = new (base) Header();
  h->format_version = kFormatVersion;
  h->cfg = cfg;
  h->slots = p.slots;
  h->total_bytes = p.total;
  h->creator_pid = static_cast<int32_t>(getpid());
  h->creator_start_time = process_start_time(h->creator_pid);
  h->shards_off = p.shards_off;
  h->slots_off = p.slots_off;
  h->hist_off = p.hist_off;
  h->entries = p.entries;
  h->reader_words = p.reader_words;
  h->entries_off = p.entries_off;
  h->readers_off = p.readers_off;
  h->cdf_off = p.cdf_off;
  h->data_off = p.data_off;
  h->mom_off = p.mom_off;

  const bool leashed = cfg.mode == Mode::kLeashed;
  const uint64_t bins = cfg.staleness_bins;
  const std::vector<ShardPlan> shards = plan_shards(cfg, p);
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    const ShardPlan& sp = shards[s];
    auto* d = new (base + p.shards_off + s * sizeof(ShardDesc)) ShardDesc();
    d->begin = sp.begin;
    d->len = sp.len;
    d->len_padded = sp.len_padded;
    d->data_off = sp.data_off;
    d->mom_off = sp.mom_off;
    d->slot_stride = sp.slot_stride;
    init_shard_lock(&d->mu);
    // current = (version 0, slot 0); slot 0 holds the initial values.
    d->current.store(0, std::memory_order_relaxed);        // published by the magic store below
    d->slots_touched.store(1, std::memory_order_relaxed);  // likewise
  }
  if (leashed) {
    for (uint64_t i = 0; i < uint64_t{cfg.shards} * p.slots; ++i)
      new (base + p.slots_off + i * sizeof(SlotHeader)) SlotHeader();
    for (uint64_t i = 0; i < uint64_t{cfg.shards} * p.slots * p.reader_words; ++i)
      new (base + p.readers_off + i * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  }
  for (uint32_t e = 0; e < p.entries; ++e)
    new (base + p.entries_off + e * sizeof(LearnerEntry)) LearnerEntry();
  for (uint64_t i = 0; i < uint64_t{cfg.shards} * (bins + 1); ++i)
    new (base + p.hist_off + i * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  for (uint64_t i = 0; i <= bins; ++i) {
    new (base + p.cdf_off + i * sizeof(double)) std::atomic<double>(0.0);
    new (base + p.cdf_off + (bins + 1 + i) * sizeof(uint64_t)) std::atomic<uint64_t>(0);
  }

  const Layout L = make_layout(base);
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    const ShardDesc& d = L.shards[s];
    float* dst = leashed ? L.slot_params(s, 0) : L.params(s);
    if (init) std::memcpy(dst, init + d.begin, d.len * sizeof(float));
    if (leashed)  // published by the magic store below
      L.slot(s, 0).state.store(make_slot_word(1, 0, kPublished), std::memory_order_relaxed);
  }
  h->checksum = arena_checksum(base);  // published by the magic store below
  // Pairs with the acquire load in Store::attach(): everything above is visible to attachers.
  h->magic.store(kMagic, std::memory_order_release);
}

Layout make_layout(char* base) {
  auto* h = reinterpret_cast<Header*>(base);
  auto* cdf = reinterpret_cast<std::atomic<double>*>(base + h->cdf_off);
  return Layout{h,
                reinterpret_cast<ShardDesc*>(base + h->shards_off),
                reinterpret_cast<SlotHeader*>(base + h->slots_off),
                reinterpret_cast<std::atomic<uint64_t>*>(base + h->hist_off),
                reinterpret_cast<LearnerEntry*>(base + h->entries_off),
                reinterpret_cast<std::atomic<uint64_t>*>(base + h->readers_off),
                cdf,
                reinterpret_cast<std::atomic<uint64_t>*>(cdf + h->cfg.staleness_bins + 1),
                base,
                h->slots,
                h->reader_words};
}

}  // namespace fastps::detail
