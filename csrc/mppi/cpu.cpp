// CPU kernels of the MPPI planning ops (SPEC section 4). mppi/front.cpp
// validates the inputs, draws the random numbers and calls the launchers.
//
// mppi_sample / mppi_select: one fused pass (mul-add-clamp) in place on the
// noise buffer the front drew. These loops are compiled without target clones,
// i.e. without FMA, so the arithmetic rounds exactly as the reference's
// separate multiply and add.
//
// mppi_elite_update: per batch problem, a partial selection (nth_element +
// sort of the k best, O(N + k log k)) under a strict total order (value
// descending, candidate index ascending), the softmax weights, then one pass
// over the (h, a) pairs that gathers the elite actions and accumulates the
// weighted mean, and a second for the weighted variance. Batches are split
// across threads; when there are few of them, the (h, a) pairs are.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mppi/launch.h"
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

}  // namespace

void launch_mppi_sample_cpu(const at::Tensor& mean, const at::Tensor& stdev, const at::Tensor& out) {
  const int64_t B = out.size(0), H = out.size(1), M = out.size(2), A = out.size(3);
  // A memory-bound pass: only worth more threads beyond ~256k elements.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / A);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "cdred_fast_mppi_sample_cpu", [&] {
    const scalar_t* mu = mean.data_ptr<scalar_t>();
    const scalar_t* sd = stdev.data_ptr<scalar_t>();
    scalar_t* x = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H * M, grain,
                     [&](int64_t begin, int64_t end) { sample_rows(mu, sd, x, M, A, begin, end); });
  });
}

void launch_mppi_elite_update_cpu(const at::Tensor& values, const at::Tensor& actions, const EliteUpdateArgs& args,
                                  const at::Tensor& mean, const at::Tensor& stdev, const at::Tensor& elite_actions,
                                  const at::Tensor& elite_weights, const at::Tensor& elite_values) {
  const int64_t B = actions.size(0), H = actions.size(1), N = actions.size(2), A = actions.size(3);
  const int64_t k = args.num_elites;
  const EliteParams p{H, N, A, k, args.temperature, args.min_std, args.max_std};
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
          moments_pairs<scalar_t>(act + b * H * N * A, elite_index.data(), w, sum_w, p, s0, s1, ea_p + b * H * k * A,
                                  mean_p + b * H * A, std_p + b * H * A, acc.data());
        });
      }
    });
  });
}

void launch_mppi_select_cpu(const at::Tensor& elite_actions, const at::Tensor& stdev, const at::Tensor& choice,
                            const at::Tensor& out, bool eval_mode) {
  const int64_t B = elite_actions.size(0), H = elite_actions.size(1), k = elite_actions.size(2),
                A = elite_actions.size(3);
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
        for (int64_t a = 0; a < A; ++a)
          xb[a] = clamp_keep_nan<scalar_t>(mul_add_rounded(first[a], s0[a], xb[a]), -1, 1);
      }
    }
  });
}

}  // namespace cdred
