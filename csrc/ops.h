// The host front of every cdred_fast op, one per op family in
// csrc/<family>/front.cpp: argument checks, contiguous inputs, the device
// guard, output allocation and (MPPI) the random draws, then the family's CPU
// or CUDA launcher. registration.cpp registers each of them for the CPU and,
// in CUDA builds, the CUDA dispatch key; the signatures follow the schemas there.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace cdred {

// reward/front.cpp (SPEC section 2, Eq. 7-8)
at::Tensor moment_bonus(const at::Tensor& pred, const at::Tensor& targets, double alpha, double eps);
at::Tensor cdred_reward(const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, const at::Tensor& targets,
                        double alpha, double zeta, double sigma, c10::string_view g, double eps);

// rnd/front.cpp (SPEC section 2: the RND ensemble forward)
at::Tensor ensemble_mlp(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList ln_weights,
                        at::TensorList ln_biases, double ln_eps, const std::optional<at::Tensor>& x_shared);
at::Tensor ensemble_reward(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                           at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                           const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, double alpha, double zeta,
                           double sigma, c10::string_view g, double eps, const std::optional<at::Tensor>& x_shared);

// block/front.cpp (SPEC section 0: the Block's LayerNorm -> Mish tail)
std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish(const at::Tensor& x, const at::Tensor& gamma,
                                                              const at::Tensor& beta, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                                       const at::Tensor& mean, const at::Tensor& rstd,
                                                                       const at::Tensor& gamma, const at::Tensor& beta);

// mppi/front.cpp (SPEC section 4)
at::Tensor mppi_sample(const at::Tensor& mean, const at::Tensor& std, int64_t num_samples,
                       std::optional<at::Generator> generator);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mppi_elite_update(
    const at::Tensor& values, const at::Tensor& actions, int64_t num_elites, double temperature, double min_std,
    double max_std);
at::Tensor mppi_select(const at::Tensor& elite_actions, const at::Tensor& elite_weights, const at::Tensor& std,
                       bool eval_mode, std::optional<at::Generator> generator);

}  // namespace cdred
