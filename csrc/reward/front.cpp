// Host front of the reward ops (SPEC section 2): moment_bonus (Eq. 8) and
// cdred_reward (Eq. 7). Validates the arguments, makes the inputs contiguous,
// sets the device, allocates the output and calls the CPU or CUDA launcher
// (reward/launch.h). Registered for CPU and CUDA in registration.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/device.h"
#include "ops.h"
#include "reward/launch.h"

namespace cdred {
namespace {

// pred_i [N, D] for every named predictor, targets [K, N, D]; same dtype and device.
void check_moment_inputs(const char* op, const std::vector<std::pair<const char*, const at::Tensor*>>& preds,
                         const at::Tensor& targets, double alpha, double eps) {
  check_float_tensor(op, "targets", targets, 3, "[K, N, D]");
  const int64_t K = targets.size(0), N = targets.size(1), D = targets.size(2);
  TORCH_CHECK_VALUE(K >= 1, op, ": argument 'targets' must hold at least one target network (K >= 1), got K = ", K);
  TORCH_CHECK_VALUE(D >= 1, op, ": argument 'targets' must have D >= 1 output coordinates, got shape ",
                    targets.sizes());
  for (const auto& [name, pred] : preds) {
    check_float_tensor(op, name, *pred, 2, "[N, D]");
    TORCH_CHECK_VALUE(pred->size(0) == N && pred->size(1) == D, op, ": argument '", name, "' has shape ", pred->sizes(),
                      " but targets [K, N, D] = ", targets.sizes(), " needs [", N, ", ", D, "]");
    check_same_dtype_device(op, name, *pred, "targets", targets);
  }
  check_unit_interval(op, "alpha", alpha);
  check_positive_eps(op, eps);
}

// Everything after validation; pred1 is ignored when npred == 1.
at::Tensor run(const char* op, const at::Tensor& pred0_in, const at::Tensor& pred1_in, const at::Tensor& targets_in,
               const RewardParams& p, int npred) {
  const c10::OptionalDeviceGuard guard(cuda_device_of(targets_in));
  const at::Tensor targets = targets_in.contiguous();
  const at::Tensor pred0 = pred0_in.contiguous();
  const at::Tensor pred1 = npred == 2 ? pred1_in.contiguous() : pred0;
  const int64_t N = targets.size(1);
  // The CUDA kernel runs one block per row.
  TORCH_CHECK_VALUE(!cuda_path(targets) || N <= int64_t(std::numeric_limits<int32_t>::max()), op,
                    ": too many rows (N = ", N, ") for one launch");
  at::Tensor out = at::empty({N}, pred0.options());
  if (N == 0) return out;
  CDRED_LAUNCHER(targets.device(), launch_reward)(pred0, pred1, targets, out, p, npred);
  return out;
}

}  // namespace

at::Tensor moment_bonus(const at::Tensor& pred, const at::Tensor& targets, double alpha, double eps) {
  constexpr const char* op = "cdred_fast::moment_bonus";
  check_moment_inputs(op, {{"pred", &pred}}, targets, alpha, eps);
  return run(op, pred, pred, targets, RewardParams{alpha, 0.0, 0.0, eps, 0}, 1);
}

at::Tensor cdred_reward(const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, const at::Tensor& targets,
                        double alpha, double zeta, double sigma, c10::string_view g, double eps) {
  constexpr const char* op = "cdred_fast::cdred_reward";
  check_moment_inputs(op, {{"pred_expert", &pred_expert}, {"pred_behavioral", &pred_behavioral}}, targets, alpha, eps);
  check_unit_interval(op, "zeta", zeta);
  check_nonnegative(op, "sigma", sigma);
  const int gi = parse_g(op, std::string(g));
  return run(op, pred_expert, pred_behavioral, targets, RewardParams{alpha, zeta, sigma, eps, gi}, 2);
}

}  // namespace cdred
