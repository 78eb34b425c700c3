// One contiguous memory region that holds a whole store: private (anonymous mmap) or a named
// POSIX shared-memory segment that other processes attach to. Everything placed inside is
// addressed by byte offsets from base(), never by pointers, so the layout is position independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace fastps {

class Arena {
 public:
  /// Maps `bytes` of zeroed private memory. Pages are committed on first touch.
  static std::shared_ptr<Arena> create_private(size_t bytes);
  /// Creates the segment "/fastps.<name>" with O_EXCL and mode 0600 and reserves `bytes` in it
  /// (posix_fallocate, so a full /dev/shm is an error here rather than SIGBUS later).
  static std::shared_ptr<Arena> create_shared(const std::string& name, size_t bytes);
  /// Maps an existing segment created by this user. Throws if it is missing or foreign.
  /// `api` names the caller in error messages.
  static std::shared_ptr<Arena> attach(const std::string& name, const char* api = "attach");
  /// Throws std::invalid_argument unless `name` is 1..200 characters of [A-Za-z0-9._-].
  static void check_name(const std::string& api, const std::string& name);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  /// Unmaps; the creator of a shared segment also unlinks its name. Never throws.
  ~Arena();

  /// Removes the segment's name (creator only; idempotent). Attached processes keep their mapping.
  void unlink() noexcept;

  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  bool is_shared() const { return !name_.empty(); }
  bool is_creator() const { return creator_; }
  const std::string& name() const { return name_; }

  template <typename T>
  T* at(uint64_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }

 private:
  Arena(char* base, size_t bytes, std::string name, bool creator)
      : base_(base), bytes_(bytes), name_(std::move(name)), creator_(creator) {}

  char* base_;
  size_t bytes_;
  std::string name_;  // empty for a private arena
  bool creator_;
  bool unlinked_ = false;
};

/// The POSIX shared-memory name fastps uses for a user-visible store name.
std::string shm_name(const std::string& name);

}  // namespace fastps
