// CPU kernel of the private op _rnd_mish: the epilogue's Mish (with the
// polynomial exp of common/ln_mish_math.h) elementwise, for the accuracy test of
// python_tests/test_rnd_ops.py. rnd/front.cpp calls launch_mish_cpu.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include "common/ln_mish_math.h"
#include "common/macros.h"
#include "rnd/launch.h"

namespace cdred {
namespace {

// Non-template entry points so the compiler can clone them per CPU target.
CDRED_CPU_CLONES void mish_f(const float* x, float* y, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = mish<float>(x[i]);
}
CDRED_CPU_CLONES void mish_d(const double* x, double* y, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = mish<double>(x[i]);
}

inline void mish_elementwise(const float* x, float* y, int64_t b, int64_t e) {
  mish_f(x, y, b, e);
}
inline void mish_elementwise(const double* x, double* y, int64_t b, int64_t e) {
  mish_d(x, y, b, e);
}

}  // namespace

void launch_mish_cpu(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_rnd_mish_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) { mish_elementwise(xp, yp, begin, end); });
  });
}

}  // namespace cdred
