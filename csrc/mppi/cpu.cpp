// CPU kernels of the MPPI planning ops (SPEC section 4).
//
// mppi_sample / mppi_select: the random draws are made by ATen itself with the
// caller's generator, in the reference's shapes and order (at::randn; for the
// elite, the calls torch.multinomial(w, 1) makes, see mppi/elite_draw.h), so
// they are the reference's draws bit for bit; the kernel then applies one fused
// pass (mul-add-clamp) in place on the noise buffer.
// These loops are compiled without target clones, i.e. without FMA, so the
// arithmetic rounds exactly as the reference's separate multiply and add.
//
// mppi_elite_update: per batch problem, a partial selection (nth_element +
// sort of the k best, O(N + k log k)) under a strict total order (value
// descending, candidate index ascending), the softmax weights, then one pass
// over the (h, a) pairs that gathers the elite actions and accumulates the
// weighted mean, and a second for the weighted variance. Batches are split
// across threads; when there are few of them, the (h, a) pairs are.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "mppi/elite_draw.h"
#include "mppi/mppi_math.h"

namespace cdred {
namespace {

// ----------------------------------------------------------------------------- mppi_sample
// Rows [begin, end) of x viewed as [B*H*M, A]: x <- clamp(mean + std * x, -1, 1),
// where the M rows of one (b, h) share mean[b, h] and std[b, h].
template <typename scalar_t>
void sample_rows(const scalar_t* mean, const scalar_t* stdev, scalar_t* x, int64_t M, int64_t A, int64_t begin,
                 int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* m = mean + (row / M) * A;
    const scalar_t* s = stdev + (row / M) * A;
    scalar_t* xr = x + row * A;
#pragma omp simd
    for (int64_t a = 0; a < A; ++a) xr[a] = clamp_keep_nan<scalar_t>(mul_add_rounded(m[a], s[a], xr[a]), -1, 1);
  }
}

at::Tensor mppi_sample_cpu(const at::Tensor& mean_in, const at::Tensor& std_in, int64_t num_samples,
                           std::optional<at::Generator> generator) {
  constexpr const char* op = "cdred_fast::mppi_sample";
  check_mppi_sample_inputs(op, mean_in, std_in, num_samples, generator);
  TORCH_CHECK_VALUE(mean_in.device().is_cpu(), op, ": CPU kernel called with tensors on ", mean_in.device());
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor stdev = std_in.contiguous();
  const int64_t B = mean.size(0), H = mean.size(1), A = mean.size(2), M = num_samples;
  // eps ~ N(0, 1) of shape [B, H, M, A]: the same call, hence the same numbers, as the reference.
  at::Tensor out = at::randn({B, H, M, A}, generator, mean.options());
  if (out.numel() == 0) return out;
  // A memory-bound pass: only worth more threads beyond ~256k elements.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / A);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "cdred_fast_mppi_sample_cpu", [&] {
    const scalar_t* mu = mean.data_ptr<scalar_t>();
    const scalar_t* sd = stdev.data_ptr<scalar_t>();
    scalar_t* x = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H * M, grain, [&](int64_t begin, int64_t end) { sample_rows(mu, sd, x, M, A, begin, end); });
  });
  return out;
}

// ----------------------------------------------------------------------------- mppi_elite_update
template <typename scalar_t>
struct Candidate {
  scalar_t value;  // NaN already replaced by 0
  int64_t index;
};

struct EliteParams {
  int64_t H, N, A, k;
  double temperature, min_std, max_std;
};

// Elites of one batch problem b: writes elite_values[k], elite_weights[k] and
// elite_index[k] (best first). `cand` is scratch of length N.
template <typename scalar_t>
void select_elites(const scalar_t* values, const EliteParams& p, std::vector<Candidate<scalar_t>>& cand,
                   int64_t* elite_index, scalar_t* elite_values, scalar_t* elite_weights) {
  const int64_t N = p.N, k = p.k;
  for (int64_t n = 0; n < N; ++n) cand[n] = {nan_to_zero(values[n]), n};
  // A strict total order, so the k best and their order are unique (= stable sort).
  const auto better = [](const Candidate<scalar_t>& x, const Candidate<scalar_t>& y) {
    return ranks_before(x.value, x.index, y.value, y.index);
  };
  if (k < N) std::nth_element(cand.begin(), cand.begin() + k, cand.end(), better);
  std::sort(cand.begin(), cand.begin() + k, better);
  // w = softmax(tau * (G_elite - max G_elite)); the best elite is the maximum.
  const scalar_t vmax = cand[0].value;
  const scalar_t tau = static_cast<scalar_t>(p.temperature);
  scalar_t sum_e = 0;
  for (int64_t j = 0; j < k; ++j) {
    elite_index[j] = cand[j].index;
    elite_values[j] = cand[j].value;
    const scalar_t e = std::exp(elite_logit(cand[j].value, vmax, tau));
    elite_weights[j] = e;
    sum_e += e;
  }
  for (int64_t j = 0; j < k; ++j) elite_weights[j] /= sum_e;
}

// Gather + weighted mean + weighted std for the flat (h, a) pairs [begin, end)
// of batch problem b. Pointers are already offset to batch b. Pairs of one h
// with consecutive a are contiguous, so the inner loops run over a (vectorised).
// `acc` is scratch of length 2 * A.
template <typename scalar_t>
void moments_pairs(const scalar_t* actions, const int64_t* elite_index, const scalar_t* w, scalar_t sum_w,
                   const EliteParams& p, int64_t begin, int64_t end, scalar_t* elite_actions, scalar_t* mean_out,
                   scalar_t* std_out, scalar_t* acc) {
  const int64_t N = p.N, A = p.A, k = p.k;
  const scalar_t lo = static_cast<scalar_t>(p.min_std), hi = static_cast<scalar_t>(p.max_std);
  for (int64_t s = begin; s < end;) {
    const int64_t h = s / A, a0 = s % A;
    const int64_t len = std::min(A - a0, end - s);
    scalar_t* sum = acc;
    scalar_t* sq = acc + A;
    for (int64_t a = 0; a < len; ++a) sum[a] = sq[a] = 0;
    // Pass 1: copy the elite actions out and accumulate sum_j w_j a_j.
    for (int64_t j = 0; j < k; ++j) {
      const scalar_t* src = actions + (h * N + elite_index[j]) * A + a0;
      scalar_t* dst = elite_actions + (h * k + j) * A + a0;
      const scalar_t wj = w[j];
#pragma omp simd
      for (int64_t a = 0; a < len; ++a) {
        dst[a] = src[a];
        sum[a] += wj * src[a];
      }
    }
    scalar_t* mu = mean_out + h * A + a0;
#pragma omp simd
    for (int64_t a = 0; a < len; ++a) mu[a] = sum[a] / sum_w;
    // Pass 2: sum_j w_j (a_j - mean)^2 over the gathered copy.
    for (int64_t j = 0; j < k; ++j) {
      const scalar_t* x = elite_actions + (h * k + j) * A + a0;
      const scalar_t wj = w[j];
#pragma omp simd
      for (int64_t a = 0; a < len; ++a) {
        const scalar_t d = x[a] - mu[a];
        sq[a] += wj * (d * d);
      }
    }
    scalar_t* sd = std_out + h * A + a0;
#pragma omp simd
    for (int64_t a = 0; a < len; ++a) sd[a] = clamp_keep_nan<scalar_t>(std::sqrt(sq[a] / sum_w), lo, hi);
    s += len;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mppi_elite_update_cpu(
    const at::Tensor& values_in, const at::Tensor& actions_in, int64_t num_elites, double temperature, double min_std,
    double max_std) {
  constexpr const char* op = "cdred_fast::mppi_elite_update";
  check_mppi_elite_inputs(op, values_in, actions_in, num_elites, temperature, min_std, max_std);
  TORCH_CHECK_VALUE(values_in.device().is_cpu(), op, ": CPU kernel called with tensors on ", values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor actions = actions_in.contiguous();
  const int64_t B = actions.size(0), H = actions.size(1), N = actions.size(2), A = actions.size(3);
  const int64_t k = num_elites;
  const EliteParams p{H, N, A, k, temperature, min_std, max_std};
  const auto opts = values.options();
  at::Tensor mean = at::empty({B, H, A}, opts), stdev = at::empty({B, H, A}, opts);
  at::Tensor elite_actions = at::empty({B, H, k, A}, opts);
  at::Tensor elite_weights = at::empty({B, k}, opts), elite_values = at::empty({B, k}, opts);
  if (B == 0) return {mean, stdev, elite_actions, elite_weights, elite_values};

  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cdred_fast_mppi_elite_update_cpu", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    const scalar_t* act = actions.data_ptr<scalar_t>();
    scalar_t* mean_p = mean.data_ptr<scalar_t>();
    scalar_t* std_p = stdev.data_ptr<scalar_t>();
    scalar_t* ea_p = elite_actions.data_ptr<scalar_t>();
    scalar_t* w_p = elite_weights.data_ptr<scalar_t>();
    scalar_t* ev_p = elite_values.data_ptr<scalar_t>();
    // Rough cost of one problem: the selection touches N candidates, the moments 3 * H * k * A elements.
    const int64_t cost = N + 3 * H * k * A;
    const int64_t batch_grain = std::max<int64_t>(1, 65536 / cost);
    const int64_t pair_grain = std::max<int64_t>(1, 32768 / (3 * k));
    at::parallel_for(0, B, batch_grain, [&](int64_t b0, int64_t b1) {
      std::vector<Candidate<scalar_t>> cand(N);
      std::vector<int64_t> elite_index(k);
      for (int64_t b = b0; b < b1; ++b) {
        select_elites<scalar_t>(v + b * N, p, cand, elite_index.data(), ev_p + b * k, w_p + b * k);
        const scalar_t* w = w_p + b * k;
        scalar_t sum_w = 0;
        for (int64_t j = 0; j < k; ++j) sum_w += w[j];
        // Nested inside a parallel region (many batches) this runs inline on
        // the calling thread; with few batches it splits the (h, a) pairs.
        at::parallel_for(0, H * A, pair_grain, [&](int64_t s0, int64_t s1) {
          std::vector<scalar_t> acc(2 * A);
          moments_pairs<scalar_t>(act + b * H * N * A, elite_index.data(), w, sum_w, p, s0, s1,
                                  ea_p + b * H * k * A, mean_p + b * H * A, std_p + b * H * A, acc.data());
        });
      }
    });
  });
  return {mean, stdev, elite_actions, elite_weights, elite_values};
}

// ----------------------------------------------------------------------------- mppi_select
// The checks torch.multinomial makes before it draws (elite_draw.h leaves them
// out): every weight finite and >= 0, and each row with a positive sum. One pass
// over the B * k weights; the messages name the first offending row.
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

at::Tensor mppi_select_cpu(const at::Tensor& elite_actions_in, const at::Tensor& elite_weights,
                           const at::Tensor& std_in, bool eval_mode, std::optional<at::Generator> generator) {
  constexpr const char* op = "cdred_fast::mppi_select";
  check_mppi_select_inputs(op, elite_actions_in, elite_weights, std_in, generator);
  TORCH_CHECK_VALUE(elite_actions_in.device().is_cpu(), op, ": CPU kernel called with tensors on ",
                    elite_actions_in.device());
  const at::Tensor elite_actions = elite_actions_in.contiguous();
  const at::Tensor stdev = std_in.contiguous();
  const int64_t B = elite_actions.size(0), H = elite_actions.size(1), k = elite_actions.size(2),
                A = elite_actions.size(3);
  const auto opts = elite_actions.options();
  if (B == 0) return at::empty({0, A}, opts);
  // Draw 1: one elite per problem with probability w; the weights are checked
  // first, as torch.multinomial does, so a bad row consumes no random numbers.
  check_elite_weights_cpu(op, elite_weights);
  const at::Tensor choice = draw_elite_index(elite_weights, generator);  // [B]
  // Draw 2 (after draw 1, and only when not evaluating): eps ~ N(0, 1) of shape [B, A].
  at::Tensor out = eval_mode ? at::empty({B, A}, opts) : at::randn({B, A}, generator, opts);
  AT_DISPATCH_FLOATING_TYPES(elite_actions.scalar_type(), "cdred_fast_mppi_select_cpu", [&] {
    const scalar_t* ea = elite_actions.data_ptr<scalar_t>();
    const scalar_t* sd = stdev.data_ptr<scalar_t>();
    const int64_t* c = choice.data_ptr<int64_t>();
    scalar_t* x = out.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      // First action (h = 0) of the chosen elite, and std at h = 0.
      const scalar_t* first = ea + (b * H * k + c[b]) * A;
      const scalar_t* s0 = sd + b * H * A;
      scalar_t* xb = x + b * A;
      if (eval_mode) {
        for (int64_t a = 0; a < A; ++a) xb[a] = clamp_keep_nan<scalar_t>(first[a], -1, 1);
      } else {
        for (int64_t a = 0; a < A; ++a) xb[a] = clamp_keep_nan<scalar_t>(mul_add_rounded(first[a], s0[a], xb[a]), -1, 1);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CPU, m) {
  m.impl("mppi_sample", &mppi_sample_cpu);
  m.impl("mppi_elite_update", &mppi_elite_update_cpu);
  m.impl("mppi_select", &mppi_select_cpu);
}

// Planning is no-grad: the MPPI ops are non-differentiable. Their Autograd
// kernel (for every backend; it lives here because this file is always built)
// re-invokes the op below autograd, so outputs never require grad and a
// backward through them fails loudly ("does not require grad") instead of
// returning a wrong gradient. In C++ rather than a Python autograd.Function,
// it costs no Python round trip per call.
namespace {
void call_below_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  op.callBoxed(stack);
}
}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, Autograd, m) {
  m.impl("mppi_sample", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
  m.impl("mppi_elite_update", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
  m.impl("mppi_select", torch::CppFunction::makeFromBoxedFunction<&call_below_autograd>());
}

}  // namespace cdred
