// Error checks in two tiers (faiss): FASTPS_CHECK_ARG / FASTPS_CHECK always run and throw
// exceptions that pybind11 turns into ValueError / RuntimeError; FASTPS_DCHECK guards internal
// invariants in debug builds only. Nothing here aborts.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

namespace fastps::detail {

template <typename... Args>
std::string format(const char* fmt, Args... args) {
  int n = std::snprintf(nullptr, 0, fmt, args...);
  std::string s(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

inline std::string format(const char* fmt) { return fmt; }

}  // namespace fastps::detail

/// Throws std::invalid_argument (Python ValueError) with a printf-formatted message.
#define FASTPS_CHECK_ARG(cond, ...)                                                  \
  do {                                                                               \
    if (!(cond)) throw std::invalid_argument(::fastps::detail::format(__VA_ARGS__)); \
  } while (0)

/// Throws std::runtime_error (Python RuntimeError) with a printf-formatted message.
#define FASTPS_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) throw std::runtime_error(::fastps::detail::format(__VA_ARGS__)); \
  } while (0)

#ifdef NDEBUG
// Compiled but never run: the condition's names stay used (no unused warnings) at no cost.
#define FASTPS_DCHECK(cond)  \
  do {                       \
    if (false) (void)(cond); \
  } while (0)
#else
#define FASTPS_DCHECK(cond) \
  FASTPS_CHECK(cond, "internal invariant failed: %s (%s:%d)", #cond, __FILE__, __LINE__)
#endif
