// Input validation shared by the CPU and CUDA implementations of every op.
// Errors name the op and the argument; TORCH_CHECK_TYPE / TORCH_CHECK_VALUE map
// to Python TypeError / ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
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

}  // namespace cdred
