// CUDA kernels for moment_bonus and cdred_reward (SPEC section 2).
//
// One block per row. Threads stride over the D coordinates; each thread reads
// the K target values of its coordinates once (coalesced across the warp),
// forms the moments and the Eq. 8 terms for every predictor in registers, and
// the block reduces the per-predictor sums. Nothing of size [K, N, D] or [N, D]
// is written. Launched on the current CUDA stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
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
  const acc_t inv_k = acc_t(1) / acc_t(K);
  const acc_t eps = acc_t(p.eps);
  const scalar_t* preds[2] = {pred0 + n * D, pred1 + n * D};
  acc_t sums[2 * NPRED];  // [distill_0, root_0, distill_1, root_1]
#pragma unroll
  for (int i = 0; i < 2 * NPRED; ++i) sums[i] = acc_t(0);

  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t t0 = targets[n * D + d];
    acc_t s = 0, s2 = 0;
    for (int64_t k = 1; k < K; ++k) {
      const acc_t u = targets[(k * N + n) * D + d] - t0;
      s += u;
      s2 += u * u;
    }
    const Moments<acc_t> m = moments_from_shifted_sums<acc_t>(t0, s, s2, inv_k, eps);
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

at::Tensor launch(const at::Tensor& pred0_in, const at::Tensor& pred1_in, const at::Tensor& targets_in,
                  const RewardParams& p, int npred, const char* op) {
  TORCH_CHECK_VALUE(targets_in.is_cuda(), op, ": CUDA kernel called with 'targets' on ", targets_in.device());
  const c10::cuda::CUDAGuard guard(targets_in.device());
  const at::Tensor targets = targets_in.contiguous();
  const at::Tensor pred0 = pred0_in.contiguous();
  const at::Tensor pred1 = pred1_in.contiguous();
  const int64_t K = targets.size(0), N = targets.size(1), D = targets.size(2);
  TORCH_CHECK_VALUE(N <= int64_t(2147483647), op, ": too many rows (N = ", N, ") for one launch");
  at::Tensor out = at::empty({N}, pred0.options());
  if (N == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(targets.scalar_type(), "cdred_fast_reward_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(N));
    if (npred == 1) {
      reward_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(
          pred0.data_ptr<scalar_t>(), pred0.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), K, N, D, p);
    } else {
      reward_kernel<scalar_t, 2><<<grid, kThreads, 0, stream>>>(
          pred0.data_ptr<scalar_t>(), pred1.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), K, N, D, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor moment_bonus_cuda(const at::Tensor& pred, const at::Tensor& targets, double alpha, double eps) {
  constexpr const char* op = "cdred_fast::moment_bonus";
  check_moment_inputs(op, {{"pred", &pred}}, targets, alpha, eps);
  return launch(pred, pred, targets, RewardParams{alpha, 0.0, 0.0, eps, 0}, 1, op);
}

at::Tensor cdred_reward_cuda(const at::Tensor& pred_expert, const at::Tensor& pred_behavioral,
                             const at::Tensor& targets, double alpha, double zeta, double sigma, c10::string_view g,
                             double eps) {
  constexpr const char* op = "cdred_fast::cdred_reward";
  check_moment_inputs(op, {{"pred_expert", &pred_expert}, {"pred_behavioral", &pred_behavioral}}, targets, alpha,
                      eps);
  check_unit_interval(op, "zeta", zeta);
  check_nonnegative(op, "sigma", sigma);
  const int gi = parse_g(op, std::string(g));
  return launch(pred_expert, pred_behavioral, targets, RewardParams{alpha, zeta, sigma, eps, gi}, 2, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CUDA, m) {
  m.impl("moment_bonus", &moment_bonus_cuda);
  m.impl("cdred_reward", &cdred_reward_cuda);
}

}  // namespace cdred
