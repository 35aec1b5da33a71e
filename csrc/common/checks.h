// Input validation shared by the CPU and CUDA implementations of every op.
// Errors name the op and the argument; TORCH_CHECK_TYPE / TORCH_CHECK_VALUE map
// to Python TypeError / ValueError.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cdred {

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                               const char* layout) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' is an undefined tensor");
  TORCH_CHECK_VALUE(t.dim() == ndim, op, ": argument '", name, "' must have shape ", layout, " (", ndim,
                    "-D), got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": argument '", name,
                   "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_unit_interval(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && v <= 1.0, op, ": argument '", name, "' must be in [0, 1], got ", v);
}

inline void check_nonnegative(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v >= 0.0, op, ": argument '", name, "' must be finite and >= 0, got ", v);
}

// pred_i [N, D] for every named predictor, targets [K, N, D]; same dtype and device.
inline void check_moment_inputs(const char* op, const std::vector<std::pair<const char*, const at::Tensor*>>& preds,
                                const at::Tensor& targets, double alpha, double eps) {
  check_float_tensor(op, "targets", targets, 3, "[K, N, D]");
  const int64_t K = targets.size(0), N = targets.size(1), D = targets.size(2);
  TORCH_CHECK_VALUE(K >= 1, op, ": argument 'targets' must hold at least one target network (K >= 1), got K = ", K);
  TORCH_CHECK_VALUE(D >= 1, op, ": argument 'targets' must have D >= 1 output coordinates, got shape ",
                    targets.sizes());
  for (const auto& [name, pred] : preds) {
    check_float_tensor(op, name, *pred, 2, "[N, D]");
    TORCH_CHECK_VALUE(pred->size(0) == N && pred->size(1) == D, op, ": argument '", name, "' has shape ",
                      pred->sizes(), " but targets [K, N, D] = ", targets.sizes(), " needs [", N, ", ", D, "]");
    TORCH_CHECK_TYPE(pred->scalar_type() == targets.scalar_type(), op, ": argument '", name, "' has dtype ",
                     pred->scalar_type(), " but 'targets' has ", targets.scalar_type(), "; they must match");
    TORCH_CHECK_VALUE(pred->device() == targets.device(), op, ": argument '", name, "' is on ", pred->device(),
                      " but 'targets' is on ", targets.device(), "; they must match");
  }
  check_unit_interval(op, "alpha", alpha);
  check_nonnegative(op, "eps", eps);
}

// g: 0 = linear, 1 = exp.
inline int parse_g(const char* op, const std::string& g) {
  if (g == "linear") return 0;
  if (g == "exp") return 1;
  TORCH_CHECK_VALUE(false, op, ": argument 'g' must be \"linear\" or \"exp\", got \"", g, "\"");
  return -1;
}

// ---------------------------------------------------------------------------
// SPEC section 4 (MPPI planning). Each op takes a leading batch dimension B of
// independent planning problems.

inline void check_same_dtype_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                                    const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ", t.scalar_type(),
                   " but '", ref_name, "' has ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), " but '", ref_name,
                    "' is on ", ref.device(), "; they must match");
}

// The generator, when given, must belong to the device type of the tensors it draws for.
inline void check_generator_device(const char* op, const std::optional<at::Generator>& gen, const at::Tensor& ref) {
  if (gen.has_value() && gen->defined()) {
    TORCH_CHECK_VALUE(gen->device().type() == ref.device().type(), op, ": argument 'generator' is a ",
                      gen->device().type(), " generator but the tensors are on ", ref.device(),
                      "; pass a generator of the tensors' device type (or None)");
  }
}

// mean [B, H, A], std [B, H, A], num_samples >= 0.
inline void check_mppi_sample_inputs(const char* op, const at::Tensor& mean, const at::Tensor& std,
                                     int64_t num_samples, const std::optional<at::Generator>& gen) {
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
inline void check_temperature(const char* op, double temperature, at::ScalarType dtype) {
  const double rounded = dtype == at::kFloat ? double(static_cast<float>(temperature)) : temperature;
  const double tiny = dtype == at::kFloat ? double(std::numeric_limits<float>::min())
                                          : std::numeric_limits<double>::min();
  TORCH_CHECK_VALUE(std::isfinite(rounded) && rounded >= tiny, op,
                    ": argument 'temperature' must be finite and > 0 (at least ", tiny, " and representable in ",
                    dtype, "), got ", temperature);
}

inline void check_std_bounds(const char* op, double min_std, double max_std) {
  TORCH_CHECK_VALUE(std::isfinite(min_std) && min_std > 0.0, op,
                    ": argument 'min_std' must be finite and > 0, got ", min_std);
  TORCH_CHECK_VALUE(std::isfinite(max_std) && max_std >= min_std, op,
                    ": argument 'max_std' must be finite and >= min_std (", min_std, "), got ", max_std);
}

// values [B, N], actions [B, H, N, A], 1 <= num_elites <= N.
inline void check_mppi_elite_inputs(const char* op, const at::Tensor& values, const at::Tensor& actions,
                                    int64_t num_elites, double temperature, double min_std, double max_std) {
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
inline void check_mppi_select_inputs(const char* op, const at::Tensor& elite_actions, const at::Tensor& elite_weights,
                                     const at::Tensor& std, const std::optional<at::Generator>& gen) {
  check_float_tensor(op, "elite_actions", elite_actions, 4, "[B, H, k, A]");
  check_float_tensor(op, "elite_weights", elite_weights, 2, "[B, k]");
  check_float_tensor(op, "std", std, 3, "[B, H, A]");
  const int64_t B = elite_actions.size(0), H = elite_actions.size(1), k = elite_actions.size(2),
                A = elite_actions.size(3);
  TORCH_CHECK_VALUE(H >= 1, op, ": argument 'elite_actions' needs a horizon H >= 1 (the first action is taken), got shape ",
                    elite_actions.sizes());
  TORCH_CHECK_VALUE(k >= 1, op, ": argument 'elite_actions' needs at least one elite (k >= 1), got shape ",
                    elite_actions.sizes());
  TORCH_CHECK_VALUE(elite_weights.size(0) == B && elite_weights.size(1) == k, op, ": argument 'elite_weights' has shape ",
                    elite_weights.sizes(), " but 'elite_actions' [B, H, k, A] = ", elite_actions.sizes(), " needs [",
                    B, ", ", k, "]");
  TORCH_CHECK_VALUE(std.size(0) == B && std.size(1) == H && std.size(2) == A, op, ": argument 'std' has shape ",
                    std.sizes(), " but 'elite_actions' [B, H, k, A] = ", elite_actions.sizes(), " needs [", B, ", ", H,
                    ", ", A, "]");
  check_same_dtype_device(op, "elite_weights", elite_weights, "elite_actions", elite_actions);
  check_same_dtype_device(op, "std", std, "elite_actions", elite_actions);
  check_generator_device(op, gen, elite_actions);
}

}  // namespace cdred
