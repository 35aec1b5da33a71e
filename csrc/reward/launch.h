// Launchers of the reward kernels (SPEC section 2, Eq. 7-8), called by
// reward/front.cpp once the inputs are validated, contiguous and on the current
// device: reward/cpu.cpp and reward/cuda.cu (current CUDA stream).
#pragma once

#include <ATen/core/Tensor.h>

#include "reward/reward_math.h"

namespace cdred {

// out [N] <- per row n, the moment bonus (Eq. 8) of pred0 when npred == 1, the
// CDRED reward (Eq. 7) of (pred0 = expert, pred1 = behavioral) when npred == 2.
// pred0, pred1 [N, D] (pred1 is pred0 when npred == 1), targets [K, N, D],
// N >= 1, one dtype on one device.
void launch_reward_cpu(const at::Tensor& pred0, const at::Tensor& pred1, const at::Tensor& targets,
                       const at::Tensor& out, const RewardParams& p, int npred);
void launch_reward_cuda(const at::Tensor& pred0, const at::Tensor& pred1, const at::Tensor& targets,
                        const at::Tensor& out, const RewardParams& p, int npred);

}  // namespace cdred
