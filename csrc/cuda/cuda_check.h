// FASTPS_CUDA_CHECK: every CUDA runtime call on the transfer path goes through it, so a failure
// reaches Python as RuntimeError naming the call and CUDA's reason. Never aborts.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>

#include "fastps/check.h"

#define FASTPS_CUDA_CHECK(expr)                                                               \
  do {                                                                                        \
    const cudaError_t fastps_err_ = (expr);                                                   \
    if (fastps_err_ != cudaSuccess)                                                           \
      throw std::runtime_error(                                                               \
          ::fastps::detail::format("%s failed: %s", #expr, cudaGetErrorString(fastps_err_))); \
  } while (0)
