// CPU kernels of layernorm_mish and its backward (block_math.h has the formulas).
//
// Forward: one task per range of rows (at::parallel_for), per row two
// vectorised loops: the shifted sums, then y = Mish(xhat * gamma + beta).
// Backward: one task per chunk of kRowsPerChunk rows of one member. Per row:
//   pass 1: gu = grad_y * Mish'(u); grad_x <- gu * gamma (stashed), the row sums
//           of gxh and gxh * xhat, and the chunk's partial grad_gamma / grad_beta;
//   pass 2: grad_x <- rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat)).
// Then grad_gamma / grad_beta sum the chunks' partials in chunk order (a fixed
// order: the result does not depend on the number of threads).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "block/block_math.h"
#include "common/macros.h"

namespace cdred {
namespace {

template <typename T>
__attribute__((always_inline)) inline void forward_rows(const T* x, T* y, T* mean_out, T* rstd_out, const T* gamma,
                                                        const T* beta, int64_t M, int64_t D, T eps, int64_t begin,
                                                        int64_t end) {
  const T inv_d = T(1) / T(D);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = s / M;
    const T* v = x + s * D;
    T* out = y + s * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T v0 = v[0];
    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < D; ++j) {
      const T u = v[j] - v0;
      s1 += u;
      s2 += u * u;
    }
    const LnStats<T> st = ln_stats_from_shifted_sums<T>(v0, s1, s2, inv_d, eps);
    const T mean = st.mean, rstd = st.rstd;
    mean_out[s] = mean;
    rstd_out[s] = rstd;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) out[j] = ln_affine_mish<T>(v[j], mean, rstd, g[j], b[j]);
  }
}

// Rows [r0, r1) of member e; pg / pb: this chunk's partial sums (D each, zeroed here).
template <typename T>
__attribute__((always_inline)) inline void backward_chunk(const T* gy, const T* x, const T* mean, const T* rstd,
                                                          const T* gamma, const T* beta, T* gx, T* pg, T* pb,
                                                          int64_t M, int64_t D, int64_t e, int64_t r0, int64_t r1) {
  const T inv_d = T(1) / T(D);
  const T* g = gamma + e * D;
  const T* b = beta + e * D;
  for (int64_t j = 0; j < D; ++j) pg[j] = pb[j] = T(0);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = e * M + r;
    const T* xr = x + s * D;
    const T* gyr = gy + s * D;
    T* gxr = gx + s * D;
    const T mu = mean[s], rs = rstd[s];
    T a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
    for (int64_t j = 0; j < D; ++j) {
      const T xh = (xr[j] - mu) * rs;
      const T gu = block_grad_u<T>(gyr[j], xh, g[j], b[j]);
      pg[j] += gu * xh;
      pb[j] += gu;
      const T gxh = gu * g[j];
      gxr[j] = gxh;
      a1 += gxh;
      a2 += gxh * xh;
    }
    const T c1 = a1 * inv_d, c2 = a2 * inv_d;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) {
      const T xh = (xr[j] - mu) * rs;
      gxr[j] = rs * (gxr[j] - c1 - xh * c2);
    }
  }
}

// Vectorised per-ISA clones (target_clones does not apply to templates).
#define CDRED_DEFINE_BLOCK(SUFFIX, T)                                                                              \
  CDRED_CPU_CLONES void forward_rows_##SUFFIX(const T* x, T* y, T* mean, T* rstd, const T* gamma, const T* beta,   \
                                              int64_t M, int64_t D, T eps, int64_t begin, int64_t end) {           \
    forward_rows<T>(x, y, mean, rstd, gamma, beta, M, D, eps, begin, end);                                         \
  }                                                                                                                \
  CDRED_CPU_CLONES void backward_chunk_##SUFFIX(const T* gy, const T* x, const T* mean, const T* rstd,             \
                                                const T* gamma, const T* beta, T* gx, T* pg, T* pb, int64_t M,     \
                                                int64_t D, int64_t e, int64_t r0, int64_t r1) {                    \
    backward_chunk<T>(gy, x, mean, rstd, gamma, beta, gx, pg, pb, M, D, e, r0, r1);                                \
  }                                                                                                                \
  inline void forward_rows_any(const T* x, T* y, T* mean, T* rstd, const T* gamma, const T* beta, int64_t M,       \
                               int64_t D, T eps, int64_t begin, int64_t end) {                                     \
    forward_rows_##SUFFIX(x, y, mean, rstd, gamma, beta, M, D, eps, begin, end);                                   \
  }                                                                                                                \
  inline void backward_chunk_any(const T* gy, const T* x, const T* mean, const T* rstd, const T* gamma,            \
                                 const T* beta, T* gx, T* pg, T* pb, int64_t M, int64_t D, int64_t e, int64_t r0,  \
                                 int64_t r1) {                                                                     \
    backward_chunk_##SUFFIX(gy, x, mean, rstd, gamma, beta, gx, pg, pb, M, D, e, r0, r1);                          \
  }
CDRED_DEFINE_BLOCK(f, float)
CDRED_DEFINE_BLOCK(d, double)
#undef CDRED_DEFINE_BLOCK

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_cpu(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                                                  const at::Tensor& beta_in, double eps) {
  constexpr const char* op = "cdred_fast::layernorm_mish";
  const BlockShape sh = check_layernorm_mish_inputs(op, x_in, gamma_in, beta_in, eps);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), op, ": CPU kernel called with tensors on ", x_in.device());
  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({sh.E, sh.M}, x.options());
  at::Tensor rstd = at::empty({sh.E, sh.M}, x.options());
  const int64_t rows = sh.E * sh.M;
  const int64_t grain = std::max<int64_t>(1, 32768 / sh.D);  // ~32k elements per task
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_layernorm_mish_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      forward_rows_any(xp, yp, mp, rp, gp, bp, sh.M, sh.D, e, begin, end);
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_mish_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    const at::Tensor& gamma_in, const at::Tensor& beta_in) {
  constexpr const char* op = "cdred_fast::layernorm_mish_backward";
  const BlockShape sh = check_layernorm_mish_backward_inputs(op, grad_y_in, x_in, mean_in, rstd_in, gamma_in, beta_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), op, ": CPU kernel called with tensors on ", x_in.device());
  const at::Tensor gy = grad_y_in.contiguous(), x = x_in.contiguous(), mean = mean_in.contiguous(),
                   rstd = rstd_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const int64_t E = sh.E, M = sh.M, D = sh.D;
  const int64_t chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;  // per member
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gamma = at::empty({E, D}, x.options());
  at::Tensor grad_beta = at::empty({E, D}, x.options());
  at::Tensor part_g = at::empty({E, chunks, D}, x.options());
  at::Tensor part_b = at::empty({E, chunks, D}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_layernorm_mish_backward_cpu", [&] {
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* rp = rstd.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* pgp = part_g.data_ptr<scalar_t>();
    scalar_t* pbp = part_b.data_ptr<scalar_t>();
    at::parallel_for(0, E * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t e = t / chunks, c = t % chunks;
        const int64_t r0 = c * kRowsPerChunk, r1 = std::min(M, r0 + kRowsPerChunk);
        backward_chunk_any(gyp, xp, mp, rp, gp, bp, gxp, pgp + t * D, pbp + t * D, M, D, e, r0, r1);
      }
    });
    scalar_t* ggp = grad_gamma.data_ptr<scalar_t>();
    scalar_t* gbp = grad_beta.data_ptr<scalar_t>();
    at::parallel_for(0, E * D, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t e = i / D, j = i % D;
        scalar_t sg = 0, sb = 0;
        for (int64_t c = 0; c < chunks; ++c) {  // chunk order: independent of the thread count
          sg += pgp[(e * chunks + c) * D + j];
          sb += pbp[(e * chunks + c) * D + j];
        }
        ggp[i] = sg;
        gbp[i] = sb;
      }
    });
  });
  return {grad_x, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CPU, m) {
  m.impl("layernorm_mish", &layernorm_mish_cpu);
  m.impl("layernorm_mish_backward", &layernorm_mish_backward_cpu);
}

}  // namespace cdred
