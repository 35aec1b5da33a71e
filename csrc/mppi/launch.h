// Launchers of the MPPI kernels (SPEC section 4), called by mppi/front.cpp once
// the inputs are validated, contiguous and on the current device, the outputs
// allocated and the random numbers drawn: mppi/cpu.cpp and mppi/cuda.cu
// (current CUDA stream). They draw nothing themselves.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cdred {

// mppi_sample: x [B, H, M, A] holds eps ~ N(0, 1) and receives, in place,
// clamp(mean[b, h, a] + std[b, h, a] * eps, -1, 1); mean, std [B, H, A]. x has
// at least one element.
void launch_mppi_sample_cpu(const at::Tensor& mean, const at::Tensor& std, const at::Tensor& x);
void launch_mppi_sample_cuda(const at::Tensor& mean, const at::Tensor& std, const at::Tensor& x);

struct EliteUpdateArgs {
  int64_t num_elites;  // k, 1 <= k <= N
  double temperature, min_std, max_std;
};

// The CUDA elite sort keeps candidate indices in 32 bits; this one marks padding.
inline constexpr uint32_t kEliteSortPadIndex = 0xffffffffu;

// mppi_elite_update: values [B, N], actions [B, H, N, A] -> mean, std [B, H, A],
// elite_actions [B, H, k, A], elite_weights, elite_values [B, k]. B >= 1.
void launch_mppi_elite_update_cpu(const at::Tensor& values, const at::Tensor& actions, const EliteUpdateArgs& args,
                                  const at::Tensor& mean, const at::Tensor& std, const at::Tensor& elite_actions,
                                  const at::Tensor& elite_weights, const at::Tensor& elite_values);
void launch_mppi_elite_update_cuda(const at::Tensor& values, const at::Tensor& actions, const EliteUpdateArgs& args,
                                   const at::Tensor& mean, const at::Tensor& std, const at::Tensor& elite_actions,
                                   const at::Tensor& elite_weights, const at::Tensor& elite_values);

// mppi_select: out [B, A] <- clamp(elite_actions[b, 0, choice[b], :]
// (+ std[b, 0, :] * out[b, :] unless eval_mode: out holds eps ~ N(0, 1) then), -1, 1);
// elite_actions [B, H, k, A], std [B, H, A], choice int64 [B] in [0, k). B, A >= 1.
void launch_mppi_select_cpu(const at::Tensor& elite_actions, const at::Tensor& std, const at::Tensor& choice,
                            const at::Tensor& out, bool eval_mode);
void launch_mppi_select_cuda(const at::Tensor& elite_actions, const at::Tensor& std, const at::Tensor& choice,
                             const at::Tensor& out, bool eval_mode);

}  // namespace cdred
