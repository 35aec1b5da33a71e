// The RND ensemble forward (SPEC section 2: the K random targets and the two
// predictors, SPEC section 0: "Block" = Linear -> LayerNorm -> Mish), shared by
// the CPU and CUDA kernels:
//
//   1. the per-element arithmetic of the fused epilogue (LayerNorm statistics,
//      affine, Mish and the exp it needs), host and device;
//   2. the input validation of cdred_fast::ensemble_mlp (host);
//   3. the GEMM schedule (host, ATen calls that run on CPU or CUDA alike), which
//      takes the device's epilogue as a callable.
//
// The pure-PyTorch twin is cdred_fast/reference.py:ensemble_mlp.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/addmv.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/macros.h"

namespace cdred {

// =============================================================================
// 1. Epilogue arithmetic
// =============================================================================

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
  const T k = t - C::magic;              // exact
  const T r = (x - k * C::ln2_hi) - k * C::ln2_lo;
  const U ki = std::bit_cast<U>(t) - std::bit_cast<U>(C::magic);  // k (mod 2^bits)
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
#ifdef __CUDA_ARCH__
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
#ifdef __CUDA_ARCH__
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

// One element of the epilogue: LayerNorm affine then Mish.
template <typename T>
CDRED_HOST_DEVICE inline T ln_affine_mish(T v, T mean, T rstd, T gamma, T beta) {
  return mish<T>((v - mean) * rstd * gamma + beta);
}

// =============================================================================
// 2. Validation (host)
// =============================================================================

struct EnsembleShape {
  int64_t E = 0;       // members
  int64_t N = 0;       // rows
  int64_t layers = 0;  // Linears per member
  int64_t in0 = 0;     // input features of the first layer (I = I_s + I_x)
  int64_t shared = 0;  // I_s (0 without x_shared)
  bool per_member_x = false;  // x is [E, N, I_x]
  std::vector<int64_t> out;   // out_l per layer
};

inline std::string indexed(const char* name, size_t l) { return std::string(name) + "[" + std::to_string(l) + "]"; }

inline void check_rnd_float(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& ref,
                            const char* ref_name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": argument '", name,
                   "' must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ", t.scalar_type(),
                   " but '", ref_name, "' has ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), " but '", ref_name,
                    "' is on ", ref.device(), "; they must match");
}

inline EnsembleShape check_ensemble_mlp_inputs(const char* op, const at::Tensor& x, at::TensorList weights,
                                               at::TensorList biases, at::TensorList ln_weights,
                                               at::TensorList ln_biases, double ln_eps,
                                               const std::optional<at::Tensor>& x_shared) {
  EnsembleShape s;
  TORCH_CHECK_VALUE(x.defined(), op, ": argument 'x' is an undefined tensor");
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, op,
                    ": argument 'x' must have shape [N, I] (2-D, rows shared by every member) or [E, N, I] "
                    "(3-D, rows per member), got shape ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": argument 'x' must be float32 or float64, got ", x.scalar_type());
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
    check_rnd_float(op, wn, w, x, "x");
    TORCH_CHECK_VALUE(w.dim() == 3, op, ": argument '", wn, "' must have shape [E, out, in] (3-D), got shape ",
                      w.sizes());
    if (l == 0) {
      s.E = w.size(0);
      TORCH_CHECK_VALUE(s.E >= 1, op, ": argument 'weights[0]' must hold at least one member (E >= 1), got shape ",
                        w.sizes());
      s.in0 = w.size(2);
    } else {
      TORCH_CHECK_VALUE(w.size(0) == s.E, op, ": argument '", wn, "' has E = ", w.size(0), " members but 'weights[0]' has ",
                        s.E, "; every layer must have the same E");
      TORCH_CHECK_VALUE(w.size(2) == prev_out, op, ": argument '", wn, "' has shape ", w.sizes(), " but layer ", l - 1,
                        " outputs ", prev_out, " features; expected [", s.E, ", out, ", prev_out, "]");
    }
    const int64_t out = w.size(1);
    TORCH_CHECK_VALUE(out >= 1 && w.size(2) >= 1, op, ": argument '", wn,
                      "' must have at least one output and one input feature, got shape ", w.sizes());
    s.out.push_back(out);
    const std::string bn = indexed("biases", l);
    check_rnd_float(op, bn, biases[l], x, "x");
    TORCH_CHECK_VALUE(biases[l].dim() == 2 && biases[l].size(0) == s.E && biases[l].size(1) == out, op,
                      ": argument '", bn, "' must have shape [E, out] = [", s.E, ", ", out, "], got shape ",
                      biases[l].sizes());
    if (l + 1 < L) {
      for (const auto& [name, list] : {std::pair<const char*, at::TensorList>{"ln_weights", ln_weights},
                                       std::pair<const char*, at::TensorList>{"ln_biases", ln_biases}}) {
        const std::string n = indexed(name, l);
        check_rnd_float(op, n, list[l], x, "x");
        TORCH_CHECK_VALUE(list[l].dim() == 2 && list[l].size(0) == s.E && list[l].size(1) == out, op, ": argument '",
                          n, "' must have shape [E, out] = [", s.E, ", ", out, "], got shape ", list[l].sizes());
      }
    }
    prev_out = out;
  }
  if (x_shared.has_value() && x_shared->defined()) {
    const at::Tensor& z = *x_shared;
    check_rnd_float(op, "x_shared", z, x, "x");
    TORCH_CHECK_VALUE(z.dim() == 1, op, ": argument 'x_shared' must have shape [I_s] (1-D), got shape ", z.sizes());
    s.shared = z.size(0);
    TORCH_CHECK_VALUE(s.shared < s.in0, op, ": argument 'x_shared' has ", s.shared,
                      " features but the first layer takes I = ", s.in0,
                      " in all; x_shared must be shorter than I (x holds the other I - I_s >= 1 features)");
  }
  const int64_t ix = x.size(x.dim() - 1);
  TORCH_CHECK_VALUE(ix == s.in0 - s.shared, op, ": argument 'x' has ", ix, " features per row but 'weights[0]' takes I = ",
                    s.in0, s.shared ? " of which 'x_shared' gives " + std::to_string(s.shared) : std::string(),
                    "; expected ", s.in0 - s.shared);
  s.per_member_x = x.dim() == 3;
  if (s.per_member_x) {
    TORCH_CHECK_VALUE(x.size(0) == s.E, op, ": argument 'x' has shape ", x.sizes(),
                      " (per-member rows [E, N, I]) but the weights have E = ", s.E, " members");
  }
  s.N = x.size(x.dim() - 2);
  return s;
}

// =============================================================================
// 3. GEMM schedule (host; ATen ops run on the tensors' device)
// =============================================================================
//
// Hidden activations live in [E, N, out] buffers (member-major), so that every
// Linear after the first is ONE batched GEMM over the members (at::bmm_out;
// a batched call matters on the CPU: E separate multi-threaded GEMMs were 3.5x
// slower than one bmm with 2 threads on a loaded machine). For x [N, I] (the
// same rows for every member) the first layer is ONE GEMM of x against the
// weights viewed as [E*out, I], into an [N, E, out] scratch; its epilogue reads
// it there and writes the [E, N, out] layout (no extra pass). For x [E, N, I]
// the first layer is a bmm like the others. The GEMMs of hidden layers have no
// bias term; the epilogue adds the bias and does LayerNorm + affine + Mish on
// every (member, row) segment. The last Linear adds its bias in the GEMM
// (baddbmm) and writes the [E, N, out] result directly.
//
// x_shared (the planning case x = [z ; a] with one z for all rows): the z-part
// of the first layer, W[:, :, :I_s] @ z, is one matrix-vector product per call
// folded into the bias (b_eff = b + W_z z); the GEMM then only contracts the
// I - I_s row features against the strided view W[:, :, I_s:].
//
// `epilogue(src, dst, bias, gamma, beta, eps)`: src [E, N, D] (any strides,
// unit stride along D) and dst [E, N, D] contiguous, possibly the same memory;
// dst <- Mish(LayerNorm(src + bias) * gamma + beta); bias/gamma/beta [E, D]
// contiguous. Scratch: two ping-pong buffers of N * E * max(hidden) values.
//
// ensemble_mlp_layers runs every layer and hands the last, plain Linear to
// `last(in, bias, wt, rows_2d)`: in = its input ([E, N, in], or x [N, I] itself
// when rows_2d: a one-layer network on shared rows), bias [E, out], wt
// [E, in, out] (the transposed weights). ensemble_mlp_forward writes it out;
// ensemble_reward_forward (section 4) consumes it tile by tile.
template <typename Epilogue, typename Last>
void ensemble_mlp_layers(const EnsembleShape& s, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                         at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                         const std::optional<at::Tensor>& x_shared, Epilogue&& epilogue, Last&& last) {
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
    w0x = w0.narrow(2, s.shared, ix);  // [E, out0, I_x], row stride I
  }

  // Ping-pong buffers for the hidden activations (and the first layer's scratch).
  int64_t max_hidden = 0;
  for (int64_t l = 0; l + 1 < L; ++l) max_hidden = std::max(max_hidden, s.out[l]);
  at::Tensor buf[2];
  if (L >= 2) buf[0] = at::empty({N * E * max_hidden}, x.options());
  if (L >= 3 || (L == 2 && rows_shared)) buf[1] = at::empty({N * E * max_hidden}, x.options());

  at::Tensor h;  // [E, N, in_l]: the input of layer l
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = s.out[l];
    const at::Tensor bias = l == 0 ? bias0.view({E, out0}) : biases[l].contiguous();  // [E, out]
    const at::Tensor wt = (l == 0 ? w0x : weights[l].contiguous()).transpose(1, 2);  // [E, in, out]
    if (l == L - 1) {  // the last, plain Linear
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
    epilogue(src, dst, bias, ln_weights[l].contiguous(), ln_biases[l].contiguous(), ln_eps);
    h = dst;
  }
}

// The last Linear into dst [E, n, out] for rows [r0, r0 + n) of its input (see ensemble_mlp_layers).
inline void last_linear_rows(at::Tensor dst, const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt,
                             bool rows_2d, int64_t r0, int64_t n) {
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

template <typename Epilogue>
at::Tensor ensemble_mlp_forward(const EnsembleShape& s, const at::Tensor& x_in, at::TensorList weights,
                                at::TensorList biases, at::TensorList ln_weights, at::TensorList ln_biases,
                                double ln_eps, const std::optional<at::Tensor>& x_shared, Epilogue&& epilogue) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor result = at::empty({s.E, s.N, s.out[s.layers - 1]}, x.options());
  if (s.N == 0) return result;
  ensemble_mlp_layers(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared, epilogue,
                      [&](const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt, bool rows_2d) {
                        last_linear_rows(result, in, bias, wt, rows_2d, 0, s.N);
                      });
  return result;
}

// =============================================================================
// 4. The planning reward at the end of the targets' forward (op ensemble_reward)
// =============================================================================
//
// ensemble_reward(x, <K targets as for ensemble_mlp>, f_phi(x), f_psi(x), ...)
// = cdred_reward(f_phi(x), f_psi(x), ensemble_mlp(x, <targets>), ...), without
// the [K, N, D] target outputs: the hidden layers run as in ensemble_mlp, then
// the last Linear and the reward (SPEC Eq. 7-8, the cdred_reward op, called
// through the dispatcher so CPU and CUDA use their own kernel) run on tiles of
// rows whose [K, rows, D] outputs stay within `tile_bytes` (the CPU passes a
// size that stays in its L2 cache: the tile is written by the GEMM and read by
// the reward while still cached; one buffer is reused for every tile).
inline void check_ensemble_reward_preds(const char* op, const EnsembleShape& s, const at::Tensor& x,
                                        const at::Tensor& pred_expert, const at::Tensor& pred_behavioral) {
  const int64_t D = s.out[s.layers - 1];
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"pred_expert", &pred_expert},
                                std::pair<const char*, const at::Tensor*>{"pred_behavioral", &pred_behavioral}}) {
    check_rnd_float(op, name, *t, x, "x");
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == s.N && t->size(1) == D, op, ": argument '", name,
                      "' must have shape [N, D] = [", s.N, ", ", D, "] (N rows of x, D outputs of the targets' "
                      "last layer), got shape ", t->sizes());
  }
}

template <typename Epilogue>
at::Tensor ensemble_reward_forward(const char* op, const at::Tensor& x_in, at::TensorList weights,
                                   at::TensorList biases, at::TensorList ln_weights, at::TensorList ln_biases,
                                   double ln_eps, const at::Tensor& pred_expert, const at::Tensor& pred_behavioral,
                                   double alpha, double zeta, double sigma, c10::string_view g, double eps,
                                   const std::optional<at::Tensor>& x_shared, int64_t tile_bytes,
                                   Epilogue&& epilogue) {
  const EnsembleShape s = check_ensemble_mlp_inputs(op, x_in, weights, biases, ln_weights, ln_biases, ln_eps, x_shared);
  check_ensemble_reward_preds(op, s, x_in, pred_expert, pred_behavioral);
  check_unit_interval(op, "alpha", alpha);
  check_unit_interval(op, "zeta", zeta);
  check_nonnegative(op, "sigma", sigma);
  check_nonnegative(op, "eps", eps);
  parse_g(op, std::string(g));
  static const auto reward_op = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("cdred_fast::cdred_reward", "")
                                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                      double, double, c10::string_view, double)>();
  const at::Tensor x = x_in.contiguous(), pe = pred_expert.contiguous(), pb = pred_behavioral.contiguous();
  const int64_t K = s.E, N = s.N, D = s.out[s.layers - 1];
  at::Tensor out = at::empty({N}, x.options());
  if (N == 0) return out;
  const int64_t per_row = K * D * static_cast<int64_t>(x.element_size());
  const int64_t T = std::min<int64_t>(N, std::max<int64_t>(1, tile_bytes / per_row));
  at::Tensor buffer = at::empty({K * T * D}, x.options());
  ensemble_mlp_layers(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared, epilogue,
                      [&](const at::Tensor& in, const at::Tensor& bias, const at::Tensor& wt, bool rows_2d) {
                        for (int64_t r0 = 0; r0 < N; r0 += T) {
                          const int64_t n = std::min(T, N - r0);
                          at::Tensor targets = buffer.narrow(0, 0, K * n * D).view({K, n, D});  // contiguous
                          last_linear_rows(targets, in, bias, wt, rows_2d, r0, n);
                          out.narrow(0, r0, n).copy_(reward_op.call(pe.narrow(0, r0, n), pb.narrow(0, r0, n),
                                                                    targets, alpha, zeta, sigma, g, eps));
                        }
                      });
  return out;
}

}  // namespace cdred
