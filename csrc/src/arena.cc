#include "arena.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fastps/check.h"

namespace fastps {

namespace {

// `s` with every byte outside printable ASCII as \xNN: a message that stays valid UTF-8 and is
// not cut at a NUL.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f)
      out += static_cast<char>(c);
    else
      out += detail::format("\\x%02x", c);
  }
  return out;
}

// Closes a descriptor and unmaps a mapping when the scope ends (reclaim's early exits).
struct Mapped {
  int fd = -1;
  void* p = nullptr;
  size_t bytes = 0;
  ~Mapped() {
    if (p) munmap(p, bytes);
    if (fd >= 0) close(fd);  // also drops the flock
  }
};

}  // namespace

std::string shm_name(const std::string& name) { return "/fastps." + name; }

void Arena::check_name(const std::string& api, const std::string& name) {
  FASTPS_CHECK_ARG(!name.empty() && name.size() <= 200,
                   "%s: shared name must have 1 to 200 characters (got %zu)", api.c_str(),
                   name.size());
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    FASTPS_CHECK_ARG(ok,
                     "%s: shared name '%s' has the character '%s'; expected only A-Z a-z 0-9 . _ -",
                     api.c_str(), printable(name).c_str(), printable(std::string(1, c)).c_str());
  }
}

bool Arena::is_creator() const { return creator_pid_ != 0 && creator_pid_ == getpid(); }

std::shared_ptr<Arena> Arena::create_private(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  FASTPS_CHECK(p != MAP_FAILED, "Store: cannot map %zu bytes of memory: %s", bytes,
               std::strerror(errno));
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, "", getpid()));
}

std::shared_ptr<Arena> Arena::create_shared(const std::string& name, size_t bytes) {
  check_name("Store", name);
  const std::string path = shm_name(name);
  int fd = shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0 && errno == EEXIST)
    throw SegmentExists(
        detail::format("Store: cannot create shared segment '%s': File exists", name.c_str()));
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
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, name, getpid()));
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
  return std::shared_ptr<Arena>(new Arena(static_cast<char*>(p), bytes, name, 0));
}

bool Arena::reclaim(const std::string& name,
                    const std::function<void(const char*, size_t)>& judge) {
  check_name("Store", name);
  const std::string path = shm_name(name), file = "/dev/shm" + path;
  Mapped m;
  m.fd = shm_open(path.c_str(), O_RDWR, 0);
  if (m.fd < 0 && errno == ENOENT) return false;  // gone meanwhile: create again
  FASTPS_CHECK(m.fd >= 0,
               "Store: cannot create shared segment '%s': %s exists and cannot be "
               "opened (%s); remove it or pick another name",
               name.c_str(), file.c_str(), std::strerror(errno));
  // Blocks only while another process decides about the same segment (a few system calls).
  FASTPS_CHECK(flock(m.fd, LOCK_EX) == 0, "Store: cannot lock %s: %s", file.c_str(),
               std::strerror(errno));
  struct stat st{};
  FASTPS_CHECK(fstat(m.fd, &st) == 0, "Store: cannot stat %s: %s", file.c_str(),
               std::strerror(errno));
  if (st.st_nlink == 0) return false;  // unlinked by the reclaimer before us
  FASTPS_CHECK(st.st_uid == geteuid(),
               "Store: cannot create shared segment '%s': %s exists and belongs to uid %u, not "
               "this user (uid %u); pick another name",
               name.c_str(), file.c_str(), static_cast<unsigned>(st.st_uid),
               static_cast<unsigned>(geteuid()));
  m.bytes = static_cast<size_t>(st.st_size);
  if (m.bytes > 0) {
    void* p = mmap(nullptr, m.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0);
    FASTPS_CHECK(p != MAP_FAILED, "Store: cannot map %s: %s", file.c_str(), std::strerror(errno));
    m.p = p;
  }
  judge(static_cast<const char*>(m.p), m.bytes);  // throws to refuse
  struct stat now{};
  if (stat(file.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev)
    return false;  // replaced meanwhile (by a cleanup, then a create): create again
  shm_unlink(path.c_str());
  return true;
}

void Arena::unlink() noexcept {
  if (is_shared() && is_creator() && !unlinked_) {
    shm_unlink(shm_name(name_).c_str());
    unlinked_ = true;
  }
}

Arena::~Arena() {
  unlink();
  munmap(base_, bytes_);
}

}  // namespace fastps
