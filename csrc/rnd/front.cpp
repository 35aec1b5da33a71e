// Host front of the rnd ops (SPEC section 2: the K random targets and the two
// predictors; SPEC section 0: Block = Linear -> LayerNorm -> Mish):
// ensemble_mlp and ensemble_reward. Validates the
// arguments, sets the device, and runs the ensemble forward: its GEMMs are ATen
// calls (MKL/oneDNN on the CPU, cuBLAS on a GPU) scheduled below, and after
// every hidden Linear the shared LayerNorm -> Mish row kernel of the tensors'
// device (common/ln_mish.h) is the fused epilogue. Registered for CPU and CUDA
// in registration.cpp. The pure-PyTorch twin is
// cdred_fast/reference.py:ensemble_mlp.
//
// Both ops also take bfloat16 networks (no gradient: the planning precision of
// docs/kernels.md): the GEMMs run in bfloat16 with float32 accumulation (oneDNN
// on the CPU, cuBLAS on a GPU), the epilogue in float32 rounded once per value,
// and ensemble_reward widens the outputs and returns the reward in float32.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/addmv.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/device.h"
#include "common/ln_mish.h"
#include "ops.h"

namespace cdred {
namespace {

using LnMishLauncher = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, double, const at::Tensor&, const at::Tensor&);

// Tiles of ensemble_reward's last-layer outputs: on the CPU small enough to stay
// in a core's L2 cache between the GEMM that writes them and the reward that
// reads them; on a GPU one tile for any planning batch (the bound only caps the
// buffer for very large N).
constexpr int64_t kCpuRewardTileBytes = 512 * 1024;
constexpr int64_t kCudaRewardTileBytes = 64LL * 1024 * 1024;

// =============================================================================
// Validation
// =============================================================================

struct EnsembleShape {
  int64_t E = 0;              // members
  int64_t N = 0;              // rows
  int64_t layers = 0;         // Linears per member
  int64_t in0 = 0;            // input features of the first layer (I = I_s + I_x)
  int64_t shared = 0;         // I_s (0 without x_shared)
  bool per_member_x = false;  // x is [E, N, I_x]
  std::vector<int64_t> out;   // out_l per layer
};

// A parameter (or predictor output) of the ensemble ops: the dtype and the device of x, which
// may be bfloat16 (the forward-only planning form) besides float32 / float64.
void check_like_x(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& x) {
  if (x.scalar_type() == at::kBFloat16) {
    TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' is an undefined tensor");
    check_same_dtype_device(op, name, t, "x", x);
  } else {
    check_float_like(op, name, t, x, "x");
  }
}

std::string indexed(const char* name, size_t l) {
  return std::string(name) + "[" + std::to_string(l) + "]";
}

EnsembleShape check_ensemble_mlp_inputs(const char* op, const at::Tensor& x, at::TensorList weights,
                                        at::TensorList biases, at::TensorList ln_weights, at::TensorList ln_biases,
                                        double ln_eps, const std::optional<at::Tensor>& x_shared) {
  EnsembleShape s;
  TORCH_CHECK_VALUE(x.defined(), op, ": argument 'x' is an undefined tensor");
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, op,
                    ": argument 'x' must have shape [N, I] (2-D, rows shared by every member) or [E, N, I] "
                    "(3-D, rows per member), got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
                   op, ": argument 'x' must be float32, float64 or bfloat16 (the no-gradient planning form), got ",
                   x.scalar_type());
  const size_t L = weights.size();
  TORCH_CHECK_VALUE(L >= 1, op, ": argument 'weights' must hold at least one layer, got an empty list");
  TORCH_CHECK_VALUE(biases.size() == L, op, ": argument 'biases' must hold one tensor per layer (", L, "), got ",
                    biases.size());
  TORCH_CHECK_VALUE(ln_weights.size() == L - 1, op, ": argument 'ln_weights' must hold one tensor per hidden layer (",
                    L - 1, " = len(weights) - 1), got ", ln_weights.size());
  TORCH_CHECK_VALUE(ln_biases.size() == L - 1, op, ": argument 'ln_biases' must hold one tensor per hidden layer (",
                    L - 1, " = len(weights) - 1), got ", ln_biases.size());
  TORCH_CHECK_VALUE(std::isfinite(ln_eps) && ln_eps >= 0.0, op, ": argument 'ln_eps' must be finite and >= 0, got ",
                    ln_eps);
  s.layers = static_cast<int64_t>(L);
  int64_t prev_out = -1;
  for (size_t l = 0; l < L; ++l) {
    const std::string wn = indexed("weights", l);
    const at::Tensor& w = weights[l];
    check_like_x(op, wn, w, x);
    TORCH_CHECK_VALUE(w.dim() == 3, op, ": argument '", wn, "' must have shape [E, out, in] (3-D), got shape ",
                      w.sizes());
    if (l == 0) {
      s.E = w.size(0);
      TORCH_CHECK_VALUE(s.E >= 1, op, ": argument 'weights[0]' must hold at least one member (E >= 1), got shape ",
                        w.sizes());
      s.in0 = w.size(2);
    } else {
      TORCH_CHECK_VALUE(w.size(0) == s.E, op, ": argument '", wn, "' has E = ", w.size(0),
                        " members but 'weights[0]' has ", s.E, "; every layer must have the same E");
      TORCH_CHECK_VALUE(w.size(2) == prev_out, op, ": argument '", wn, "' has shape ", w.sizes(), " but layer ", l - 1,
                        " outputs ", prev_out, " features; expected [", s.E, ", out, ", prev_out, "]");
    }
    const int64_t out = w.size(1);
    TORCH_CHECK_VALUE(out >= 1 && w.size(2) >= 1, op, ": argument '", wn,
                      "' must have at least one output and one input feature, got shape ", w.sizes());
    s.out.push_back(out);
    const std::string bn = indexed("biases", l);
    check_like_x(op, bn, biases[l], x);
    TORCH_CHECK_VALUE(biases[l].dim() == 2 && biases[l].size(0) == s.E && biases[l].size(1) == out, op, ": argument '",
                      bn, "' must have shape [E, out] = [", s.E, ", ", out, "], got shape ", biases[l].sizes());
    if (l + 1 < L) {
      for (const auto& [name, list] : {std::pair<const char*, at::TensorList>{"ln_weights", ln_weights},
                                       std::pair<const char*, at::TensorList>{"ln_biases", ln_biases}}) {
        const std::string n = indexed(name, l);
        check_like_x(op, n, list[l], x);
        TORCH_CHECK_VALUE(list[l].dim() == 2 && list[l].size(0) == s.E && list[l].size(1) == out, op, ": argument '", n,
                          "' must have shape [E, out] = [", s.E, ", ", out, "], got shape ", list[l].sizes());
      }
    }
    prev_out = out;
  }
  if (x_shared.has_value() && x_shared->defined()) {
    const at::Tensor& z = *x_shared;
    check_like_x(op, "x_shared", z, x);
    TORCH_CHECK_VALUE(z.dim() == 1, op, ": argument 'x_shared' must have shape [I_s] (1-D), got shape ", z.sizes());
    s.shared = z.size(0);
    TORCH_CHECK_VALUE(s.shared < s.in0, op, ": argument 'x_shared' has ", s.shared,
                      " features but the first layer takes I = ", s.in0,
                      " in all; x_shared must be shorter than I (x holds the other I - I_s >= 1 features)");
  }
  const int64_t ix = x.size(x.dim() - 1);
  TORCH_CHECK_VALUE(ix == s.in0 - s.shared, op, ": argument 'x' has ", ix,
                    " features per row but 'weights[0]' takes I = ", s.in0,
                    s.shared ? " of which 'x_shared' gives " + std::to_string(s.shared) : std::string(), "; expected ",
                    s.in0 - s.shared);
  s.per_member_x = x.dim() == 3;
  if (s.per_member_x) {
    TORCH_CHECK_VALUE(x.size(0) == s.E, op, ": argument 'x' has shape ", x.sizes(),
                      " (per-member rows [E, N, I]) but the weights have E = ", s.E, " members");
  }
  s.N = x.size(x.dim() - 2);
  return s;
}

void check_ensemble_reward_preds(const char* op, const EnsembleShape& s, const at::Tensor& x,
                                 const at::Tensor& pred_expert, const at::Tensor& pred_behavioral) {
  const int64_t D = s.out[s.layers - 1];
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"pred_expert", &pred_expert},
                                std::pair<const char*, const at::Tensor*>{"pred_behavioral", &pred_behavioral}}) {
    check_like_x(op, name, *t, x);
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == s.N && t->size(1) == D, op, ": argument '", name,
                      "' must have shape [N, D] = [", s.N, ", ", D,
                      "] (N rows of x, D outputs of the targets' "
                      "last layer), got shape ",
                      t->sizes());
  }
}

// =============================================================================
// GEMM schedule (ATen ops run on the tensors' device)
// =============================================================================
//
// Hidden activations live in [E, N, out] buffers (member-major), so that every
// Linear after the first is ONE batched GEMM over the members (at::bmm_out; on
// the CPU one batched call costs much less than E separate multi-threaded
// GEMMs). For x [N, I] (the same rows for every member) the first layer is ONE
// GEMM of x against the weights viewed as [E*out, I], into an [N, E, out]
// scratch; its epilogue reads it there and writes the [E, N, out] layout (no
// extra pass). For x [E, N, I] the first layer is a bmm like the others. The GEMMs of hidden layers have no
// bias term; the epilogue adds the bias and does LayerNorm + affine + Mish on
// every (member, row) segment. The last Linear adds its bias in the GEMM
// (baddbmm) and writes the [E, N, out] result directly.
//
// x_shared (the planning case x = [z ; a] with one z for all rows): the z-part
// of the first layer, W[:, :, :I_s] @ z, is one matrix-vector product per call
// folded into the bias (b_eff = b + W_z z); the GEMM then only contracts the
// I - I_s row features against the strided view W[:, :, I_s:].
//
// The epilogue is the shared LayerNorm -> Mish row kernel (common/ln_mish.h)
// of the tensors' device, with the bias and without the row statistics: src
// [E, N, D] (any strides, unit stride along D) and dst [E, N, D] contiguous,
// possibly the same memory; dst <- Mish(LayerNorm(src + bias) * gamma + beta).
// Scratch: two ping-pong buffers of N * E * max(hidden) values.
//
// ensemble_mlp_layers runs every layer and hands the last, plain Linear to
// `last(in, bias, wt, rows_2d)`: in = its input ([E, N, in], or x [N, I] itself
// when rows_2d: a one-layer network on shared rows), bias [E, out], wt
// [E, in, out] (the transposed weights). ensemble_mlp writes it out;
// ensemble_reward consumes it tile by tile.
template <typename Last>
void ensemble_mlp_layers(const EnsembleShape& s, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                         at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                         const std::optional<at::Tensor>& x_shared, LnMishLauncher ln_mish, Last&& last) {
  const int64_t E = s.E, N = s.N, L = s.layers;
  const bool rows_shared = !s.per_member_x;

  // First layer: effective bias and the row-feature part of the weights.
  const int64_t out0 = s.out[0], ix = s.in0 - s.shared;
  const at::Tensor w0 = weights[0].contiguous();  // [E, out0, I]
  at::Tensor bias0 = biases[0].contiguous().view({E * out0});
  at::Tensor w0x = w0;
  if (s.shared > 0) {
    const at::Tensor z = x_shared->contiguous();
    bias0 = at::addmv(bias0, w0.view({E * out0, s.in0}).narrow(1, 0, s.shared), z);  // b + W_z z, once per call
    w0x = w0.narrow(2, s.shared, ix);                                                // [E, out0, I_x], row stride I
  }

  // Ping-pong buffers for the hidden activations (and the first layer's scratch).
  int64_t max_hidden = 0;
  for (int64_t l = 0; l + 1 < L; ++l) max_hidden = std::max(max_hidden, s.out[l]);
  at::Tensor buf[2];
  if (L >= 2) buf[0] = at::empty({N * E * max_hidden}, x.options());
  if (L >= 3 || (L == 2 && rows_shared)) buf[1] = at::empty({N * E * max_hidden}, x.options());

  const at::Tensor no_stats;  // the epilogue keeps no row statistics
  at::Tensor h;               // [E, N, in_l]: the input of layer l
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = s.out[l];
    const at::Tensor bias = l == 0 ? bias0.view({E, out0}) : biases[l].contiguous();  // [E, out]
    const at::Tensor wt = (l == 0 ? w0x : weights[l].contiguous()).transpose(1, 2);   // [E, in, out]
    if (l == L - 1) {                                                                 // the last, plain Linear
      last(l == 0 ? x : h, bias, wt, l == 0 && rows_shared);
      break;
    }
    at::Tensor dst = buf[l % 2].narrow(0, 0, E * N * out).view({E, N, out});
    at::Tensor src = dst;
    if (l == 0 && rows_shared) {
      // ONE GEMM for all members: [N, I_x] @ [I_x, E*out0], into the other buffer.
      at::Tensor scratch = buf[1].narrow(0, 0, N * E * out0).view({N, E * out0});
      at::mm_out(scratch, x, w0x.reshape({E * out0, ix}).t());
      src = scratch.view({N, E, out0}).permute({1, 0, 2});  // [E, N, out0] view, row stride E*out0
    } else {
      at::bmm_out(dst, l == 0 ? x : h, wt);
    }
    ln_mish(src, dst, bias, ln_weights[l].contiguous(), ln_biases[l].contiguous(), ln_eps, no_stats, no_stats);
    h = dst;
  }
}

// The last Linear into dst [E, n, out] for rows [r0, r0 + n) of its input (see ensemble_mlp_layers).
void last_linear_rows(at::Tensor dst, const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt, bool rows_2d,
                      int64_t r0, int64_t n) {
  if (rows_2d) {
    const at::Tensor rows = in.narrow(0, r0, n);
    for (int64_t e = 0; e < dst.size(0); ++e) {
      at::Tensor d = dst.select(0, e);
      at::addmm_out(d, bias.select(0, e), rows, wt.select(0, e));
    }
  } else {
    at::baddbmm_out(dst, bias.unsqueeze(1), in.narrow(1, r0, n), wt);
  }
}

}  // namespace

at::Tensor ensemble_mlp(const at::Tensor& x_in, at::TensorList weights, at::TensorList biases,
                        at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                        const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_mlp";
  const EnsembleShape s = check_ensemble_mlp_inputs(op, x_in, weights, biases, ln_weights, ln_biases, ln_eps, x_shared);
  const c10::OptionalDeviceGuard guard(cuda_device_of(x_in));
  // The inner ATen calls (out= GEMMs) must not record autograd history; the
  // op's gradient is registered in cdred_fast/ops/rnd.py.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.contiguous();
  at::Tensor result = at::empty({s.E, s.N, s.out[s.layers - 1]}, x.options());
  if (s.N == 0) return result;
  ensemble_mlp_layers(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared,
                      CDRED_LAUNCHER(x.device(), launch_ln_mish),
                      [&](const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt, bool rows_2d) {
                        last_linear_rows(result, in, bias, wt, rows_2d, 0, s.N);
                      });
  return result;
}

// ensemble_reward(x, <K targets as for ensemble_mlp>, f_phi(x), f_psi(x), ...)
// = cdred_reward(f_phi(x), f_psi(x), ensemble_mlp(x, <targets>), ...), without
// the [K, N, D] target outputs: the hidden layers run as in ensemble_mlp, then
// the last Linear and the reward (SPEC Eq. 7-8: the cdred_reward front, which
// runs the device's reward kernel) run on tiles of rows whose [K, rows, D]
// outputs stay within the device's tile size (one buffer is reused for every
// tile).
at::Tensor ensemble_reward(const at::Tensor& x_in, at::TensorList weights, at::TensorList biases,
                           at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                           const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, double alpha, double zeta,
                           double sigma, c10::string_view g, double eps, const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_reward";
  const EnsembleShape s = check_ensemble_mlp_inputs(op, x_in, weights, biases, ln_weights, ln_biases, ln_eps, x_shared);
  check_ensemble_reward_preds(op, s, x_in, pred_expert, pred_behavioral);
  check_unit_interval(op, "alpha", alpha);
  check_unit_interval(op, "zeta", zeta);
  check_nonnegative(op, "sigma", sigma);
  check_positive_eps(op, eps);
  parse_g(op, std::string(g));
  const c10::OptionalDeviceGuard guard(cuda_device_of(x_in));
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  // bfloat16 networks (planning): the predictor outputs and each tile of target
  // outputs are widened to float32, and the reward is computed and returned in float32.
  const bool bf16 = x_in.scalar_type() == at::kBFloat16;
  const auto widen = [bf16](const at::Tensor& t) { return bf16 ? t.to(at::kFloat).contiguous() : t.contiguous(); };
  const at::Tensor x = x_in.contiguous(), pe = widen(pred_expert), pb = widen(pred_behavioral);
  const int64_t K = s.E, N = s.N, D = s.out[s.layers - 1];
  at::Tensor out = at::empty({N}, pe.options());
  if (N == 0) return out;
  const int64_t tile_bytes = cuda_path(x) ? kCudaRewardTileBytes : kCpuRewardTileBytes;
  const int64_t per_row = K * D * static_cast<int64_t>(x.element_size());
  const int64_t T = std::min<int64_t>(N, std::max<int64_t>(1, tile_bytes / per_row));
  at::Tensor buffer = at::empty({K * T * D}, x.options());
  ensemble_mlp_layers(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared,
                      CDRED_LAUNCHER(x.device(), launch_ln_mish),
                      [&](const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt, bool rows_2d) {
                        for (int64_t r0 = 0; r0 < N; r0 += T) {
                          const int64_t n = std::min(T, N - r0);
                          at::Tensor targets = buffer.narrow(0, 0, K * n * D).view({K, n, D});  // contiguous
                          last_linear_rows(targets, in, bias, wt, rows_2d, r0, n);
                          out.narrow(0, r0, n).copy_(cdred_reward(pe.narrow(0, r0, n), pb.narrow(0, r0, n),
                                                                  widen(targets), alpha, zeta, sigma, g, eps));
                        }
                      });
  return out;
}

}  // namespace cdred
