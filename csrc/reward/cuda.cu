// CUDA kernel of moment_bonus and cdred_reward (SPEC section 2); reward/front.cpp
// validates the inputs, sets the device and calls launch_reward_cuda.
//
// One block per row. Threads stride over the D coordinates; each thread reads
// the K target values of its coordinates once (coalesced across the warp),
// forms the moments and the Eq. 8 terms for every predictor in registers, and
// the block reduces the per-predictor sums. Nothing of size [K, N, D] or [N, D]
// is written. Launched on the current CUDA stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/cuda_utils.cuh"
#include "reward/launch.h"
#include "reward/reward_math.h"

namespace cdred {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int NPRED>
__global__ void __launch_bounds__(kThreads)
    reward_kernel(const scalar_t* __restrict__ pred0, const scalar_t* __restrict__ pred1,
                  const scalar_t* __restrict__ targets, scalar_t* __restrict__ out, int64_t K, int64_t N, int64_t D,
                  RewardParams p) {
  using acc_t = scalar_t;  // same accumulation precision as the CPU kernel and the reference
  __shared__ acc_t shared[2 * NPRED * (kThreads / kWarpSize)];
  const int64_t n = blockIdx.x;
  const acc_t k_count = acc_t(K);
  const acc_t inv_k = acc_t(1) / k_count;
  const acc_t eps = acc_t(p.eps);
  const scalar_t* preds[2] = {pred0 + n * D, pred1 + n * D};
  acc_t sums[2 * NPRED];  // [distill_0, root_0, distill_1, root_1]
#pragma unroll
  for (int i = 0; i < 2 * NPRED; ++i) sums[i] = acc_t(0);

  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t t0 = targets[n * D + d];
    acc_t tsum = t0, tcomp = 0, s = 0, s2 = 0;
    for (int64_t k = 1; k < K; ++k) {
      const acc_t tk = targets[(k * N + n) * D + d];
      kahan_add<acc_t>(tk, tsum, tcomp);
      const acc_t u = tk - t0;
      s += u;
      s2 += u * u;
    }
    const Moments<acc_t> m = moments_from_sums<acc_t>(tsum, tcomp, s, s2, k_count, inv_k, eps);
#pragma unroll
    for (int i = 0; i < NPRED; ++i) accumulate_coordinate<acc_t>(preds[i][d], m, sums[2 * i], sums[2 * i + 1]);
  }
  block_sum<acc_t, 2 * NPRED>(sums, shared);
  if (threadIdx.x == 0) {
    const acc_t inv_d = acc_t(1) / acc_t(D);
    if constexpr (NPRED == 1) {
      out[n] = finish_bonus<acc_t>(sums[0], sums[1], inv_d, p);
    } else {
      out[n] = finish_reward<acc_t>(finish_bonus<acc_t>(sums[0], sums[1], inv_d, p),
                                    finish_bonus<acc_t>(sums[2], sums[3], inv_d, p), p);
    }
  }
}

}  // namespace

void launch_reward_cuda(const at::Tensor& pred0, const at::Tensor& pred1, const at::Tensor& targets,
                        const at::Tensor& out, const RewardParams& p, int npred) {
  const int64_t K = targets.size(0), N = targets.size(1), D = targets.size(2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(targets.scalar_type(), "cdred_fast_reward_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(N));
    if (npred == 1) {
      reward_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(pred0.data_ptr<scalar_t>(), pred0.data_ptr<scalar_t>(),
                                                                targets.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                                K, N, D, p);
    } else {
      reward_kernel<scalar_t, 2><<<grid, kThreads, 0, stream>>>(pred0.data_ptr<scalar_t>(), pred1.data_ptr<scalar_t>(),
                                                                targets.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                                K, N, D, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cdred
