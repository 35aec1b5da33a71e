// CPU kernel of the LayerNorm -> Mish rows (common/ln_mish.h has the contract).
//
// Rows split across threads with at::parallel_for; per row two vectorised loops:
//   pass 1: v = src (+ bias), stored in dst when a bias is added (in place or
//           the transposing read of the rnd epilogue), and the sums of v - v_0
//           and (v - v_0)^2 (one loop with a reduction); a row whose squared sum
//           is not finite gets its statistics from scaled values instead;
//   pass 2: dst <- Mish((v - mean) * rstd * gamma + beta), Mish with the
//           polynomial exp of ln_mish_math.h, so the loop vectorises.
// bfloat16 rows (forward only) are widened to float32, run through the same row
// code, and rounded once on the way out.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <vector>

#include "common/ln_mish.h"
#include "common/ln_mish_math.h"
#include "common/macros.h"

namespace cdred {
namespace {

// The row's statistics from scaled values (ln_mish_math.h), when its shifted sums
// overflowed or it holds inf or NaN: two plain loops, taken for such rows only.
template <typename T>
__attribute__((noinline)) LnStats<T> ln_stats_scaled(const T* v, int64_t D, T inv_d, T eps) {
  const T c = ln_row_scale<T>();
  T m = 0;
  for (int64_t j = 0; j < D; ++j) m += v[j] * c;
  const T mc = m * inv_d;
  T q = 0;
  for (int64_t j = 0; j < D; ++j) {
    const T w = v[j] * c - mc;
    q += w * w;
  }
  return ln_stats_from_scaled_sums<T>(mc, q, inv_d, eps);
}

// Rows [begin, end) of the [E, N] grid: row s = e * N + n reads
// src + e * src_se + n * src_sn and writes dst + s * D.
template <typename T, bool kBias, bool kStats>
__attribute__((always_inline)) inline void ln_mish_rows(const T* src, int64_t src_se, int64_t src_sn, T* dst,
                                                        const T* bias, const T* gamma, const T* beta, T* mean_out,
                                                        T* rstd_out, int64_t N, int64_t D, T eps, int64_t begin,
                                                        int64_t end) {
  const T inv_d = T(1) / T(D);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = s / N, n = s % N;
    const T* in = src + e * src_se + n * src_sn;
    T* out = dst + s * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T* c = kBias ? bias + e * D : nullptr;
    T v0;
    if constexpr (kBias) {
      v0 = in[0] + c[0];
    } else {
      v0 = in[0];
    }
    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < D; ++j) {
      T vj;
      if constexpr (kBias) {
        vj = in[j] + c[j];  // the Linear's bias
        out[j] = vj;
      } else {
        vj = in[j];
      }
      const T u = vj - v0;
      s1 += u;
      s2 += u * u;
    }
    const T* v = kBias ? out : in;  // pass 1 stored v in dst when it added the bias
    const LnStats<T> st = __builtin_expect(ln_shifted_sums_ok<T>(s2), 1)
                              ? ln_stats_from_shifted_sums<T>(v0, s1, s2, inv_d, eps)
                              : ln_stats_scaled<T>(v, D, inv_d, eps);
    const T mean = st.mean, rstd = st.rstd;
    if constexpr (kStats) {
      mean_out[s] = mean;
      rstd_out[s] = rstd;
    }
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) out[j] = ln_affine_mish<T>(v[j], mean, rstd, g[j], b[j]);
  }
}

// Non-template entry points, one name per dtype, cloned per CPU target
// (target_clones does not apply to templates); the bias / statistics variant is
// chosen once per call.
#define CDRED_DEFINE_LN_MISH_ROWS(NAME, T)                                                                    \
  CDRED_CPU_CLONES void NAME(const T* src, int64_t se, int64_t sn, T* dst, const T* bias, const T* gamma,     \
                             const T* beta, T* mean, T* rstd, int64_t N, int64_t D, T eps, int64_t begin,     \
                             int64_t end) {                                                                   \
    if (bias != nullptr) {                                                                                    \
      if (mean != nullptr) {                                                                                  \
        ln_mish_rows<T, true, true>(src, se, sn, dst, bias, gamma, beta, mean, rstd, N, D, eps, begin, end);  \
      } else {                                                                                                \
        ln_mish_rows<T, true, false>(src, se, sn, dst, bias, gamma, beta, mean, rstd, N, D, eps, begin, end); \
      }                                                                                                       \
    } else if (mean != nullptr) {                                                                             \
      ln_mish_rows<T, false, true>(src, se, sn, dst, bias, gamma, beta, mean, rstd, N, D, eps, begin, end);   \
    } else {                                                                                                  \
      ln_mish_rows<T, false, false>(src, se, sn, dst, bias, gamma, beta, mean, rstd, N, D, eps, begin, end);  \
    }                                                                                                         \
  }                                                                                                           \
  inline void ln_mish_rows_any(const T* src, int64_t se, int64_t sn, T* dst, const T* bias, const T* gamma,   \
                               const T* beta, T* mean, T* rstd, int64_t N, int64_t D, T eps, int64_t begin,   \
                               int64_t end) {                                                                 \
    NAME(src, se, sn, dst, bias, gamma, beta, mean, rstd, N, D, eps, begin, end);                             \
  }
CDRED_DEFINE_LN_MISH_ROWS(ln_mish_rows_f, float)
CDRED_DEFINE_LN_MISH_ROWS(ln_mish_rows_d, double)
#undef CDRED_DEFINE_LN_MISH_ROWS

// bfloat16 rows (the forward-only planning form of the rnd ops): each row is widened to
// float32 in a per-task scratch row, normalised by the float32 row code above with the
// float32 copies of bias / gamma / beta, and rounded to bfloat16 once on the way out (in
// place is safe: a row is read whole before it is written). No row statistics.
CDRED_CPU_CLONES void ln_mish_rows_bf16(const c10::BFloat16* src, int64_t se, int64_t sn, c10::BFloat16* dst,
                                        const float* bias, const float* gamma, const float* beta, int64_t N, int64_t D,
                                        float eps, int64_t begin, int64_t end) {
  std::vector<float> v(D), y(D);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = s / N, n = s % N;
    const c10::BFloat16* in = src + e * se + n * sn;
    for (int64_t j = 0; j < D; ++j) v[j] = static_cast<float>(in[j]);
    if (bias != nullptr) {
      ln_mish_rows<float, true, false>(v.data(), 0, 0, y.data(), bias + e * D, gamma + e * D, beta + e * D, nullptr,
                                       nullptr, 1, D, eps, 0, 1);
    } else {
      ln_mish_rows<float, false, false>(v.data(), 0, 0, y.data(), nullptr, gamma + e * D, beta + e * D, nullptr,
                                        nullptr, 1, D, eps, 0, 1);
    }
    c10::BFloat16* out = dst + s * D;
    for (int64_t j = 0; j < D; ++j) out[j] = c10::BFloat16(y[j]);
  }
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void launch_ln_mish_cpu(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                        const at::Tensor& beta, double eps, const at::Tensor& mean_out, const at::Tensor& rstd_out) {
  const int64_t E = dst.size(0), N = dst.size(1), D = dst.size(2);
  // ~32k elements per task: small batches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / D);
  if (dst.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(!mean_out.defined() && !rstd_out.defined(),
                "cdred_fast: the bfloat16 LayerNorm -> Mish rows keep no statistics (forward-only planning form)");
    const at::Tensor cf = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor gf = gamma.to(at::kFloat).contiguous(), bf = beta.to(at::kFloat).contiguous();
    const c10::BFloat16* in = src.data_ptr<c10::BFloat16>();
    const int64_t se = src.stride(0), sn = src.stride(1);
    c10::BFloat16* out = dst.data_ptr<c10::BFloat16>();
    const float* cp = data_or_null<float>(cf);
    const float* gp = gf.data_ptr<float>();
    const float* bp = bf.data_ptr<float>();
    const float e = static_cast<float>(eps);
    at::parallel_for(0, E * N, grain, [&](int64_t begin, int64_t end) {
      ln_mish_rows_bf16(in, se, sn, out, cp, gp, bp, N, D, e, begin, end);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cdred_fast_ln_mish_cpu", [&] {
    const scalar_t* in = src.data_ptr<scalar_t>();
    const int64_t se = src.stride(0), sn = src.stride(1);
    scalar_t* out = dst.data_ptr<scalar_t>();
    const scalar_t* cp = data_or_null<scalar_t>(bias);
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    scalar_t* mp = data_or_null<scalar_t>(mean_out);
    scalar_t* rp = data_or_null<scalar_t>(rstd_out);
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, E * N, grain, [&](int64_t begin, int64_t end) {
      ln_mish_rows_any(in, se, sn, out, cp, gp, bp, mp, rp, N, D, e, begin, end);
    });
  });
}

}  // namespace cdred
