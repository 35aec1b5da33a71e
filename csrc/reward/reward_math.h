// The arithmetic of SPEC section 2 (Eq. 7 and Eq. 8), shared by the CPU and
// CUDA kernels so both evaluate the same expressions in the same order.
// The pure-PyTorch twin is cdred_fast/reference.py; see its docstring for the
// variance guard.
#pragma once

#include <cmath>

#include "common/macros.h"

namespace cdred {

struct RewardParams {
  double alpha;  // weight of the distillation error (Eq. 8)
  double zeta;   // expert coefficient (Eq. 7)
  double sigma;  // bonus scale (Eq. 7)
  double eps;    // variance guard: coordinate d is degenerate when var_d <= eps * B2_d
  int g;         // 0: g(x) = x, 1: g(x) = exp(x)
};

// Moments of the K targets at one coordinate. The mean is the compensated
// (Kahan) sum of the t_k divided by K, within about one rounding of the exact
// mean whatever the ratio of the targets' size to their spread. The variance
// comes from the sums of the *shifted* values u_k = t_k - t_0 (one pass,
// numerically stable when the targets nearly agree, where B2 - mu^2 would
// cancel catastrophically):
//   mu = (sum_k t_k) / K,   var = S2/K - (S1/K)^2  (= B2 - mu^2),   B2 = var + mu^2.
template <typename acc_t>
struct Moments {
  acc_t mu;   // (1/K) sum_k t_k
  acc_t var;  // B2 - mu^2, replaced by 1 where degenerate (never divided by 0)
  bool degenerate;
};

// One step of the compensated sum: sum + comp ~ the exact sum of the terms so far
// (comp holds the rounding error that sum could not represent, Kahan/Babuska).
// No products, so contracting into FMAs cannot change it.
template <typename acc_t>
CDRED_HOST_DEVICE inline void kahan_add(acc_t x, acc_t& sum, acc_t& comp) {
  const acc_t y = x - comp;
  const acc_t t = sum + y;
  comp = (t - sum) - y;
  sum = t;
}

// sum, comp: the compensated sum of the K targets; s1, s2: sums of u_k and u_k^2.
template <typename acc_t>
CDRED_HOST_DEVICE inline Moments<acc_t> moments_from_sums(acc_t sum, acc_t comp, acc_t s1, acc_t s2, acc_t k,
                                                          acc_t inv_k, acc_t eps) {
  const acc_t mu = (sum - comp) / k;
  const acc_t m1 = s1 * inv_k;
  const acc_t var = s2 * inv_k - m1 * m1;
  const acc_t b2 = var + mu * mu;
  const bool degenerate = var <= eps * b2;
  return {mu, degenerate ? acc_t(1) : var, degenerate};
}

// a * b rounded on its own, never contracted with a following sum into a fused
// multiply-add: nvcc contracts by default, hence the _rn intrinsics; on the host,
// reward/cpu.cpp is compiled with -ffp-contract=off (CMakeLists.txt), since its
// avx512f clone has FMA instructions to contract to.
template <typename acc_t>
CDRED_HOST_DEVICE inline acc_t mul_rounded(acc_t a, acc_t b) {
#ifdef CDRED_DEVICE_CODE
  if constexpr (sizeof(acc_t) == 4) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// One coordinate's contribution to sum_d (f_d - mu_d)^2 and to sum_d sqrt(|f^2 - mu^2| / var).
// f^2 - mu^2 is the difference of the two rounded squares, as on the host and in the reference:
// an FMA would leave mu^2's rounding error where |f| == |mu| gives exactly 0, and the root
// would magnify it (to ~2e-4 in float32 for f = mu = 0.1, var = 0.01).
template <typename acc_t>
CDRED_HOST_DEVICE inline void accumulate_coordinate(acc_t f, const Moments<acc_t>& m, acc_t& distill, acc_t& root) {
  const acc_t diff = f - m.mu;
  distill += diff * diff;
  const acc_t ratio = std::fabs(mul_rounded(f, f) - mul_rounded(m.mu, m.mu)) / m.var;
  root += m.degenerate ? acc_t(0) : std::sqrt(ratio);
}

// Eq. 8 from the two accumulated sums.
template <typename acc_t>
CDRED_HOST_DEVICE inline acc_t finish_bonus(acc_t distill, acc_t root, acc_t inv_d, const RewardParams& p) {
  return acc_t(p.alpha) * distill + acc_t(1.0 - p.alpha) * (root * inv_d);
}

template <typename acc_t>
CDRED_HOST_DEVICE inline acc_t apply_g(acc_t x, int g) {
  return g == 1 ? std::exp(x) : x;
}

// Eq. 7 from the two bonuses.
template <typename acc_t>
CDRED_HOST_DEVICE inline acc_t finish_reward(acc_t b_expert, acc_t b_behavioral, const RewardParams& p) {
  const acc_t s = acc_t(p.sigma);
  return acc_t(p.zeta) * apply_g(-s * b_expert, p.g) - acc_t(1.0 - p.zeta) * apply_g(-s * b_behavioral, p.g);
}

}  // namespace cdred
