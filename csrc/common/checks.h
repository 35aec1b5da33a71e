// Argument checks shared by the op fronts (csrc/<family>/front.cpp); each
// family's own shape rules live in its front. Errors name the op and the
// argument; TORCH_CHECK_TYPE / TORCH_CHECK_VALUE map to Python TypeError /
// ValueError.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>

namespace cdred {

// t: defined, ndim dimensions (`layout` names them in the message), float32 or float64.
inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                               const char* layout) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' is an undefined tensor");
  TORCH_CHECK_VALUE(t.dim() == ndim, op, ": argument '", name, "' must have shape ", layout, " (", ndim,
                    "-D), got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": argument '", name,
                   "' must be float32 or float64, got ", t.scalar_type());
}

// t has the dtype and the device of the argument `ref_name`.
inline void check_same_dtype_device(const char* op, const std::string& name, const at::Tensor& t, const char* ref_name,
                                    const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ", t.scalar_type(),
                   " but '", ref_name, "' has ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), " but '", ref_name,
                    "' is on ", ref.device(), "; they must match");
}

// t: defined, float32 or float64, with the dtype and the device of `ref_name` (any shape).
inline void check_float_like(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& ref,
                             const char* ref_name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": argument '", name,
                   "' must be float32 or float64, got ", t.scalar_type());
  check_same_dtype_device(op, name, t, ref_name, ref);
}

inline void check_unit_interval(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && v <= 1.0, op, ": argument '", name, "' must be in [0, 1], got ", v);
}

inline void check_nonnegative(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v >= 0.0, op, ": argument '", name, "' must be finite and >= 0, got ", v);
}

// The variance guard of the reward ops (SPEC Eq. 8): eps = 0 would disable it.
inline void check_positive_eps(const char* op, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v > 0.0, op,
                    ": argument 'eps' (the variance guard) must be finite and > 0 (eps = 0 disables the guard), got ",
                    v);
}

// The reward's g (SPEC Eq. 7): 0 = linear, 1 = exp.
inline int parse_g(const char* op, const std::string& g) {
  if (g == "linear") return 0;
  if (g == "exp") return 1;
  TORCH_CHECK_VALUE(false, op, ": argument 'g' must be \"linear\" or \"exp\", got \"", g, "\"");
  return -1;
}

// The generator, when given, must belong to the device type of the tensors it draws for.
inline void check_generator_device(const char* op, const std::optional<at::Generator>& gen, const at::Tensor& ref) {
  if (gen.has_value() && gen->defined()) {
    TORCH_CHECK_VALUE(gen->device().type() == ref.device().type(), op, ": argument 'generator' is a ",
                      gen->device().type(), " generator but the tensors are on ", ref.device(),
                      "; pass a generator of the tensors' device type (or None)");
  }
}

}  // namespace cdred
