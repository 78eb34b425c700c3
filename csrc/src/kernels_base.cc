// The kernels for the baseline instruction set of the target (SSE2 on x86-64).
#define FASTPS_KERNEL_NS base
#include "kernels_impl.h"
