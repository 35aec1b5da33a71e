// CUDA kernels of layernorm_mish_backward (block_math.h has the formulas);
// block/front.cpp validates the inputs, sets the device and calls the launcher.
//
// Three launches on the current stream, no host synchronisation:
//   1. one warp per row: gu = grad_y * Mish'(u) is stored (scratch [E, M, D]),
//      the row sums of gxh = gu * gamma and gxh * xhat are shuffled to every
//      lane, and grad_x = rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat));
//   2. one thread per (chunk of kRowsPerChunk rows, member, column): the
//      chunk's partial sums of gu * xhat and gu, rows in order (coalesced
//      across columns);
//   3. one thread per (member, column): the partials summed in chunk order.
// The column sums never use atomics, so grad_gamma / grad_beta are
// reproducible run to run and equal to the CPU's up to rounding.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "block/block_math.h"
#include "block/launch.h"
#include "common/cuda_utils.cuh"

namespace cdred {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 65535;

unsigned warp_blocks(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_rows_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ mean,
                         const T* __restrict__ rstd, const T* __restrict__ gamma, const T* __restrict__ beta,
                         T* __restrict__ gx, T* __restrict__ gu_out, int64_t rows, int64_t M, int64_t D) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const T inv_d = T(1) / T(D);
  for (int64_t s = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; s < rows; s += warps) {
    const int64_t e = s / M;
    const T* xr = x + s * D;
    const T* gyr = gy + s * D;
    T* gxr = gx + s * D;
    T* gur = gu_out + s * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T mu = mean[s], rs = rstd[s];
    T a1 = 0, a2 = 0;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const T xh = (xr[j] - mu) * rs;
      const T gu = block_grad_u<T>(gyr[j], xh, g[j], b[j]);
      gur[j] = gu;
      const T gxh = gu * g[j];
      a1 += gxh;
      a2 += gxh * xh;
    }
    a1 = warp_allsum(a1);
    a2 = warp_allsum(a2);
    const T c1 = a1 * inv_d, c2 = a2 * inv_d;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const T xh = (xr[j] - mu) * rs;
      gxr[j] = rs * (gur[j] * g[j] - c1 - xh * c2);  // each lane re-reads only what it wrote
    }
  }
}

// part_g / part_b [E, chunks, D].
template <typename T>
__global__ void column_partials_kernel(const T* __restrict__ gu, const T* __restrict__ x, const T* __restrict__ mean,
                                       const T* __restrict__ rstd, T* __restrict__ part_g, T* __restrict__ part_b,
                                       int64_t E, int64_t M, int64_t D, int64_t chunks) {
  const int64_t total = E * chunks * D;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % D, t = i / D;  // t = e * chunks + c
    const int64_t e = t / chunks, c = t % chunks;
    const int64_t r0 = c * kRowsPerChunk, r1 = min(M, r0 + kRowsPerChunk);
    T sg = 0, sb = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = e * M + r;
      const T g = gu[s * D + j];
      sg += g * ((x[s * D + j] - mean[s]) * rstd[s]);
      sb += g;
    }
    part_g[i] = sg;
    part_b[i] = sb;
  }
}

template <typename T>
__global__ void column_sums_kernel(const T* __restrict__ part_g, const T* __restrict__ part_b, T* __restrict__ gg,
                                   T* __restrict__ gb, int64_t E, int64_t D, int64_t chunks) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < E * D; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i / D, j = i % D;
    T sg = 0, sb = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      sg += part_g[(e * chunks + c) * D + j];
      sb += part_b[(e * chunks + c) * D + j];
    }
    gg[i] = sg;
    gb[i] = sb;
  }
}

unsigned flat_blocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

}  // namespace

void launch_layernorm_mish_backward_cuda(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta,
                                         const at::Tensor& grad_x, const at::Tensor& grad_gamma,
                                         const at::Tensor& grad_beta, const at::Tensor& part_g,
                                         const at::Tensor& part_b) {
  const int64_t E = x.size(0), M = x.size(1), D = x.size(2), rows = E * M;
  const int64_t chunks = part_g.size(1);
  at::Tensor gu = at::empty_like(x);  // scratch: grad_y * Mish'(u), read back by the column sums
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_layernorm_mish_backward_cuda", [&] {
    if (rows > 0) {
      backward_rows_kernel<scalar_t><<<warp_blocks(rows), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
          gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), gu.data_ptr<scalar_t>(),
          rows, M, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      column_partials_kernel<scalar_t><<<flat_blocks(E * chunks * D), kThreads, 0, stream>>>(
          gu.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
          part_g.data_ptr<scalar_t>(), part_b.data_ptr<scalar_t>(), E, M, D, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // With M = 0 there are no chunks and the sums are 0.
    column_sums_kernel<scalar_t><<<flat_blocks(E * D), kThreads, 0, stream>>>(
        part_g.data_ptr<scalar_t>(), part_b.data_ptr<scalar_t>(), grad_gamma.data_ptr<scalar_t>(),
        grad_beta.data_ptr<scalar_t>(), E, D, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cdred
