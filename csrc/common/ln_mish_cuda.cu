// CUDA kernel of the LayerNorm -> Mish rows (common/ln_mish.h has the contract).
//
// One warp per row of D values:
//   pass 1: each lane reads its strided elements, v = src (+ bias), and sums
//           v - v_0 and (v - v_0)^2; a butterfly (xor) warp shuffle gives every
//           lane the row sums (a row whose squared sum is not finite gets its
//           statistics from scaled values instead);
//   pass 2: each lane forms its own v again and writes
//           dst <- Mish((v - mean) * rstd * gamma + beta), Mish with expf / exp
//           (the CUDA math library: max 2 ulp / 1 ulp; see ln_mish_math.h).
// Values are computed in acc_t: the storage type for float32 / float64, float32
// for bfloat16 rows (the rnd ops' planning form, no statistics), which are
// widened on load and rounded once on the store, as on the CPU. The second pass
// re-reads the row (at most a few KB, from L1/L2). Launched on the current CUDA
// stream; nothing synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/ln_mish.h"
#include "common/ln_mish_math.h"

namespace cdred {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 65535;

// Row s = e * N + n of the [E, N] grid reads src + e * src_se + n * src_sn and
// writes dst + s * D. src and dst may be the same memory: in place, element j
// is read and then written by the same lane, except element 0, which every lane
// reads for the shift v0 (see the __syncwarp below). T is the storage type,
// A the type every value is computed in (T, or float for bfloat16).
template <typename T, typename A, bool kBias, bool kStats>
__global__ void __launch_bounds__(kThreads)
    ln_mish_kernel(const T* src, int64_t src_se, int64_t src_sn, T* dst, const T* __restrict__ bias,
                   const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ mean_out,
                   T* __restrict__ rstd_out, int64_t E, int64_t N, int64_t D, A eps) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const int64_t rows = E * N;
  const A inv_d = A(1) / A(D);
  for (int64_t s = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; s < rows; s += warps) {
    const int64_t e = s / N, n = s % N;
    const T* in = src + e * src_se + n * src_sn;
    T* out = dst + s * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T* c = kBias ? bias + e * D : nullptr;
    // v_j: the input plus the Linear's bias, in A (both passes form it from src, so nothing is
    // rounded to T before the statistics, and pass 1 writes nothing)
    const auto value = [&](int64_t j) -> A {
      if constexpr (kBias) {
        return static_cast<A>(in[j]) + static_cast<A>(c[j]);
      } else {
        return static_cast<A>(in[j]);
      }
    };
    const A v0 = value(0);
    // In place (dst aliases src), lane 0 overwrites in[0] in pass 2. Lanes of a warp are not
    // guaranteed to run in lockstep (independent thread scheduling since Volta); the barrier
    // makes every lane's read of in[0] happen before any lane's store (the shuffles of pass 1
    // order them as well) and orders the memory accesses of the warp's lanes.
    __syncwarp();
    A s1 = 0, s2 = 0;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const A u = value(j) - v0;
      s1 += u;
      s2 += u * u;
    }
    s1 = warp_allsum(s1);
    s2 = warp_allsum(s2);
    LnStats<A> st;
    if (ln_shifted_sums_ok<A>(s2)) {  // s2 is the same in every lane: the branch is warp-uniform
      st = ln_stats_from_shifted_sums<A>(v0, s1, s2, inv_d, eps);
    } else {  // overflowed squares, or inf / NaN in the row: statistics from scaled values
      const A k = ln_row_scale<A>();
      A m = 0;
      for (int64_t j = lane; j < D; j += kWarpSize) m += value(j) * k;
      const A mc = warp_allsum(m) * inv_d;
      A q = 0;
      for (int64_t j = lane; j < D; j += kWarpSize) {
        const A w = value(j) * k - mc;
        q += w * w;
      }
      st = ln_stats_from_scaled_sums<A>(mc, warp_allsum(q), inv_d, eps);
    }
    if constexpr (kStats) {
      if (lane == 0) {
        mean_out[s] = static_cast<T>(st.mean);
        rstd_out[s] = static_cast<T>(st.rstd);
      }
    }
    for (int64_t j = lane; j < D; j += kWarpSize) {
      out[j] =
          static_cast<T>(ln_affine_mish<A>(value(j), st.mean, st.rstd, static_cast<A>(g[j]), static_cast<A>(b[j])));
    }
  }
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void launch_ln_mish_cuda(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                         const at::Tensor& beta, double eps, const at::Tensor& mean_out, const at::Tensor& rstd_out) {
  const int64_t E = dst.size(0), N = dst.size(1), D = dst.size(2);
  const int64_t rows = E * N;
  if (rows == 0) return;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool with_bias = bias.defined(), with_stats = mean_out.defined();
  TORCH_CHECK(dst.scalar_type() != at::kBFloat16 || !with_stats,
              "cdred_fast: the bfloat16 LayerNorm -> Mish rows keep no statistics (forward-only planning form)");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dst.scalar_type(), "cdred_fast_ln_mish_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, float, scalar_t>;
    const auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreads, 0, stream>>>(
          src.data_ptr<scalar_t>(), src.stride(0), src.stride(1), dst.data_ptr<scalar_t>(),
          data_or_null<scalar_t>(bias), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
          data_or_null<scalar_t>(mean_out), data_or_null<scalar_t>(rstd_out), E, N, D, static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (with_bias) {
      with_stats ? launch(ln_mish_kernel<scalar_t, acc_t, true, true>)
                 : launch(ln_mish_kernel<scalar_t, acc_t, true, false>);
    } else {
      with_stats ? launch(ln_mish_kernel<scalar_t, acc_t, false, true>)
                 : launch(ln_mish_kernel<scalar_t, acc_t, false, false>);
    }
  });
}

}  // namespace cdred
