// One contiguous memory region that holds a whole store: private (anonymous mmap) or a named
// POSIX shared-memory segment that other processes attach to. Everything placed inside is
// addressed by byte offsets from base(), never by pointers, so the layout is position independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace fastps {

/// Thrown by Arena::create_shared when the name exists (Store::create then tries to reclaim it).
class SegmentExists : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Arena {
 public:
  /// Maps `bytes` of zeroed private memory. Pages are committed on first touch.
  static std::shared_ptr<Arena> create_private(size_t bytes);
  /// Creates the segment "/fastps.<name>" with O_EXCL and mode 0600 and reserves `bytes` in it
  /// (posix_fallocate, so a full /dev/shm is an error here rather than SIGBUS later). Throws
  /// SegmentExists if the name exists. The calling process is the creator: only it unlinks.
  static std::shared_ptr<Arena> create_shared(const std::string& name, size_t bytes);
  /// For a name that exists: opens it under an exclusive flock (so concurrent reclaimers take
  /// turns), checks it belongs to this user (else throws std::runtime_error naming the path),
  /// maps it and calls `judge(base, bytes)` (base is null for an empty file), which throws to
  /// refuse. If `judge` returns and the name still refers to that segment, unlinks the name and
  /// returns true; returns false if the name vanished or was replaced (create again).
  static bool reclaim(const std::string& name,
                      const std::function<void(const char*, size_t)>& judge);
  /// Maps an existing segment created by this user. Throws if it is missing or foreign.
  /// `api` names the caller in error messages.
  static std::shared_ptr<Arena> attach(const std::string& name, const char* api = "attach");
  /// Throws std::invalid_argument unless `name` is 1..200 characters of [A-Za-z0-9._-]; the
  /// message shows other bytes as \xNN (so it stays ASCII: NUL and non-UTF-8 bytes included).
  static void check_name(const std::string& api, const std::string& name);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  /// Unmaps; the creator of a shared segment also unlinks its name. Never throws.
  ~Arena();

  /// Removes the segment's name (creator only; idempotent). Attached processes keep their mapping.
  /// A child made by fork() inherits the creator's Arena but is not the creator: only the
  /// process that created the segment (creator_pid) unlinks.
  void unlink() noexcept;

  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  bool is_shared() const { return !name_.empty(); }
  /// True in the process that created the memory (not in a forked child of it).
  bool is_creator() const;
  const std::string& name() const { return name_; }

  template <typename T>
  T* at(uint64_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }

 private:
  Arena(char* base, size_t bytes, std::string name, int32_t creator_pid)
      : base_(base), bytes_(bytes), name_(std::move(name)), creator_pid_(creator_pid) {}

  char* base_;
  size_t bytes_;
  std::string name_;  // empty for a private arena
  int32_t creator_pid_;  // getpid() of the creating process; 0 for an attached arena
  bool unlinked_ = false;
};

/// The POSIX shared-memory name fastps uses for a user-visible store name.
std::string shm_name(const std::string& name);

}  // namespace fastps
