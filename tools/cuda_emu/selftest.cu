// Kernels with known defects (and one without), registered as torch.ops.cuda_emu_selftest.*
// in the emulator's build only: python_tests/test_cuda_emulation.py checks that the emulator
// reports each defect, so that its passing verdict on csrc's kernels means something.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"

namespace cuda_emu_selftest {
namespace {

using cdred::block_sum;
using cdred::kWarpSize;

// Correct: each thread sums a strided part, then a block reduction (shuffles + shared memory).
__global__ void sum_kernel(const float* x, int64_t n, float* out) {
  __shared__ float shared[32];
  float v[1] = {0.f};
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v[0] += x[i];
  block_sum<float, 1>(v, shared);
  if (threadIdx.x == 0) out[0] = v[0];
}

// Defect: thread 0 reads the other threads' shared values without a __syncthreads.
__global__ void racy_sum_kernel(const float* x, float* out) {
  __shared__ float shared[64];
  shared[threadIdx.x] = x[threadIdx.x];
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int i = 0; i < 64; ++i) s += shared[i];
    out[0] = s;
  }
}

// Defect: a __syncthreads that half of the block never reaches.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Defect: full-mask shuffles in a block of 48 threads (its second warp has 16 lanes).
__global__ void partial_warp_kernel(float* out) {
  const float s = cdred::warp_sum(1.f);
  if (threadIdx.x % kWarpSize == 0) out[threadIdx.x / kWarpSize] = s;
}

// Defect: every thread reads the element after its own, the last one past the end of x.
__global__ void out_of_bounds_kernel(const float* x, float* out) {
  out[threadIdx.x] = x[threadIdx.x + 1];
}

// Device arithmetic: row 0 is x * x - y as written (contracted into fma(x, x, -y) as nvcc does),
// row 1 the same with the product rounded first (__fmul_rn, never contracted).
__global__ void contraction_kernel(const float* x, const float* y, int64_t n, float* out) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    out[i] = x[i] * x[i] - y[i];
    out[n + i] = __fadd_rn(__fmul_rn(x[i], x[i]), -y[i]);
  }
}

__global__ void dynamic_shared_kernel(float* out) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
}

at::Tensor sum(const at::Tensor& x) {
  at::Tensor out = at::empty({1}, x.options());
  sum_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), x.numel(), out.data_ptr<float>());
  return out;
}

at::Tensor racy_sum(const at::Tensor& x) {
  TORCH_CHECK(x.numel() == 64, "racy_sum takes 64 values");
  at::Tensor out = at::empty({1}, x.options());
  racy_sum_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

at::Tensor divergent(const at::Tensor& like) {
  at::Tensor out = at::empty({64}, like.options());
  divergent_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>());
  return out;
}

at::Tensor partial_warp(const at::Tensor& like) {
  at::Tensor out = at::empty({2}, like.options());
  partial_warp_kernel<<<1, 48, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>());
  return out;
}

// Reads one element past the end of x (64 values): AddressSanitizer builds report it.
at::Tensor out_of_bounds(const at::Tensor& x) {
  TORCH_CHECK(x.numel() == 64, "out_of_bounds takes 64 values");
  at::Tensor out = at::empty({64}, x.options());
  out_of_bounds_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

// `bytes` of dynamic shared memory, without raising the kernel's limit.
at::Tensor dynamic_shared(const at::Tensor& like, int64_t bytes) {
  at::Tensor out = at::empty({64}, like.options());
  dynamic_shared_kernel<<<1, 64, static_cast<size_t>(bytes), c10::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>());
  return out;
}

// [2, n]: x * x - y contracted as on the GPU, and with the product rounded (see the kernel).
at::Tensor contraction(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.numel() == y.numel(), "contraction takes x and y of one size");
  at::Tensor out = at::empty({2, x.numel()}, x.options());
  contraction_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), y.data_ptr<float>(),
                                                                      x.numel(), out.data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace cuda_emu_selftest

TORCH_LIBRARY(cuda_emu_selftest, m) {
  m.def("sum(Tensor x) -> Tensor", &cuda_emu_selftest::sum);
  m.def("racy_sum(Tensor x) -> Tensor", &cuda_emu_selftest::racy_sum);
  m.def("divergent(Tensor like) -> Tensor", &cuda_emu_selftest::divergent);
  m.def("partial_warp(Tensor like) -> Tensor", &cuda_emu_selftest::partial_warp);
  m.def("dynamic_shared(Tensor like, int bytes) -> Tensor", &cuda_emu_selftest::dynamic_shared);
  m.def("out_of_bounds(Tensor x) -> Tensor", &cuda_emu_selftest::out_of_bounds);
  m.def("contraction(Tensor x, Tensor y) -> Tensor", &cuda_emu_selftest::contraction);
}
