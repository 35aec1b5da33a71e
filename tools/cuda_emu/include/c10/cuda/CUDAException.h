// tools/cuda_emu: C10_CUDA_CHECK and C10_CUDA_KERNEL_LAUNCH_CHECK for the CPU emulator. An
// emulated launch throws its own error, so the launch check has nothing left to check.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(expr)                                                                                        \
  do {                                                                                                              \
    const cudaError_t _cuda_emu_err = (expr);                                                                       \
    TORCH_CHECK(_cuda_emu_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(_cuda_emu_err), " in ", \
                #expr);                                                                                             \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
