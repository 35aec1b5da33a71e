// CUDA kernels of layernorm_mish and its backward (block_math.h has the formulas).
//
// Forward: one warp per row; a butterfly warp shuffle gives every lane the
// row's shifted sums, then each lane writes its strided elements of
// y = Mish(xhat * gamma + beta) (expf / exp: see rnd_math.h).
// Backward, three launches on the current stream, no host synchronisation:
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
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "block/block_math.h"
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
    forward_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mean_out, T* __restrict__ rstd_out,
                   const T* __restrict__ gamma, const T* __restrict__ beta, int64_t rows, int64_t M, int64_t D,
                   T eps) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const T inv_d = T(1) / T(D);
  for (int64_t s = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; s < rows; s += warps) {
    const int64_t e = s / M;
    const T* v = x + s * D;
    T* out = y + s * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T v0 = v[0];
    T s1 = 0, s2 = 0;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const T u = v[j] - v0;
      s1 += u;
      s2 += u * u;
    }
    s1 = warp_allsum(s1);
    s2 = warp_allsum(s2);
    const LnStats<T> st = ln_stats_from_shifted_sums<T>(v0, s1, s2, inv_d, eps);
    if (lane == 0) {
      mean_out[s] = st.mean;
      rstd_out[s] = st.rstd;
    }
    for (int64_t j = lane; j < D; j += kWarpSize) out[j] = ln_affine_mish<T>(v[j], st.mean, st.rstd, g[j], b[j]);
  }
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_cuda(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                                                   const at::Tensor& beta_in, double eps) {
  constexpr const char* op = "cdred_fast::layernorm_mish";
  const BlockShape sh = check_layernorm_mish_inputs(op, x_in, gamma_in, beta_in, eps);
  TORCH_CHECK_VALUE(x_in.is_cuda(), op, ": CUDA kernel called with 'x' on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({sh.E, sh.M}, x.options());
  at::Tensor rstd = at::empty({sh.E, sh.M}, x.options());
  const int64_t rows = sh.E * sh.M;
  if (rows == 0) return {y, mean, rstd};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_layernorm_mish_cuda", [&] {
    forward_kernel<scalar_t><<<warp_blocks(rows), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
        gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), rows, sh.M, sh.D, static_cast<scalar_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    const at::Tensor& gamma_in, const at::Tensor& beta_in) {
  constexpr const char* op = "cdred_fast::layernorm_mish_backward";
  const BlockShape sh = check_layernorm_mish_backward_inputs(op, grad_y_in, x_in, mean_in, rstd_in, gamma_in, beta_in);
  TORCH_CHECK_VALUE(x_in.is_cuda(), op, ": CUDA kernel called with 'x' on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor gy = grad_y_in.contiguous(), x = x_in.contiguous(), mean = mean_in.contiguous(),
                   rstd = rstd_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const int64_t E = sh.E, M = sh.M, D = sh.D, rows = E * M;
  const int64_t chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gamma = at::empty({E, D}, x.options());
  at::Tensor grad_beta = at::empty({E, D}, x.options());
  at::Tensor gu = at::empty_like(x);
  at::Tensor part_g = at::empty({E, chunks, D}, x.options());
  at::Tensor part_b = at::empty({E, chunks, D}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_layernorm_mish_backward_cuda", [&] {
    if (rows > 0) {
      backward_rows_kernel<scalar_t><<<warp_blocks(rows), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
          gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
          gu.data_ptr<scalar_t>(), rows, M, D);
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
  return {grad_x, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CUDA, m) {
  m.impl("layernorm_mish", &layernorm_mish_cuda);
  m.impl("layernorm_mish_backward", &layernorm_mish_backward_cuda);
}

}  // namespace cdred
