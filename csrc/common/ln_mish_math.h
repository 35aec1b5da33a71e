// The arithmetic of the LayerNorm -> Mish tail of a SPEC "Block" (SPEC section
// 0), shared by every kernel that evaluates it: the fused epilogue of the RND
// ensemble forward (rnd), the trainable layernorm_mish op and its backward
// (block), and the shared LayerNorm -> Mish row kernels (common/ln_mish_*).
// Host and device: the LayerNorm statistics, the affine, Mish, its derivative
// and the exp Mish needs.
#pragma once

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/macros.h"

namespace cdred {

// -----------------------------------------------------------------------------
// exp_poly: a branch-free exp for the CPU epilogue loops. GCC does not vectorise
// std::exp without -ffast-math (it is a libm call); this is plain arithmetic and
// bit operations, so `#pragma omp simd` loops that inline it vectorise.
//
//   x = k*ln2 + r, k = nearest integer to x/ln2 (the 1.5*2^p "magic number"
//   rounding, no int conversion instruction needed), r in [-ln2/2, ln2/2] by a
//   two-constant Cody-Waite reduction; exp(r) by a polynomial; 2^k assembled in
//   the exponent bits.
//
//   float : Cephes expf minimax polynomial (degree 7 in r incl. 1 + r).
//   double: Taylor polynomial of degree 13 (truncation < 5e-18 relative on
//           |r| <= ln2/2), Horner.
//
// Accuracy, measured on x86-64 (AVX-512, AVX2+FMA and SSE2 builds alike):
// float, EVERY float in [lo, hi] (2.2e9 inputs) against exp in double:
// max 1.01 ulp; double, 4e7 points evenly spaced in [lo, hi] against expl
// (long double): max 1.00 ulp. Range: inputs below lo (-87.33 float, -708.39 double, where exp leaves
// the normal range) return +0 (true value < 1.2e-38 / 2.3e-308); inputs above hi
// (88.37 / 709.43) return +inf (a few true values just below FLT_MAX/DBL_MAX
// included); NaN propagates.
//
// Special values are patched in at the very end with integer-mask selects
// (select_bits): with GCC's default -ftrapping-math, a `c ? a : b` lets the
// compiler sink a's arithmetic into a branch, and the loop is then not
// if-converted, hence not vectorised, except with AVX-512 masking.
// -----------------------------------------------------------------------------
template <typename T>
struct ExpConsts;

template <>
struct ExpConsts<float> {
  using bits_t = uint32_t;
  static constexpr float lo = -87.33654f;
  static constexpr float hi = 88.37626f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f;     // exact in 9 bits: k * ln2_hi is exact
  static constexpr float ln2_lo = -2.12194440e-4f;  // ln2 - ln2_hi
  static constexpr float magic = 12582912.0f;       // 1.5 * 2^23
  static constexpr int mantissa_bits = 23;
  static constexpr bits_t bias = 127;
};

template <>
struct ExpConsts<double> {
  using bits_t = uint64_t;
  static constexpr double lo = -708.39641853226408;
  static constexpr double hi = 709.43613930310391;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93147180369123816490e-01;  // fdlibm split
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int mantissa_bits = 52;
  static constexpr bits_t bias = 1023;
};

// c ? a : b without control flow (host loops; see above).
template <typename T>
inline T select_bits(bool c, T a, T b) {
  using U = typename ExpConsts<T>::bits_t;
  const U m = U(0) - U(c);
  return std::bit_cast<T>((std::bit_cast<U>(a) & m) | (std::bit_cast<U>(b) & ~m));
}

template <typename T>
inline T exp_poly_reduced(T r);

template <>
inline float exp_poly_reduced<float>(float r) {
  // Cephes expf: exp(r) = 1 + r + r^2 * P(r), |r| <= ln2/2.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

template <>
inline double exp_poly_reduced<double>(double r) {
  // Taylor series to r^13 / 13!, Horner from the highest term.
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;   // 1/11!
  p = p * r + 1.0 / 3628800.0;    // 1/10!
  p = p * r + 1.0 / 362880.0;     // 1/9!
  p = p * r + 1.0 / 40320.0;      // 1/8!
  p = p * r + 1.0 / 5040.0;       // 1/7!
  p = p * r + 1.0 / 720.0;        // 1/6!
  p = p * r + 1.0 / 120.0;        // 1/5!
  p = p * r + 1.0 / 24.0;         // 1/4!
  p = p * r + 1.0 / 6.0;          // 1/3!
  p = p * r + 0.5;                // 1/2!
  return p * (r * r) + r + 1.0;
}

template <typename T>
inline T exp_poly(T x) {
  using C = ExpConsts<T>;
  using U = typename C::bits_t;
  // Outside [lo, hi] the intermediate values are meaningless (possibly inf or
  // NaN); they are replaced at the end.
  const T t = x * C::log2e + C::magic;  // round(x / ln2) sits in the low mantissa bits of t
  const T k = t - C::magic;             // exact
  const T r = (x - k * C::ln2_hi) - k * C::ln2_lo;
  const U ki = std::bit_cast<U>(t) - std::bit_cast<U>(C::magic);                         // k (mod 2^bits)
  const T scale = std::bit_cast<T>(static_cast<U>((ki + C::bias) << C::mantissa_bits));  // 2^k
  const T y = exp_poly_reduced<T>(r) * scale;
  const T inf = std::numeric_limits<T>::infinity();
  return select_bits<T>(x < C::lo, T(0), select_bits<T>(x > C::hi, inf, y));
}

// exp used by the Mish of the epilogue: the polynomial above on the host (so
// that loops vectorise), the CUDA math library on the device: expf (max 2 ulp,
// CUDA Programming Guide, "Mathematical Functions"; not the __expf intrinsic,
// whose error grows with |x|) and exp (max 1 ulp) for double.
template <typename T>
CDRED_HOST_DEVICE inline T mish_exp(T x) {
#ifdef CDRED_DEVICE_CODE
  if constexpr (sizeof(T) == 4) {
    return ::expf(x);
  } else {
    return ::exp(x);
  }
#else
  return exp_poly<T>(x);
#endif
}

template <typename T>
CDRED_HOST_DEVICE inline T select_value(bool c, T a, T b) {
#ifdef CDRED_DEVICE_CODE
  return c ? a : b;  // a predicated select on the GPU
#else
  return select_bits<T>(c, a, b);
#endif
}

// -----------------------------------------------------------------------------
// Mish(y) = y * tanh(softplus(y)), softplus with PyTorch's threshold 20
// (softplus(y) = y above it, where tanh(y) rounds to 1 in float and double).
// With e = exp(y):  tanh(log(1 + e)) = ((1+e)^2 - 1) / ((1+e)^2 + 1) = n / (n + 2),
// n = e * (e + 2). No cancellation anywhere: n > 0, and for y -> -inf
// n / (n + 2) -> e, so Mish(y) ~ y * e^y keeps its relative accuracy down to
// the exp underflow (|Mish| < 1e-35 in float there; it returns -0). exp is only
// evaluated at min(y, 20), so n <= 2.4e17 never overflows.
// Error (CPU, python_tests/test_rnd_ops.py::test_mish_accuracy_on_dense_grid,
// 4e5 points in [-87, 30] plus +-1e-30..1e38 against F.mish in float64):
// float <= 4.5 ulp where |Mish| > 1e-30 (torch's own float F.mish: 2.9 ulp),
// absolute error < 1.1e-36 below (y < -87.3, where exp underflows to 0);
// double: relative error <= 7.4e-16 (~3 ulp) against F.mish in double.
// The CUDA build (expf/exp) has the same formula with the library's exp.
// NaN propagates; Mish(+inf) = +inf, Mish(-inf) = NaN (as torch: -inf * 0).
// -----------------------------------------------------------------------------
template <typename T>
CDRED_HOST_DEVICE inline T mish(T y) {
  const T threshold = T(20);
  const T e = mish_exp<T>(select_value<T>(y < threshold, y, threshold));
  const T n = e * (e + T(2));
  const T m = y * (n / (n + T(2)));
  return select_value<T>(y > threshold, y, m);
}

// Mish'(y) = tanh(sp) + y * sigmoid(y) * (1 - tanh(sp)^2), sp = softplus(y), the
// derivative torch's mish_backward computes. With e = exp(y), n = e (e + 2),
// d = n + 2: tanh(sp) = n / d, 1 - tanh(sp)^2 = 4 (1 + e)^2 / d^2 and
// sigmoid(y) = e / (1 + e), so Mish'(y) = n / d + 4 y e (1 + e) / d^2: one exp,
// no cancellation. Above the threshold Mish(y) = y, so Mish'(y) = 1 (torch: 1 up
// to < 1e-15). y -> -inf: Mish' ~ e (1 + y) -> 0; Mish'(-inf) = NaN (-inf * 0, as torch).
template <typename T>
CDRED_HOST_DEVICE inline T mish_grad(T y) {
  const T threshold = T(20);
  const T e = mish_exp<T>(select_value<T>(y < threshold, y, threshold));
  const T n = e * (e + T(2));
  const T d = n + T(2);
  const T g = n / d + T(4) * y * e * (e + T(1)) / (d * d);
  return select_value<T>(y > threshold, T(1), g);
}

// -----------------------------------------------------------------------------
// LayerNorm statistics over one row of D values from the sums of the values
// *shifted by the row's first value*, u_j = v_j - v_0 (one pass; the shift
// avoids the catastrophic cancellation of sum(v^2)/D - mean^2 when |mean| >> std):
//   mean = v_0 + S1/D,   var = S2/D - (S1/D)^2  (biased, as nn.LayerNorm), >= 0.
// A row with zero variance gives u = 0 exactly, var = 0, rstd = 1/sqrt(eps), and
// the normalised value (v - mean) * rstd = 0: the output is exactly beta.
//
// These sums are only used when S2 is finite. S2 is inf or NaN when the squares
// overflow (|u| >~ 1.8e19 in float32, 1.3e154 in float64) or when the row holds
// inf or NaN; the kernels then recompute the row's statistics from values scaled
// by the power of two ln_row_scale (exact): with w_j = v_j * c,
//   mean = (sum_j w_j / D) / c,   rstd = c / sqrt(sum_j (w_j - mean c)^2 / D + eps c^2),
// which cannot overflow for finite rows (|xhat| <= sqrt(D - 1) stays bounded, rstd
// is the true, tiny, value), and is NaN for a row holding inf or NaN (as PyTorch's
// LayerNorm: inf - inf), so every output of such a row is NaN.
// -----------------------------------------------------------------------------
template <typename acc_t>
struct LnStats {
  acc_t mean;
  acc_t rstd;
};

template <typename acc_t>
CDRED_HOST_DEVICE inline LnStats<acc_t> ln_stats_from_shifted_sums(acc_t v0, acc_t s1, acc_t s2, acc_t inv_d,
                                                                   acc_t eps) {
  const acc_t m1 = s1 * inv_d;
  acc_t var = s2 * inv_d - m1 * m1;
  var = var > acc_t(0) ? var : acc_t(0);
  return {v0 + m1, acc_t(1) / std::sqrt(var + eps)};
}

// The shifted sums are usable: S2 finite (then S1 and every u_j are finite too).
template <typename acc_t>
CDRED_HOST_DEVICE inline bool ln_shifted_sums_ok(acc_t s2) {
  if constexpr (sizeof(acc_t) == 4) {
    return s2 <= FLT_MAX;  // false for inf and NaN
  } else {
    return s2 <= DBL_MAX;
  }
}

// c of the scaled statistics: 2^-(max exponent / 2 + 8), so that D squares of
// (v - mean) c stay finite for any finite v (D < 2^13) while the values that made
// S2 overflow stay far above the underflow threshold.
template <typename acc_t>
CDRED_HOST_DEVICE inline acc_t ln_row_scale() {
  if constexpr (sizeof(acc_t) == 4) {
    return acc_t(0x1p-72f);
  } else {
    return acc_t(0x1p-520);
  }
}

// Statistics from the scaled sums: mc = sum_j w_j / D (the scaled mean) and
// q = sum_j (w_j - mc)^2, w_j = v_j * c.
template <typename acc_t>
CDRED_HOST_DEVICE inline LnStats<acc_t> ln_stats_from_scaled_sums(acc_t mc, acc_t q, acc_t inv_d, acc_t eps) {
  const acc_t c = ln_row_scale<acc_t>();
  return {mc / c, c / std::sqrt(q * inv_d + eps * c * c)};
}

// One element of the epilogue: LayerNorm affine then Mish.
template <typename T>
CDRED_HOST_DEVICE inline T ln_affine_mish(T v, T mean, T rstd, T gamma, T beta) {
  return mish<T>((v - mean) * rstd * gamma + beta);
}

}  // namespace cdred
