// CUDA kernel of ensemble_mlp (SPEC section 2: the K random targets and the two
// predictors; SPEC section 0: Block = Linear -> LayerNorm -> Mish).
//
// GEMMs through ATen (cuBLAS on the GPU machine), scheduled by
// ensemble_mlp_forward in rnd_math.h exactly as on the CPU (one GEMM for all
// members when the rows are shared, the x_shared part folded into the first
// layer's bias, one bmm per later layer). After every hidden Linear (a GEMM
// without bias) one fused epilogue kernel: one warp per (member, row) segment
// of D values,
//   pass 1: each lane adds the bias to its strided elements (v <- src + b,
//           stored in the [E, N, D] activation buffer: in place, except after
//           the first layer's shared-rows GEMM, whose [N, E, D] output is
//           transposed here) and sums v - v_0 and (v - v_0)^2; a butterfly
//           (xor) warp shuffle gives every lane the row sums;
//   pass 2: v <- Mish((v - mean) * rstd * gamma + beta), Mish with expf / exp
//           (the CUDA math library: max 2 ulp / 1 ulp; see rnd_math.h).
// The second pass re-reads the segment (at most a few KB, from L1/L2). All
// launches use the current CUDA stream; nothing synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "common/cuda_utils.cuh"
#include "rnd/rnd_math.h"

namespace cdred {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 65535;

// One warp per (member, row) segment s = e * N + n of the [E, N] grid: reads
// src + e * src_se + n * src_sn, writes dst + s * D (possibly the same memory:
// in place, each element j is read and then written by the same lane, except
// element 0, which every lane reads for the shift v0; see the __syncwarp below).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ln_mish_kernel(const T* src, int64_t src_se, int64_t src_sn, T* dst, const T* __restrict__ bias,
                   const T* __restrict__ gamma, const T* __restrict__ beta, int64_t E, int64_t N, int64_t D, T eps) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const int64_t segments = E * N;
  const T inv_d = T(1) / T(D);
  for (int64_t s = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; s < segments; s += warps) {
    const int64_t e = s / N, n = s % N;
    const T* in = src + e * src_se + n * src_sn;
    T* v = dst + s * D;
    const T* c = bias + e * D;
    const T* g = gamma + e * D;
    const T* b = beta + e * D;
    const T v0 = in[0] + c[0];
    // In place (dst aliases src), lane 0 overwrites in[0] with v0 in the loop
    // below. Lanes of a warp are not guaranteed to run in lockstep (independent
    // thread scheduling since Volta), so without a barrier another lane could
    // read in[0] after that store and add the bias twice. __syncwarp() makes
    // every lane's read of in[0] happen before any lane's first store (it also
    // orders the memory accesses of the warp's lanes).
    __syncwarp();
    T s1 = 0, s2 = 0;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const T vj = in[j] + c[j];  // the Linear's bias
      v[j] = vj;
      const T u = vj - v0;
      s1 += u;
      s2 += u * u;
    }
    s1 = warp_allsum(s1);
    s2 = warp_allsum(s2);
    const LnStats<T> st = ln_stats_from_shifted_sums<T>(v0, s1, s2, inv_d, eps);
    for (int64_t j = lane; j < D; j += kWarpSize) v[j] = ln_affine_mish<T>(v[j], st.mean, st.rstd, g[j], b[j]);
  }
}

template <typename T>
__global__ void mish_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = mish<T>(x[i]);
}

void epilogue_cuda(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bias, const at::Tensor& gamma,
                   const at::Tensor& beta, double eps) {
  const int64_t E = dst.size(0), N = dst.size(1), D = dst.size(2);
  const int64_t segments = E * N;
  if (segments == 0) return;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((segments + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cdred_fast_ensemble_mlp_cuda", [&] {
    ln_mish_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), src.stride(0), src.stride(1), dst.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
        gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), E, N, D, static_cast<scalar_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor ensemble_mlp_cuda(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                             at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                             const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_mlp";
  const EnsembleShape s = check_ensemble_mlp_inputs(op, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared);
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": CUDA kernel called with 'x' on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  // The inner ATen calls (out= GEMMs) must not record autograd history; the
  // op's gradient is registered in cdred_fast/ops.py.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return ensemble_mlp_forward(s, x, weights, biases, ln_weights, ln_biases, ln_eps, x_shared, epilogue_cuda);
}

// One tile for any planning batch (the outputs live in L2 on a GPU anyway); the
// bound only caps the buffer for very large N.
constexpr int64_t kRewardTileBytes = 64LL * 1024 * 1024;

at::Tensor ensemble_reward_cuda(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                at::TensorList ln_weights, at::TensorList ln_biases, double ln_eps,
                                const at::Tensor& pred_expert, const at::Tensor& pred_behavioral, double alpha,
                                double zeta, double sigma, c10::string_view g, double eps,
                                const std::optional<at::Tensor>& x_shared) {
  constexpr const char* op = "cdred_fast::ensemble_reward";
  TORCH_CHECK_VALUE(!x.defined() || x.is_cuda(), op, ": CUDA kernel called with 'x' on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return ensemble_reward_forward(op, x, weights, biases, ln_weights, ln_biases, ln_eps, pred_expert, pred_behavioral,
                                 alpha, zeta, sigma, g, eps, x_shared, kRewardTileBytes, epilogue_cuda);
}

at::Tensor rnd_mish_cuda(const at::Tensor& x_in) {
  constexpr const char* op = "cdred_fast::_rnd_mish";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
                   ": argument 'x' must be float32 or float64, got ", x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cdred_fast_rnd_mish_cuda", [&] {
    mish_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdred_fast, CUDA, m) {
  m.impl("ensemble_mlp", &ensemble_mlp_cuda);
  m.impl("ensemble_reward", &ensemble_reward_cuda);
  m.impl("_rnd_mish", &rnd_mish_cuda);
}

}  // namespace cdred
