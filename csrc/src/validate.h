// The checks that let a process trust a shared segment another process wrote: attach's check
// of every immutable word (check_arena), the checksum init_arena() writes for it, and the
// error a hot path raises when a mutable shared word it is about to use is out of range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fastps/check.h"
#include "layout.h"

namespace fastps::detail {

/// FNV-1a (64-bit) of the immutable bytes of an arena: its header from format_version up to
/// the checksum field, and each shard descriptor up to its lock (cfg.shards of them, which the
/// caller has checked fit in the mapping). Pure.
uint64_t arena_checksum(const char* base);

/// Checks that the `bytes`-byte mapping at `base` holds a complete store of this format whose
/// every immutable word agrees with the others: size, magic, format version and total_bytes;
/// the configuration's ranges; the plan recomputed from it (slot, entry and reader-word
/// counts, every offset); every shard descriptor (range, offsets, stride); the shard locks'
/// kind; the checksum. Reads only inside the mapping, in an order that checks each value
/// before using it. Throws std::invalid_argument naming the field, e.g. "attach: store 'x' is
/// damaged: header entry count 2147483648, expected 20".
/// Returns the configuration it checked (a copy: the shared one could change after the check).
StoreConfig check_arena(const char* base, size_t bytes, const std::string& name);

/// Throws std::runtime_error "store '<name>' is damaged: <what>": a mutable shared word that
/// addresses memory (a slot index, a lock word) holds a value no process of this store writes.
template <typename... Args>
[[noreturn]] void throw_damaged(const Layout& L, const char* fmt, Args... args) {
  throw std::runtime_error("store '" + std::string(L.name) +
                           "' is damaged: " + format(fmt, args...));
}

}  // namespace fastps::detail
