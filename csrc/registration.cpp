// Every op schema of the cdred_fast namespace, defined once, and every
// registration: each op's host front (ops.h, csrc/<family>/front.cpp) under the
// CPU key and, in CUDA builds, the CUDA key; the MPPI ops' Autograd kernel.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "ops.h"

#ifndef CDRED_TORCH_VERSION
#define CDRED_TORCH_VERSION "unknown"
#endif
#ifndef CDRED_CUDA_VERSION
#define CDRED_CUDA_VERSION "None"
#endif
#ifndef CDRED_NVCC_VERSION
#define CDRED_NVCC_VERSION ""
#endif
#ifndef CDRED_CUDA_ARCHS
#define CDRED_CUDA_ARCHS ""
#endif

namespace cdred {
namespace {

// JSON with what this binary was compiled with; read by cdred_fast.build_info().
std::string build_info() {
#ifdef CDRED_WITH_CUDA
  const bool with_cuda = true;
#else
  const bool with_cuda = false;
#endif
  std::string archs = "[";
  std::string list = CDRED_CUDA_ARCHS;
  size_t start = 0;
  while (with_cuda && start < list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    if (archs.size() > 1) archs += ", ";
    archs += "\"" + list.substr(start, comma - start) + "\"";
    start = comma + 1;
  }
  archs += "]";
  const std::string cuda_version = with_cuda ? std::string("\"") + CDRED_CUDA_VERSION + "\"" : "null";
  const std::string nvcc_version = with_cuda ? std::string("\"") + CDRED_NVCC_VERSION + "\"" : "null";
#ifdef CDRED_EMULATE_CUDA
  const char* emulation = "true";  // tools/cuda_emu: every op runs its CUDA kernels on the CPU
#else
  const char* emulation = "false";
#endif
  return std::string("{\"torch_version\": \"") + CDRED_TORCH_VERSION + "\", \"cpu_kernels\": true" +
         ", \"cuda_kernels\": " + (with_cuda ? "true" : "false") + ", \"cuda_arch_list\": " + archs +
         ", \"cuda_version\": " + cuda_version + ", \"nvcc_version\": " + nvcc_version +
         ", \"cuda_emulation\": " + emulation + "}";
}

}  // namespace

TORCH_LIBRARY(cdred_fast, m) {
  // SPEC section 2: bias-corrected moment bonus (Eq. 8) and CDRED reward (Eq. 7).
  m.def("moment_bonus(Tensor pred, Tensor targets, float alpha, float eps) -> Tensor");
  m.def(
      "cdred_reward(Tensor pred_expert, Tensor pred_behavioral, Tensor targets, float alpha, float zeta, "
      "float sigma, str g, float eps) -> Tensor");
  // SPEC section 4: MPPI
  // Sampling ops are tagged nondeterministic_seeded so that compilers never
  // deduplicate or reorder two calls (each call advances the generator).
  m.def("mppi_sample(Tensor mean, Tensor std, int num_samples, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def(
      "mppi_elite_update(Tensor values, Tensor actions, int num_elites, float temperature, float min_std, "
      "float max_std) -> (Tensor mean, Tensor std, Tensor elite_actions, Tensor elite_weights, Tensor elite_values)");
  m.def(
      "mppi_select(Tensor elite_actions, Tensor elite_weights, Tensor std, bool eval_mode, "
      "Generator? generator=None) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  // SPEC section 2: RND ensemble forward
  // E MLPs of one architecture (Blocks Linear -> LayerNorm -> Mish, a last
  // plain Linear) on rows x [N, I] shared by all members or x [E, N, I] per
  // member; x_shared [I_s], when given, is the first I_s input features of every
  // row. Returns [E, N, out].
  m.def(
      "ensemble_mlp(Tensor x, Tensor[] weights, Tensor[] biases, Tensor[] ln_weights, Tensor[] ln_biases, "
      "float ln_eps, Tensor? x_shared=None) -> Tensor");
  // The planning reward at the end of the targets' forward: cdred_reward(
  // pred_expert, pred_behavioral, ensemble_mlp(x, <targets>)) without the
  // [K, N, D] target outputs (the last Linear and the reward run per tile of rows).
  m.def(
      "ensemble_reward(Tensor x, Tensor[] weights, Tensor[] biases, Tensor[] ln_weights, Tensor[] ln_biases, "
      "float ln_eps, Tensor pred_expert, Tensor pred_behavioral, float alpha, float zeta, float sigma, str g, "
      "float eps, Tensor? x_shared=None) -> Tensor");
  // SPEC section 0: the Block's LayerNorm -> Mish tail as a trainable op (the
  // world model's Blocks, and the predictors' gradients): x [E, M, D] with a
  // per-member affine gamma, beta [E, D]; the forward also returns the row
  // statistics mean, rstd [E, M] that the backward reuses.
  m.def("layernorm_mish(Tensor x, Tensor gamma, Tensor beta, float eps) -> (Tensor y, Tensor mean, Tensor rstd)");
  m.def(
      "layernorm_mish_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor gamma, Tensor beta) "
      "-> (Tensor grad_x, Tensor grad_gamma, Tensor grad_beta)");
  m.def("_build_info() -> str", &build_info);
}

namespace {

// The fronts choose the CPU or the CUDA launcher from the tensors' device, so
// both dispatch keys register the same functions.
void register_kernels(torch::Library& m) {
  m.impl("moment_bonus", &moment_bonus);
  m.impl("cdred_reward", &cdred_reward);
  m.impl("ensemble_mlp", &ensemble_mlp);
  m.impl("ensemble_reward", &ensemble_reward);
  m.impl("layernorm_mish", &layernorm_mish);
  m.impl("layernorm_mish_backward", &layernorm_mish_backward);
  m.impl("mppi_sample", &mppi_sample);
  m.impl("mppi_elite_update", &mppi_elite_update);
  m.impl("mppi_select", &mppi_select);
}

// Planning is no-grad: the MPPI ops are non-differentiable. Their Autograd
// kernel (for every backend) re-invokes the op below autograd, so outputs never
// require grad and a backward through them fails loudly ("does not require
// grad") instead of returning a wrong gradient. In C++ rather than a Python
// autograd.Function, it costs no Python round trip per call.
void call_below_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  op.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CPU, m) {
  register_kernels(m);
}

#ifdef CDRED_WITH_CUDA
TORCH_LIBRARY_IMPL(cdred_fast, CUDA, m) {
  register_kernels(m);
}
#endif

TORCH_LIBRARY_IMPL(cdred_fast, Autograd, m) {
  m.impl("mppi_sample", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
  m.impl("mppi_elite_update", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
  m.impl("mppi_select", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
}

}  // namespace cdred

// cdred_fast._C is imported only for its side effect: the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "cdred_fast op library (ops live in torch.ops.cdred_fast)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
