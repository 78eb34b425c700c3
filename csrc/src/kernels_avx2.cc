// The kernels compiled with -mavx2 (x86-64 only; CMake sets the flag on this file alone).
// No -mfma: contraction stays off, so results are bitwise those of the base kernels.
#define FASTPS_KERNEL_NS avx2
#include "kernels_impl.h"
