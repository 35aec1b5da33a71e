// Host front of the Block tail ops (SPEC section 0): layernorm_mish and
// layernorm_mish_backward (block_math.h has the formulas). Validates the
// arguments, makes the inputs contiguous, sets the device and allocates the
// outputs; the forward then runs the shared LayerNorm -> Mish row kernel
// (common/ln_mish.h) with the row statistics kept, the backward the family's
// launcher (block/launch.h). Registered for CPU and CUDA in registration.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "block/block_math.h"
#include "block/launch.h"
#include "common/checks.h"
#include "common/device.h"
#include "common/ln_mish.h"
#include "ops.h"

namespace cdred {
namespace {

struct BlockShape {
  int64_t E = 0, M = 0, D = 0;
};

void check_affine(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_float_tensor(op, name, t, 2, "[E, D]");
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(1) == x.size(2), op, ": argument '", name, "' has shape ",
                    t.sizes(), " but x [E, M, D] = ", x.sizes(), " needs [", x.size(0), ", ", x.size(2), "]");
  check_same_dtype_device(op, name, t, "x", x);
}

void check_stats(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_float_tensor(op, name, t, 2, "[E, M]");
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(1) == x.size(1), op, ": argument '", name, "' has shape ",
                    t.sizes(), " but x [E, M, D] = ", x.sizes(), " needs [", x.size(0), ", ", x.size(1), "]");
  check_same_dtype_device(op, name, t, "x", x);
}

BlockShape check_layernorm_mish_inputs(const char* op, const at::Tensor& x, const at::Tensor& gamma,
                                       const at::Tensor& beta, double eps) {
  check_float_tensor(op, "x", x, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(2) >= 1, op, ": argument 'x' [E, M, D] needs E >= 1 and D >= 1, got ",
                    x.sizes());
  check_affine(op, "gamma", gamma, x);
  check_affine(op, "beta", beta, x);
  check_nonnegative(op, "eps", eps);
  return {x.size(0), x.size(1), x.size(2)};
}

BlockShape check_layernorm_mish_backward_inputs(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                                                const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
                                                const at::Tensor& beta) {
  check_float_tensor(op, "x", x, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(2) >= 1, op, ": argument 'x' [E, M, D] needs E >= 1 and D >= 1, got ",
                    x.sizes());
  check_float_tensor(op, "grad_y", grad_y, 3, "[E, M, D]");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": argument 'grad_y' has shape ", grad_y.sizes(), " but x has ",
                    x.sizes(), "; they must match");
  check_same_dtype_device(op, "grad_y", grad_y, "x", x);
  check_stats(op, "mean", mean, x);
  check_stats(op, "rstd", rstd, x);
  check_affine(op, "gamma", gamma, x);
  check_affine(op, "beta", beta, x);
  return {x.size(0), x.size(1), x.size(2)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                                              const at::Tensor& beta_in, double eps) {
  constexpr const char* op = "cdred_fast::layernorm_mish";
  const BlockShape sh = check_layernorm_mish_inputs(op, x_in, gamma_in, beta_in, eps);
  const c10::OptionalDeviceGuard guard(cuda_device_of(x_in));
  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({sh.E, sh.M}, x.options());
  at::Tensor rstd = at::empty({sh.E, sh.M}, x.options());
  if (sh.M == 0) return {y, mean, rstd};
  const at::Tensor no_bias;
  CDRED_LAUNCHER(x.device(), launch_ln_mish)(x, y, no_bias, gamma, beta, eps, mean, rstd);
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_backward(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    const at::Tensor& gamma_in, const at::Tensor& beta_in) {
  constexpr const char* op = "cdred_fast::layernorm_mish_backward";
  const BlockShape sh = check_layernorm_mish_backward_inputs(op, grad_y_in, x_in, mean_in, rstd_in, gamma_in, beta_in);
  const c10::OptionalDeviceGuard guard(cuda_device_of(x_in));
  const at::Tensor gy = grad_y_in.contiguous(), x = x_in.contiguous(), mean = mean_in.contiguous(),
                   rstd = rstd_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const int64_t E = sh.E, M = sh.M, D = sh.D;
  const int64_t chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;  // per member
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gamma = at::empty({E, D}, x.options());
  at::Tensor grad_beta = at::empty({E, D}, x.options());
  at::Tensor part_g = at::empty({E, chunks, D}, x.options());
  at::Tensor part_b = at::empty({E, chunks, D}, x.options());
  // With M = 0 there are no chunks: the launchers still write grad_gamma = grad_beta = 0.
  CDRED_LAUNCHER(x.device(), launch_layernorm_mish_backward)(gy, x, mean, rstd, gamma, beta, grad_x, grad_gamma,
                                                             grad_beta, part_g, part_b);
  return {grad_x, grad_gamma, grad_beta};
}

}  // namespace cdred
