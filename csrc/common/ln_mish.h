// The LayerNorm -> Mish row kernel shared by the fused epilogue of
// ensemble_mlp / ensemble_reward (rnd: bias added, no statistics kept) and the
// forward of layernorm_mish (block: no bias, row statistics returned). One
// implementation per device: common/ln_mish_cpu.cpp and common/ln_mish_cuda.cu.
//
// For every (member e, row n) of an [E, N] grid of rows of D values:
//   v       = src[e, n, :] + bias[e, :]            (bias optional)
//   mean, rstd over the D values of v               (shifted sums, ln_mish_math.h)
//   dst[e, n, :] = Mish((v - mean) * rstd * gamma[e, :] + beta[e, :])
//   mean_out[e, n] = mean, rstd_out[e, n] = rstd    (optional)
//
// src: [E, N, D] with unit stride along D, any strides otherwise (the rnd
// epilogue reads a transposed GEMM output); dst: [E, N, D] contiguous, possibly
// src's memory (in place: each element is read before it is written);
// bias, gamma, beta: [E, D] contiguous; mean_out, rstd_out: [E, N] contiguous.
// An undefined `bias` means none; mean_out and rstd_out are both defined or
// both undefined. All tensors of one dtype (float32 or float64; also bfloat16,
// without statistics, computed in float32: the rnd ops' planning form) on one device;
// the caller has validated them and made the device current. The CUDA launcher
// runs on the current stream.
#pragma once

#include <ATen/core/Tensor.h>

namespace cdred {

void launch_ln_mish_cpu(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                        const at::Tensor& beta, double eps, const at::Tensor& mean_out, const at::Tensor& rstd_out);
void launch_ln_mish_cuda(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                         const at::Tensor& beta, double eps, const at::Tensor& mean_out, const at::Tensor& rstd_out);

}  // namespace cdred
