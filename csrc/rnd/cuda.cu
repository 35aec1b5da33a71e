// CUDA kernel of the private op _rnd_mish: the epilogue's Mish (expf / exp, see
// common/ln_mish_math.h) elementwise, grid-stride, on the current CUDA stream.
// rnd/front.cpp sets the device and calls launch_mish_cuda.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "common/ln_mish_math.h"
#include "rnd/launch.h"

namespace cdred {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename T>
__global__ void mish_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = mish<T>(x[i]);
}

}  // namespace

void launch_mish_cuda(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_rnd_mish_cuda", [&] {
    mish_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cdred
