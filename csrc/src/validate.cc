// attach's trust in a segment: every word a process uses to address memory is either checked
// here, once, against a plan recomputed from the (range-checked) configuration and against the
// mapping's size, or is mutable and bounds-checked where it is used (pin(): the slot index in
// `current`; ShardLock: the lock word). The checksum catches damage to the rest of the
// immutable bytes (step size parameters, lr, the creator's identity, padding).
#include "validate.h"

#include <stdexcept>
#include <vector>

#include "arena_plan.h"
#include "shard_lock.h"

namespace fastps::detail {

namespace {

uint64_t fnv1a(uint64_t h, const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}

// One immutable field against its expected value.
void expect(const std::string& name, const char* what, uint64_t got, uint64_t want) {
  FASTPS_CHECK_ARG(got == want, "attach: store '%s' is damaged: %s %llu, expected %llu",
                   name.c_str(), what, static_cast<unsigned long long>(got),
                   static_cast<unsigned long long>(want));
}

}  // namespace

uint64_t arena_checksum(const char* base) {
  const auto* h = reinterpret_cast<const Header*>(base);
  const size_t from = offsetof(Header, format_version);
  uint64_t sum = fnv1a(0xcbf29ce484222325ull, base + from, offsetof(Header, checksum) - from);
  for (uint32_t s = 0; s < h->cfg.shards; ++s)
    sum = fnv1a(sum, base + h->shards_off + s * sizeof(ShardDesc), offsetof(ShardDesc, mu));
  return sum;
}

StoreConfig check_arena(const char* base, size_t bytes, const std::string& name) {
  const char* n = name.c_str();
  FASTPS_CHECK_ARG(bytes >= sizeof(Header),
                   "attach: shared segment '%s' has %zu bytes, too small for a fastps store", n,
                   bytes);
  const auto* h = reinterpret_cast<const Header*>(base);
  // Pairs with the release store at the end of init_arena().
  FASTPS_CHECK_ARG(h->magic.load(std::memory_order_acquire) == kMagic,
                   "attach: shared segment '%s' is not a fastps store (or is still being created)",
                   n);
  FASTPS_CHECK_ARG(h->format_version == kFormatVersion,
                   "attach: store '%s' has format version %u, expected %u", n, h->format_version,
                   kFormatVersion);
  FASTPS_CHECK_ARG(h->total_bytes == bytes, "attach: store '%s' is %zu bytes, its header says %llu",
                   n, bytes, static_cast<unsigned long long>(h->total_bytes));
  // Everything below is immutable after creation: a copy can be checked at leisure.
  const StoreConfig cfg = h->cfg;
  try {
    cfg.validate();
  } catch (const std::invalid_argument& e) {
    FASTPS_CHECK_ARG(false, "attach: store '%s' is damaged: its configuration is invalid (%s)", n,
                     e.what());
  }
  const ArenaPlan p = plan_arena(cfg);
  expect(name, "header slot count", h->slots, p.slots);
  expect(name, "header entry count", h->entries, p.entries);
  expect(name, "header reader word count", h->reader_words, p.reader_words);
  expect(name, "header shards offset", h->shards_off, p.shards_off);
  expect(name, "header slots offset", h->slots_off, p.slots_off);
  expect(name, "header entries offset", h->entries_off, p.entries_off);
  expect(name, "header readers offset", h->readers_off, p.readers_off);
  expect(name, "header histogram offset", h->hist_off, p.hist_off);
  expect(name, "header TAIL-tau table offset", h->cdf_off, p.cdf_off);
  expect(name, "header data offset", h->data_off, p.data_off);
  expect(name, "header momentum offset", h->mom_off, p.mom_off);
  FASTPS_CHECK_ARG(bytes == p.total,
                   "attach: store '%s' is damaged: its configuration needs %llu bytes, the "
                   "segment has %zu",
                   n, static_cast<unsigned long long>(p.total), bytes);
  // Now cfg.shards descriptors fit in the mapping: p.total == bytes counts them.
  const std::vector<ShardPlan> want = plan_shards(cfg, p);
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    const auto* d = reinterpret_cast<const ShardDesc*>(base + p.shards_off + s * sizeof(ShardDesc));
    const ShardPlan& w = want[s];
    const std::string at = "shard " + std::to_string(s);
    expect(name, (at + " begin").c_str(), d->begin, w.begin);
    expect(name, (at + " length").c_str(), d->len, w.len);
    expect(name, (at + " padded length").c_str(), d->len_padded, w.len_padded);
    expect(name, (at + " data offset").c_str(), d->data_off, w.data_off);
    expect(name, (at + " momentum offset").c_str(), d->mom_off, w.mom_off);
    expect(name, (at + " slot stride").c_str(), d->slot_stride, w.slot_stride);
    const std::string lock = check_shard_lock(d->mu);
    FASTPS_CHECK_ARG(lock.empty(), "attach: store '%s' is damaged: %s %s", n, at.c_str(),
                     lock.c_str());
  }
  const uint64_t sum = arena_checksum(base);
  FASTPS_CHECK_ARG(h->checksum == sum,
                   "attach: store '%s' is damaged: its immutable bytes hash to %#llx, its "
                   "header says %#llx (its configuration or a shard descriptor was changed)",
                   n, static_cast<unsigned long long>(sum),
                   static_cast<unsigned long long>(h->checksum));
  return cfg;
}

}  // namespace fastps::detail
