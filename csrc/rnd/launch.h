// Launchers of the rnd family's own kernels, called by rnd/front.cpp: the
// elementwise Mish of the private test op _rnd_mish (rnd/cpu.cpp,
// rnd/cuda.cu). The ensemble forward's GEMMs are ATen calls made by the front;
// its LayerNorm -> Mish epilogue is the shared row kernel of common/ln_mish.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace cdred {

// y <- Mish(x) elementwise, the epilogue's Mish (common/ln_mish_math.h); x and y
// contiguous, same shape, dtype and device, at least one element.
void launch_mish_cpu(const at::Tensor& x, const at::Tensor& y);
void launch_mish_cuda(const at::Tensor& x, const at::Tensor& y);

}  // namespace cdred
