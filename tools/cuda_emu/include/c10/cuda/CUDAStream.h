// tools/cuda_emu: the current stream, for the CPU emulator (launches run at once, in order).
#pragma once

#include <cuda_runtime.h>

namespace c10::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int /*device*/ = -1) {
  return {};
}
}  // namespace c10::cuda
