#include "arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fastps/check.h"

namespace fastps {

std::string shm_name(const std::string& name) { return "/fastps." + name; }

void Arena::check_name(const std::string& api, const std::string& name) {
  FASTPS_CHECK_ARG(!name.empty() && name.size() <= 200,
                   "%s: shared name must have 1 to 200 characters (got %zu)", api.c_str(),
                   name.size());
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    FASTPS_CHECK_ARG(ok,
                     "%s: shared name '%s' has the character '%c'; expected only A-Z a-z 0-9 . _ -",
                     api.c_str(), name.c_str(), c);
  }
}

std::shared_ptr<Arena> Arena::create_private(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  FASTPS_CHECK(p != MAP_FAILED, "Store: cannot map %zu bytes of memory: %s", bytes,
               std::strerror(errno));
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, "", true));
}

std::shared_ptr<Arena> Arena::create_shared(const std::string& name, size_t bytes) {
  check_name("Store", name);
  const std::string path = shm_name(name);
  int fd = shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  FASTPS_CHECK(fd >= 0, "Store: cannot create shared segment '%s': %s", name.c_str(),
               std::strerror(errno));
  int rc = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    close(fd);
    shm_unlink(path.c_str());
    FASTPS_CHECK(false, "Store: cannot reserve %zu bytes for shared segment '%s': %s", bytes,
                 name.c_str(), std::strerror(rc));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(path.c_str());
    FASTPS_CHECK(false, "Store: cannot map shared segment '%s': %s", name.c_str(),
                 std::strerror(err));
  }
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, name, true));
}

std::shared_ptr<Arena> Arena::attach(const std::string& name, const char* api) {
  check_name(api, name);
  const std::string path = shm_name(name);
  int fd = shm_open(path.c_str(), O_RDWR, 0);
  FASTPS_CHECK_ARG(fd >= 0, "%s: no shared store named '%s' (%s)", api, name.c_str(),
                   std::strerror(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    FASTPS_CHECK(false, "%s: cannot stat shared segment '%s': %s", api, name.c_str(),
                 std::strerror(err));
  }
  if (st.st_uid != geteuid()) {
    close(fd);
    FASTPS_CHECK_ARG(false, "%s: shared segment '%s' belongs to uid %u, expected uid %u", api,
                     name.c_str(), static_cast<unsigned>(st.st_uid),
                     static_cast<unsigned>(geteuid()));
  }
  const size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes == 0) {
    close(fd);
    FASTPS_CHECK_ARG(false, "%s: shared segment '%s' is empty, not a fastps store", api,
                     name.c_str());
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  FASTPS_CHECK(p != MAP_FAILED, "%s: cannot map shared segment '%s': %s", api, name.c_str(),
               std::strerror(err));
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, name, false));
}

void Arena::unlink() noexcept {
  if (is_shared() && creator_ && !unlinked_) {
    shm_unlink(shm_name(name_).c_str());
    unlinked_ = true;
  }
}

Arena::~Arena() {
  unlink();
  munmap(base_, bytes_);
}

}  // namespace fastps
