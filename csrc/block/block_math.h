// The SPEC "Block" tail, LayerNorm -> Mish (SPEC section 0), as a trainable op:
// forward and backward, shared by the CPU (cpu.cpp) and CUDA (cuda.cu) kernels.
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
// The row statistics come from the shifted sums of rnd_math.h (exact zero for a
// constant row) and Mish / Mish' from rnd_math.h, the same arithmetic as the
// epilogue of the fused ensemble forward.
//
// The grad_gamma / grad_beta sums over rows are taken in a fixed order that does
// not depend on the number of threads or blocks (per chunk of kRowsPerChunk
// rows, then over the chunks in order), so results are reproducible run to run.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "common/checks.h"
#include "rnd/rnd_math.h"

namespace cdred {

// Rows per partial sum of grad_gamma / grad_beta.
constexpr int64_t kRowsPerChunk = 64;

struct BlockShape {
  int64_t E = 0, M = 0, D = 0;
};

inline void check_affine(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_float_tensor(op, name, t, 2, "[E, D]");
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(1) == x.size(2), op, ": argument '", name, "' has shape ",
                    t.sizes(), " but x [E, M, D] = ", x.sizes(), " needs [", x.size(0), ", ", x.size(2), "]");
  check_same_dtype_device(op, name, t, "x", x);
}

inline void check_stats(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_float_tensor(op, name, t, 2, "[E, M]");
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(1) == x.size(1), op, ": argument '", name, "' has shape ",
                    t.sizes(), " but x [E, M, D] = ", x.sizes(), " needs [", x.size(0), ", ", x.size(1), "]");
  check_same_dtype_device(op, name, t, "x", x);
}

inline BlockShape check_layernorm_mish_inputs(const char* op, const at::Tensor& x, const at::Tensor& gamma,
                                              const at::Tensor& beta, double eps) {
  check_float_tensor(op, "x", x, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(2) >= 1, op, ": argument 'x' [E, M, D] needs E >= 1 and D >= 1, got ",
                    x.sizes());
  check_affine(op, "gamma", gamma, x);
  check_affine(op, "beta", beta, x);
  check_nonnegative(op, "eps", eps);
  return {x.size(0), x.size(1), x.size(2)};
}

inline BlockShape check_layernorm_mish_backward_inputs(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                                                       const at::Tensor& mean, const at::Tensor& rstd,
                                                       const at::Tensor& gamma, const at::Tensor& beta) {
  check_float_tensor(op, "x", x, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(2) >= 1, op, ": argument 'x' [E, M, D] needs E >= 1 and D >= 1, got ",
                    x.sizes());
  check_float_tensor(op, "grad_y", grad_y, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": argument 'grad_y' has shape ", grad_y.sizes(),
                    " but x has ", x.sizes(), "; they must match");
  check_same_dtype_device(op, "grad_y", grad_y, "x", x);
  check_stats(op, "mean", mean, x);
  check_stats(op, "rstd", rstd, x);
  check_affine(op, "gamma", gamma, x);
  check_affine(op, "beta", beta, x);
  return {x.size(0), x.size(1), x.size(2)};
}

// d loss / d u for one element: u = xhat * g + b, y = Mish(u).
template <typename T>
CDRED_HOST_DEVICE inline T block_grad_u(T gy, T xhat, T g, T b) {
  return gy * mish_grad<T>(xhat * g + b);
}

}  // namespace cdred
