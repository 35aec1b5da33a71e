// The SPEC "Block" tail, LayerNorm -> Mish (SPEC section 0), as a trainable op:
// the formulas of the forward and the backward, and the arithmetic of the
// backward shared by the CPU (cpu.cpp) and CUDA (cuda.cu) kernels. The forward
// runs the shared LayerNorm -> Mish row kernel (common/ln_mish.h).
//
//   layernorm_mish(x [E, M, D], gamma [E, D], beta [E, D], eps)
//       -> y [E, M, D], mean [E, M], rstd [E, M]
//   y = Mish(xhat * gamma_e + beta_e),  xhat = (x - mean) * rstd,
//   mean, var over the D values of a row (biased var, as nn.LayerNorm),
//   rstd = 1 / sqrt(var + eps). E members with their own affine (the Q heads),
//   or E = 1 (every other network).
//
//   layernorm_mish_backward(grad_y, x, mean, rstd, gamma, beta)
//       -> grad_x [E, M, D], grad_gamma [E, D], grad_beta [E, D]
//   with u = xhat * gamma + beta, gu = grad_y * Mish'(u), gxh = gu * gamma:
//   grad_x     = rstd * (gxh - mean_D(gxh) - xhat * mean_D(gxh * xhat))
//   grad_gamma = sum over rows of gu * xhat,  grad_beta = sum over rows of gu.
// The row statistics come from the shifted sums of common/ln_mish_math.h (exact
// zero for a constant row) and Mish / Mish' from the same header, the same
// arithmetic as the epilogue of the fused ensemble forward.
//
// The grad_gamma / grad_beta sums over rows are taken in a fixed order that does
// not depend on the number of threads or blocks (per chunk of kRowsPerChunk
// rows, then over the chunks in order), so results are reproducible run to run.
#pragma once

#include <cstdint>

#include "common/ln_mish_math.h"
#include "common/macros.h"

namespace cdred {

// Rows per partial sum of grad_gamma / grad_beta.
constexpr int64_t kRowsPerChunk = 64;

// d loss / d u for one element: u = xhat * g + b, y = Mish(u).
template <typename T>
CDRED_HOST_DEVICE inline T block_grad_u(T gy, T xhat, T g, T b) {
  return gy * mish_grad<T>(xhat * g + b);
}

}  // namespace cdred
