// Launchers of the layernorm_mish backward kernels (block/cpu.cpp,
// block/cuda.cu: current CUDA stream), called by block/front.cpp once the
// inputs are validated, contiguous and on the current device. The forward runs
// the shared LayerNorm -> Mish row kernel (common/ln_mish.h).
#pragma once

#include <ATen/core/Tensor.h>

namespace cdred {

// grad_x [E, M, D], grad_gamma and grad_beta [E, D] (block_math.h has the
// formulas) from grad_y, x [E, M, D], mean, rstd [E, M], gamma, beta [E, D].
// part_g, part_b [E, ceil(M / kRowsPerChunk), D]: scratch for the partial column
// sums. E >= 1, D >= 1, M >= 0; one dtype on one device, all contiguous.
void launch_layernorm_mish_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                        const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta,
                                        const at::Tensor& grad_x, const at::Tensor& grad_gamma,
                                        const at::Tensor& grad_beta, const at::Tensor& part_g,
                                        const at::Tensor& part_b);
void launch_layernorm_mish_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta,
                                         const at::Tensor& grad_x, const at::Tensor& grad_gamma,
                                         const at::Tensor& grad_beta, const at::Tensor& part_g,
                                         const at::Tensor& part_b);

}  // namespace cdred
