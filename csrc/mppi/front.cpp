// Host front of the MPPI planning ops (SPEC section 4): mppi_sample,
// mppi_elite_update, mppi_select. Validates the arguments, makes the inputs
// contiguous, sets the device, allocates the outputs and makes every random
// draw, then calls the CPU or CUDA launcher (mppi/launch.h), which only
// computes. Registered for CPU and CUDA in registration.cpp (with the Autograd
// kernel that keeps these ops out of autograd). Each op takes a leading batch
// dimension B of independent planning problems.
//
// Random numbers: ATen draws them with the caller's generator, in the shapes
// and the order of the reference (cdred_fast/reference.py), so that the CPU and
// the CUDA kernels consume exactly the reference's draws from a given generator
// state, and leave the generator in the same state:
//   mppi_sample: eps ~ N(0, 1) of shape [B, H, M, A] (at::randn);
//   mppi_select: 1. the elite index, drawn as torch.multinomial(w, 1) draws it
//                   (draw_elite_index below);
//                2. then, unless eval_mode, eps ~ N(0, 1) of shape [B, A].
#include <ATen/Dispatch.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/randn.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/device.h"
#include "mppi/launch.h"
#include "ops.h"

namespace cdred {
namespace {

// =============================================================================
// Validation
// =============================================================================

// mean [B, H, A], std [B, H, A], num_samples >= 0.
void check_mppi_sample_inputs(const char* op, const at::Tensor& mean, const at::Tensor& std, int64_t num_samples,
                              const std::optional<at::Generator>& gen) {
  check_float_tensor(op, "mean", mean, 3, "[B, H, A]");
  check_float_tensor(op, "std", std, 3, "[B, H, A]");
  TORCH_CHECK_VALUE(std.sizes() == mean.sizes(), op, ": argument 'std' has shape ", std.sizes(),
                    " but 'mean' has shape ", mean.sizes(), "; they must match");
  check_same_dtype_device(op, "std", std, "mean", mean);
  TORCH_CHECK_VALUE(num_samples >= 0, op, ": argument 'num_samples' must be >= 0, got ", num_samples);
  check_generator_device(op, gen, mean);
}

// temperature multiplies values of the given dtype, so it must stay positive and
// finite once rounded to that dtype (float32: between 1.2e-38 and 3.4e38).
void check_temperature(const char* op, double temperature, at::ScalarType dtype) {
  const double rounded = dtype == at::kFloat ? double(static_cast<float>(temperature)) : temperature;
  const double tiny =
      dtype == at::kFloat ? double(std::numeric_limits<float>::min()) : std::numeric_limits<double>::min();
  TORCH_CHECK_VALUE(std::isfinite(rounded) && rounded >= tiny, op,
                    ": argument 'temperature' must be finite and > 0 (at least ", tiny, " and representable in ", dtype,
                    "), got ", temperature);
}

void check_std_bounds(const char* op, double min_std, double max_std) {
  TORCH_CHECK_VALUE(std::isfinite(min_std) && min_std > 0.0, op, ": argument 'min_std' must be finite and > 0, got ",
                    min_std);
  TORCH_CHECK_VALUE(std::isfinite(max_std) && max_std >= min_std, op,
                    ": argument 'max_std' must be finite and >= min_std (", min_std, "), got ", max_std);
}

// values [B, N], actions [B, H, N, A], 1 <= num_elites <= N.
void check_mppi_elite_inputs(const char* op, const at::Tensor& values, const at::Tensor& actions, int64_t num_elites,
                             double temperature, double min_std, double max_std) {
  check_float_tensor(op, "values", values, 2, "[B, N]");
  check_float_tensor(op, "actions", actions, 4, "[B, H, N, A]");
  TORCH_CHECK_VALUE(actions.size(0) == values.size(0) && actions.size(2) == values.size(1), op,
                    ": argument 'actions' has shape ", actions.sizes(), " but 'values' [B, N] = ", values.sizes(),
                    " needs [", values.size(0), ", H, ", values.size(1), ", A]");
  check_same_dtype_device(op, "actions", actions, "values", values);
  const int64_t N = values.size(1);
  TORCH_CHECK_VALUE(num_elites >= 1 && num_elites <= N, op, ": argument 'num_elites' must be in [1, N] = [1, ", N,
                    "], got ", num_elites);
  check_temperature(op, temperature, values.scalar_type());
  check_std_bounds(op, min_std, max_std);
}

// elite_actions [B, H, k, A] with H >= 1 and k >= 1, elite_weights [B, k], std [B, H, A].
void check_mppi_select_inputs(const char* op, const at::Tensor& elite_actions, const at::Tensor& elite_weights,
                              const at::Tensor& std, const std::optional<at::Generator>& gen) {
  check_float_tensor(op, "elite_actions", elite_actions, 4, "[B, H, k, A]");
  check_float_tensor(op, "elite_weights", elite_weights, 2, "[B, k]");
  check_float_tensor(op, "std", std, 3, "[B, H, A]");
  const int64_t B = elite_actions.size(0), H = elite_actions.size(1), k = elite_actions.size(2),
                A = elite_actions.size(3);
  TORCH_CHECK_VALUE(H >= 1, op,
                    ": argument 'elite_actions' needs a horizon H >= 1 (the first action is taken), got shape ",
                    elite_actions.sizes());
  TORCH_CHECK_VALUE(k >= 1, op, ": argument 'elite_actions' needs at least one elite (k >= 1), got shape ",
                    elite_actions.sizes());
  TORCH_CHECK_VALUE(elite_weights.size(0) == B && elite_weights.size(1) == k, op,
                    ": argument 'elite_weights' has shape ", elite_weights.sizes(),
                    " but 'elite_actions' [B, H, k, A] = ", elite_actions.sizes(), " needs [", B, ", ", k, "]");
  TORCH_CHECK_VALUE(std.size(0) == B && std.size(1) == H && std.size(2) == A, op, ": argument 'std' has shape ",
                    std.sizes(), " but 'elite_actions' [B, H, k, A] = ", elite_actions.sizes(), " needs [", B, ", ", H,
                    ", ", A, "]");
  check_same_dtype_device(op, "elite_weights", elite_weights, "elite_actions", elite_actions);
  check_same_dtype_device(op, "std", std, "elite_actions", elite_actions);
  check_generator_device(op, gen, elite_actions);
}

// The checks torch.multinomial makes before it draws (draw_elite_index leaves
// them out): every weight finite and >= 0, and each row with a positive sum.
// One pass over the B * k weights on the host, so CPU tensors only; the
// messages name the first offending row.
void check_elite_weights_cpu(const char* op, const at::Tensor& weights_in) {
  const at::Tensor weights = weights_in.contiguous();
  const int64_t B = weights.size(0), k = weights.size(1);
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "cdred_fast_mppi_select_check_cpu", [&] {
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    for (int64_t b = 0; b < B; ++b) {
      bool positive = false;
      for (int64_t j = 0; j < k; ++j) {
        const scalar_t v = w[b * k + j];
        // NaN fails both comparisons, so it is caught here too.
        TORCH_CHECK(v >= 0 && v < inf, op, ": argument 'elite_weights' is not a probability distribution: row ", b,
                    " has the weight ", v, " (the probability tensor must not contain inf, nan or an element < 0)");
        positive = positive || v > 0;
      }
      TORCH_CHECK(positive, op, ": argument 'elite_weights' is not a probability distribution: row ", b,
                  " sums to 0 (invalid multinomial distribution: sum of probabilities <= 0)");
    }
  });
}

// =============================================================================
// The elite draw of mppi_select (SPEC section 4, step 4: "draw one elite
// sequence with probability w")
// =============================================================================
//
// torch.multinomial(w, 1) (with or without replacement: one sample) takes a
// fast path in ATen: q ~ Exp(1) of w's shape, drawn by empty_like(w).exponential_
// from the generator, then argmax(w / q) along the last dimension (the
// exponential form of the Gumbel-max trick). Those calls are repeated here, in
// the same order and on tensors of the same shape, dtype and layout (w as the
// caller passed it, not a contiguous copy), so the index and the generator
// state afterwards are the ones torch.multinomial gives from the same state, bit
// for bit (python_tests/test_mppi_ops.py checks it).
//
// What is left out is ATen's validation of w: it reduces w and reads the result
// on the host (.item()), a device synchronisation that also makes the op
// impossible to record in a CUDA graph. On the CPU mppi_select checks the
// weights itself (check_elite_weights_cpu); on CUDA they are not checked. For
// an invalid row on CUDA the index is still in [0, k) (argmax of k values, NaN
// counting as the largest), so the gather that follows stays in bounds.
//
// One elite index per row of `weights` [B, k]: int64 [B], on weights' device.
at::Tensor draw_elite_index(const at::Tensor& weights, const std::optional<at::Generator>& generator) {
  at::Tensor q = at::empty_like(weights);
  q.exponential_(1.0, generator);
  at::div_out(q, weights, q);  // q <- w / q, in place as ATen does
  return at::argmax(q, /*dim=*/-1, /*keepdim=*/false);
}

}  // namespace

// =============================================================================
// The ops
// =============================================================================

at::Tensor mppi_sample(const at::Tensor& mean_in, const at::Tensor& std_in, int64_t num_samples,
                       std::optional<at::Generator> generator) {
  constexpr const char* op = "cdred_fast::mppi_sample";
  check_mppi_sample_inputs(op, mean_in, std_in, num_samples, generator);
  const c10::OptionalDeviceGuard guard(cuda_device_of(mean_in));
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor stdev = std_in.contiguous();
  const int64_t B = mean.size(0), H = mean.size(1), A = mean.size(2), M = num_samples;
  // The draw: eps ~ N(0, 1) of shape [B, H, M, A], the reference's call, hence its numbers.
  at::Tensor out = at::randn({B, H, M, A}, generator, mean.options());
  if (out.numel() == 0) return out;
  CDRED_LAUNCHER(mean.device(), launch_mppi_sample)(mean, stdev, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mppi_elite_update(
    const at::Tensor& values_in, const at::Tensor& actions_in, int64_t num_elites, double temperature, double min_std,
    double max_std) {
  constexpr const char* op = "cdred_fast::mppi_elite_update";
  check_mppi_elite_inputs(op, values_in, actions_in, num_elites, temperature, min_std, max_std);
  const c10::OptionalDeviceGuard guard(cuda_device_of(values_in));
  const at::Tensor values = values_in.contiguous();
  const at::Tensor actions = actions_in.contiguous();
  const int64_t B = actions.size(0), H = actions.size(1), N = actions.size(2), A = actions.size(3);
  const int64_t k = num_elites;
  if (cuda_path(values)) {  // the CUDA kernel's limits: one block per problem, 32-bit candidate indices
    TORCH_CHECK_VALUE(B <= int64_t(std::numeric_limits<int32_t>::max()), op, ": too many batch problems (B = ", B,
                      ") for one launch");
    TORCH_CHECK_VALUE(N < int64_t(kEliteSortPadIndex), op, ": argument 'values' has too many candidates (N = ", N, ")");
  }
  const auto opts = values.options();
  at::Tensor mean = at::empty({B, H, A}, opts), stdev = at::empty({B, H, A}, opts);
  at::Tensor elite_actions = at::empty({B, H, k, A}, opts);
  at::Tensor elite_weights = at::empty({B, k}, opts), elite_values = at::empty({B, k}, opts);
  if (B == 0) return {mean, stdev, elite_actions, elite_weights, elite_values};
  const EliteUpdateArgs args{k, temperature, min_std, max_std};
  CDRED_LAUNCHER(values.device(), launch_mppi_elite_update)(values, actions, args, mean, stdev, elite_actions,
                                                            elite_weights, elite_values);
  return {mean, stdev, elite_actions, elite_weights, elite_values};
}

at::Tensor mppi_select(const at::Tensor& elite_actions_in, const at::Tensor& elite_weights, const at::Tensor& std_in,
                       bool eval_mode, std::optional<at::Generator> generator) {
  constexpr const char* op = "cdred_fast::mppi_select";
  check_mppi_select_inputs(op, elite_actions_in, elite_weights, std_in, generator);
  const c10::OptionalDeviceGuard guard(cuda_device_of(elite_actions_in));
  const at::Tensor elite_actions = elite_actions_in.contiguous();
  const at::Tensor stdev = std_in.contiguous();
  const int64_t B = elite_actions.size(0), A = elite_actions.size(3);
  const auto opts = elite_actions.options();
  if (B == 0) return at::empty({0, A}, opts);
  // Draw 1: one elite per problem with probability w. On the CPU the weights are
  // checked first, as torch.multinomial does, so a bad row consumes no random
  // numbers; on CUDA nothing is read back on the host (capturable, see above).
  if (!cuda_path(elite_actions)) check_elite_weights_cpu(op, elite_weights);
  const at::Tensor choice = draw_elite_index(elite_weights, generator);  // [B]
  // Draw 2 (after draw 1, and only when not evaluating): eps ~ N(0, 1) of shape [B, A].
  at::Tensor out = eval_mode ? at::empty({B, A}, opts) : at::randn({B, A}, generator, opts);
  if (A == 0) return out;
  CDRED_LAUNCHER(elite_actions.device(), launch_mppi_select)(elite_actions, stdev, choice, out, eval_mode);
  return out;
}

}  // namespace cdred
