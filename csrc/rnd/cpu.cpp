// CPU kernel of ensemble_mlp (SPEC section 2: the K random targets and the two
// predictors; SPEC section 0: Block = Linear -> LayerNorm -> Mish).
//
// GEMMs through ATen (MKL/oneDNN, multi-threaded by ATen), scheduled by
// ensemble_mlp_forward in rnd_math.h (one GEMM for all members when the rows
// are shared, the x_shared part folded into the first layer's bias, one bmm
// per later layer).
// After every hidden Linear (a GEMM without bias), one fused epilogue per
// (member, row) segment of D values, segments split across threads with
// at::parallel_for:
//   pass 1: v <- src + bias, stored in the [E, N, D] activation buffer (in
//           place, except after the first layer's shared-rows GEMM, whose
//           [N, E, D] output is transposed here for free), and the sums of
//           v - v_0 and (v - v_0)^2 (one vectorised loop with a reduction);
//   pass 2: v <- Mish((v - mean) * rstd * gamma + beta) (one vectorised loop;
//           Mish with the polynomial exp of rnd_math.h, so the loop vectorises).
// No temporaries besides the two ping-pong activation buffers of rnd_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>

#include "rnd/rnd_math.h"

namespace cdred {
namespace {

// Segments [begin, end) of the [E, N] (member, row) grid: segment s = e * N + n
// reads src + e * src_se + n * src_sn and writes dst + s * D (possibly the same
// memory: every element is read before it is written, at the same index).
template <typename T>
__attribute__((always_inline)) inline void ln_mish_segments(const T* src, int64_t src_se, int64_t src_sn, T* dst,
                                                            const T* bias, const T* gamma, const T* beta, int64_t N,
                                                            int64_t D, T eps, int64_t begin, int64_t end) {
  const T inv_d = T(1) / T(D);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = s / N, n = s % N;
    const T* in = src + e * src_se + n * src_sn;
    T* v = dst + s * D;
    const T* c = bias + e * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T v0 = in[0] + c[0];
    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < D; ++j) {
      const T vj = in[j] + c[j];  // the Linear's bias
      v[j] = vj;
      const T u = vj - v0;
      s1 += u;
      s2 += u * u;
    }
    const LnStats<T> st = ln_stats_from_shifted_sums<T>(v0, s1, s2, inv_d, eps);
    const T mean = st.mean, rstd = st.rstd;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) v[j] = ln_affine_mish<T>(v[j], mean, rstd, g[j], b[j]);
  }
}

// Non-template entry points so the compiler can clone them per CPU target.
#define CDRED_DEFINE_LN_MISH(NAME, T)                                                                               \
  CDRED_CPU_CLONES void NAME(const T* src, int64_t se, int64_t sn, T* dst, const T* bias, const T* gamma,          \
                             const T* beta, int64_t N, int64_t D, T eps, int64_t begin, int64_t end) {             \
    ln_mish_segments<T>(src, se, sn, dst, bias, gamma, beta, N, D, eps, begin, end);                               \
  }                                                                                                                 \
  inline void ln_mish(const T* src, int64_t se, int64_t sn, T* dst, const T* bias, const T* gamma, const T* beta,  \
                      int64_t N, int64_t D, T eps, int64_t begin, int64_t end) {                                    \
    NAME(src, se, sn, dst, bias, gamma, beta, N, D, eps, begin, end);                                              \
  }
CDRED_DEFINE_LN_MISH(ln_mish_f, float)
CDRED_DEFINE_LN_MISH(ln_mish_d, double)
#undef CDRED_DEFINE_LN_MISH

// Elementwise Mish of the epilogue (same inlined arithmetic), for the accuracy
// test of python_tests/test_rnd_ops.py: private op cdred_fast::_rnd_mish.
CDRED_CPU_CLONES void mish_f(const float* x, float* y, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = mish<float>(x[i]);
}
CDRED_CPU_CLONES void mish_d(const double* x, double* y, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = mish<double>(x[i]);
}

inline void mish_elementwise(const float* x, float* y, int64_t b, int64_t e) { mish_f(x, y, b, e); }
inline void mish_elementwise(const double* x, double* y, int64_t b, int64_t e) { mish_d(x, y, b, e); }

void epilogue_cpu(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                  const at::Tensor& beta, double eps) {
  const int64_t E = dst.size(0), N = dst.size(1), D = dst.size(2);
  // ~32k elements per task: small batches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / D);
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cdred_fast_ensemble_mlp_cpu", [&] {
    const scalar_t* in = src.data_ptr<scalar_t>();
    const int64_t se = src.stride(0), sn = src.stride(1);
    scalar_t* out = dst.data_ptr<scalar_t>();
    const scalar_t* cp = bias.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, E * N, grain, [&](int64_t begin, int64_t end) {
      ln_mish(in, se, sn, out, cp, gp, bp, N, D, e, begin, end);
    });
  });
}

at::Tensor ensemble_mlp_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                            at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                            const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_mlp";
  const EnsembleShape s = check_ensemble_mlp_inputs(op, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": CPU kernel called with tensors on ", x.device());
  // The inner ATen calls (out= GEMMs) must not record autograd history; the
  // op's gradient is registered in cdred_fast/ops.py.
  const at::AutoDispatchBelowADInplaceOrView guard;
  return ensemble_mlp_forward(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared, epilogue_cpu);
}

// Tiles of the last layer's outputs small enough to stay in a core's L2 cache
// between the GEMM that writes them and the reward that reads them.
constexpr int64_t kRewardTileBytes = 512 * 1024;

at::Tensor ensemble_reward_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                               at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                               const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, double alpha,
                               double zeta, double sigma, c10::string_view g, double eps,
                               const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_reward";
  TORCH_CHECK_VALUE(!x.defined() || x.device().is_cpu(), op, ": CPU kernel called with tensors on ", x.device());
  const at::AutoDispatchBelowADInplaceOrView guard;
  return ensemble_reward_forward(op, x, weights, biases, ln_weights, ln_biases, ln_eps, pred_expert, pred_behavioral,
                                 alpha, zeta, sigma, g, eps, x_shared, kRewardTileBytes, epilogue_cpu);
}

at::Tensor rnd_mish_cpu(const at::Tensor& x_in) {
  constexpr const char* op = "cdred_fast::_rnd_mish";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
                   ": argument 'x' must be float32 or float64, got ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_rnd_mish_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) { mish_elementwise(xp, yp, begin, end); });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CPU, m) {
  m.impl("ensemble_mlp", &ensemble_mlp_cpu);
  m.impl("ensemble_reward", &ensemble_reward_cpu);
  m.impl("_rnd_mish", &rnd_mish_cpu);
}

}  // namespace cdred
