// CPU kernel of moment_bonus and cdred_reward (SPEC section 2); reward/front.cpp
// validates the inputs and calls launch_reward_cpu.
//
// One pass over the targets: for each row the K target vectors are summed
// (compensated) and, shifted by the first, summed and squared-summed into four
// length-D accumulators (contiguous, vectorised loops; see reward_math.h),
// then one vectorised loop over D evaluates Eq. 8 for each predictor and Eq. 7.
// Rows are split across threads with at::parallel_for. No intermediate larger
// than 4*D accumulators per thread is allocated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <vector>

#include "common/macros.h"
#include "reward/launch.h"
#include "reward/reward_math.h"

namespace cdred {
namespace {

// Bonus of each of NPRED predictors for rows [begin, end). `scratch` is
// per-thread scratch of length 4 D. Inlined into the CPU-cloned entry points below.
template <typename scalar_t, int NPRED>
__attribute__((always_inline)) inline void bonus_rows(const scalar_t* const* preds, const scalar_t* targets,
                                                      scalar_t* out, int64_t K, int64_t N, int64_t D,
                                                      const RewardParams& p, int64_t begin, int64_t end,
                                                      scalar_t* scratch) {
  using acc_t = scalar_t;  // float accumulates in float, double in double (as the reference does)
  const acc_t k_count = acc_t(K);
  const acc_t inv_k = acc_t(1) / k_count;
  scalar_t* tsum = scratch;           // compensated sum of t_k
  scalar_t* tcomp = scratch + D;      // its compensation
  scalar_t* sum = scratch + 2 * D;    // sum of t_k - t_0
  scalar_t* sumsq = scratch + 3 * D;  // sum of (t_k - t_0)^2
  const acc_t inv_d = acc_t(1) / acc_t(D);
  const acc_t eps = acc_t(p.eps);
  for (int64_t n = begin; n < end; ++n) {
    // One pass over the K targets of this row: the sum of t_k, the sums of t_k - t_0 and of its square.
    const scalar_t* t0 = targets + n * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      tsum[d] = t0[d];
      tcomp[d] = 0;
      sum[d] = 0;
      sumsq[d] = 0;
    }
    for (int64_t k = 1; k < K; ++k) {
      const scalar_t* tk = targets + (k * N + n) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        kahan_add<acc_t>(tk[d], tsum[d], tcomp[d]);
        const acc_t u = tk[d] - t0[d];
        sum[d] += u;
        sumsq[d] += u * u;
      }
    }
    // Eq. 8 for each predictor, reduced over D.
    acc_t distill[NPRED] = {}, root[NPRED] = {};
    for (int i = 0; i < NPRED; ++i) {
      const scalar_t* f = preds[i] + n * D;
      acc_t dist_i = 0, root_i = 0;
#pragma omp simd reduction(+ : dist_i, root_i)
      for (int64_t d = 0; d < D; ++d) {
        const Moments<acc_t> m = moments_from_sums<acc_t>(tsum[d], tcomp[d], sum[d], sumsq[d], k_count, inv_k, eps);
        accumulate_coordinate<acc_t>(f[d], m, dist_i, root_i);
      }
      distill[i] = dist_i;
      root[i] = root_i;
    }
    if constexpr (NPRED == 1) {
      out[n] = finish_bonus<acc_t>(distill[0], root[0], inv_d, p);
    } else {
      out[n] = finish_reward<acc_t>(finish_bonus<acc_t>(distill[0], root[0], inv_d, p),
                                    finish_bonus<acc_t>(distill[1], root[1], inv_d, p), p);
    }
  }
}

// Non-template entry points so the compiler can clone them per CPU target.
#define CDRED_DEFINE_ROWS(NAME, T, NPRED)                                                                      \
  CDRED_CPU_CLONES void NAME(const T* const* preds, const T* targets, T* out, int64_t K, int64_t N, int64_t D, \
                             const RewardParams& p, int64_t begin, int64_t end, T* scratch) {                  \
    bonus_rows<T, NPRED>(preds, targets, out, K, N, D, p, begin, end, scratch);                                \
  }
CDRED_DEFINE_ROWS(rows_f1, float, 1)
CDRED_DEFINE_ROWS(rows_f2, float, 2)
CDRED_DEFINE_ROWS(rows_d1, double, 1)
CDRED_DEFINE_ROWS(rows_d2, double, 2)
#undef CDRED_DEFINE_ROWS

inline void call_rows(const float* const* preds, const float* t, float* out, int64_t K, int64_t N, int64_t D,
                      const RewardParams& p, int64_t b, int64_t e, float* s, int npred) {
  npred == 1 ? rows_f1(preds, t, out, K, N, D, p, b, e, s) : rows_f2(preds, t, out, K, N, D, p, b, e, s);
}
inline void call_rows(const double* const* preds, const double* t, double* out, int64_t K, int64_t N, int64_t D,
                      const RewardParams& p, int64_t b, int64_t e, double* s, int npred) {
  npred == 1 ? rows_d1(preds, t, out, K, N, D, p, b, e, s) : rows_d2(preds, t, out, K, N, D, p, b, e, s);
}

}  // namespace

void launch_reward_cpu(const at::Tensor& pred0, const at::Tensor& pred1, const at::Tensor& targets,
                       const at::Tensor& out, const RewardParams& p, int npred) {
  const int64_t K = targets.size(0), N = targets.size(1), D = targets.size(2);
  // Aim for ~32k target elements per task so small batches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * D));
  AT_DISPATCH_FLOATING_TYPES(targets.scalar_type(), "cdred_fast_reward_cpu", [&] {
    const scalar_t* pred_ptrs[2] = {pred0.data_ptr<scalar_t>(), pred1.data_ptr<scalar_t>()};
    const scalar_t* t = targets.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(4 * D);
      call_rows(pred_ptrs, t, o, K, N, D, p, begin, end, scratch.data(), npred);
    });
  });
}

}  // namespace cdred
