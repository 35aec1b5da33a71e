// tools/cuda_emu: the few CUDA runtime declarations the kernels' launchers use, for the CPU
// emulator (cuda_emu.h). Only what csrc/**/*.cu calls is here.
#pragma once

#include "cuda_emu.h"

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid argument";
}
inline cudaError_t cudaGetLastError() {
  return cudaSuccess;
}

enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *value = cuda_emu::smem_optin();
  return cudaSuccess;
}

struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;         // the kernel's static shared memory
  int maxDynamicSharedSizeBytes = 0;  // its current limit of dynamic shared memory
  int maxThreadsPerBlock = 1024;
};
template <typename... P>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*kernel)(P...)) {
  *attr = cudaFuncAttributes{};
  attr->sharedSizeBytes = cuda_emu::static_shared_of(kernel);
  attr->maxDynamicSharedSizeBytes =
      int(cuda_emu::max_dynamic_shared(reinterpret_cast<const void*>(kernel), attr->sharedSizeBytes));
  return cudaSuccess;
}

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  const bool ok = cuda_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel),
                                                   cuda_emu::static_shared_of(kernel), value);
  return ok ? cudaSuccess : cudaErrorInvalidValue;
}
