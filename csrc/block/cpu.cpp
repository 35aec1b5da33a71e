// CPU kernel of layernorm_mish_backward (block_math.h has the formulas);
// block/front.cpp validates the inputs and calls the launcher.
//
// One task per chunk of kRowsPerChunk rows of one member. Per row:
//   pass 1: gu = grad_y * Mish'(u); grad_x <- gu * gamma (stashed), the row sums
//           of gxh and gxh * xhat, and the chunk's partial grad_gamma / grad_beta;
//   pass 2: grad_x <- rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat)).
// Then grad_gamma / grad_beta sum the chunks' partials in chunk order (a fixed
// order: the result does not depend on the number of threads).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>

#include "block/block_math.h"
#include "block/launch.h"
#include "common/macros.h"

namespace cdred {
namespace {

// Rows [r0, r1) of member e; pg / pb: this chunk's partial sums (D each, zeroed here).
template <typename T>
__attribute__((always_inline)) inline void backward_chunk(const T* gy, const T* x, const T* mean, const T* rstd,
                                                          const T* gamma, const T* beta, T* gx, T* pg, T* pb, int64_t M,
                                                          int64_t D, int64_t e, int64_t r0, int64_t r1) {
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
#define CDRED_DEFINE_BLOCK(SUFFIX, T)                                                                                  \
  CDRED_CPU_CLONES void backward_chunk_##SUFFIX(const T* gy, const T* x, const T* mean, const T* rstd, const T* gamma, \
                                                const T* beta, T* gx, T* pg, T* pb, int64_t M, int64_t D, int64_t e,   \
                                                int64_t r0, int64_t r1) {                                              \
    backward_chunk<T>(gy, x, mean, rstd, gamma, beta, gx, pg, pb, M, D, e, r0, r1);                                    \
  }                                                                                                                    \
  inline void backward_chunk_any(const T* gy, const T* x, const T* mean, const T* rstd, const T* gamma, const T* beta, \
                                 T* gx, T* pg, T* pb, int64_t M, int64_t D, int64_t e, int64_t r0, int64_t r1) {       \
    backward_chunk_##SUFFIX(gy, x, mean, rstd, gamma, beta, gx, pg, pb, M, D, e, r0, r1);                              \
  }
CDRED_DEFINE_BLOCK(f, float)
CDRED_DEFINE_BLOCK(d, double)
#undef CDRED_DEFINE_BLOCK

}  // namespace

void launch_layernorm_mish_backward_cpu(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean,
                                        const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta,
                                        const at::Tensor& grad_x, const at::Tensor& grad_gamma,
                                        const at::Tensor& grad_beta, const at::Tensor& part_g,
                                        const at::Tensor& part_b) {
  const int64_t E = x.size(0), M = x.size(1), D = x.size(2);
  const int64_t chunks = part_g.size(1);  // per member
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
}

}  // namespace cdred
