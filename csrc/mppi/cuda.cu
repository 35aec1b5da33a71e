// CUDA kernels of the MPPI planning ops (SPEC section 4). mppi/front.cpp
// validates the inputs, sets the device, draws the random numbers and calls the
// launchers.
//
// mppi_sample / mppi_select: a single element-wise kernel applies mul-add-clamp
// in place on the noise buffer the front drew. mppi_select reads the drawn
// elite index on the device: nothing is copied to the host, so a plan can be
// recorded in a CUDA graph.
//
// mppi_elite_update: one block per batch problem.
//   1. Top-k: the N (value, index) pairs are sorted in shared memory with a
//      bitonic network (padded to a power of two P >= N) under a strict total
//      order: value descending, candidate index ascending. The first k entries
//      are the elites, best first: exactly a stable descending sort.
//   2. Softmax weights of the k elites with two block reductions.
//   3. The elite actions are gathered (coalesced writes), then one warp per
//      (h, a) pair forms the weighted mean and the weighted variance.
// Shared memory is 12 bytes per padded candidate (a 64-bit key and a 32-bit
// index). When P * 12 bytes exceeds the device's per-block opt-in limit
// (N > 16384 on H100, N > 8192 on A100, N > 4096 on V100), the kernel falls back
// to at::sort (stable, descending) for the order and runs steps 2-3 unchanged.
// Every launch uses the current CUDA stream; nothing synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common/cuda_utils.cuh"
#include "mppi/launch.h"
#include "mppi/mppi_math.h"

namespace cdred {
namespace {

constexpr int kElementwiseThreads = 256;
constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / kWarpSize;
constexpr int64_t kSortBytesPerCandidate = sizeof(uint64_t) + sizeof(uint32_t);
// Index of the padding entries of the sort; they carry the smallest key (0), which
// no real candidate has (even -inf maps to a non-zero key), so they sort last.
constexpr uint32_t kPadIndex = kEliteSortPadIndex;

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kElementwiseThreads - 1) / kElementwiseThreads, 65536));
}

// ----------------------------------------------------------------------------- mppi_sample
// x[b, h, m, a] <- clamp(mean[b, h, a] + std[b, h, a] * x[b, h, m, a], -1, 1), in place.
template <typename scalar_t>
__global__ void sample_kernel(const scalar_t* __restrict__ mean, const scalar_t* __restrict__ stdev,
                              scalar_t* __restrict__ x, int64_t numel, int64_t M, int64_t A) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = i % A;
    const int64_t bh = i / (M * A);
    x[i] = clamp_keep_nan<scalar_t>(mul_add_rounded(mean[bh * A + a], stdev[bh * A + a], x[i]), -1, 1);
  }
}

// ----------------------------------------------------------------------------- mppi_elite_update
// Sum of `v` over the block, returned to every thread. `red` holds kMaxWarps + 1
// values. Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t block_sum_all(acc_t v, acc_t* red) {
  acc_t vals[1] = {v};
  block_sum<acc_t, 1>(vals, red);
  if (threadIdx.x == 0) red[kMaxWarps] = vals[0];
  __syncthreads();
  const acc_t total = red[kMaxWarps];
  __syncthreads();  // `red` may be reused right after
  return total;
}

// Whether candidate (kj, ij) must come before (ki, ii): larger key, then smaller index.
__device__ inline bool key_before(uint64_t kj, uint32_t ij, uint64_t ki, uint32_t ii) {
  return kj > ki || (kj == ki && ij < ii);
}

// Bitonic sort of P (a power of two) entries in shared memory, best first.
__device__ void bitonic_sort_best_first(uint64_t* keys, uint32_t* ids, int P) {
  const int half = P / 2;
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < half; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));  // first element of the pair
        const int j = i + stride;
        // Runs of length `size` alternate direction; the last merge is best-first throughout.
        const bool best_first = (i & size) == 0;
        const uint64_t ki = keys[i], kj = keys[j];
        const uint32_t ii = ids[i], ij = ids[j];
        if (key_before(kj, ij, ki, ii) == best_first) {
          keys[i] = kj;
          keys[j] = ki;
          ids[i] = ij;
          ids[j] = ii;
        }
      }
      __syncthreads();
    }
  }
}

struct EliteArgs {
  int64_t H, N, A, k;
  int P;  // padded sort length (unused when presorted)
  double temperature, min_std, max_std;
};

// One block per batch problem. kPresorted: the elite order comes from `order`
// ([B, N] indices of a stable descending sort) instead of the in-block sort.
template <typename scalar_t, bool kPresorted>
__global__ void __launch_bounds__(kMaxThreads)
    elite_update_kernel(const scalar_t* __restrict__ values, const scalar_t* __restrict__ actions,
                        const int64_t* __restrict__ order, scalar_t* __restrict__ mean_out,
                        scalar_t* __restrict__ std_out, scalar_t* __restrict__ elite_actions,
                        scalar_t* elite_weights /* written, then read back by other threads */,
                        scalar_t* __restrict__ elite_values, EliteArgs p) {
  using acc_t = scalar_t;                  // same precision as the CPU kernel and the reference
  extern __shared__ uint64_t sort_keys[];  // [P] keys, then [P] uint32 indices
  __shared__ acc_t red[kMaxWarps + 1];
  const int64_t b = blockIdx.x;
  const int64_t H = p.H, N = p.N, A = p.A, k = p.k;
  const scalar_t* vals = values + b * N;
  uint32_t* sort_ids = reinterpret_cast<uint32_t*>(sort_keys + (kPresorted ? 0 : p.P));

  // 1. Top-k (the whole order, best first).
  if constexpr (!kPresorted) {
    for (int i = threadIdx.x; i < p.P; i += blockDim.x) {
      const bool real = i < N;
      sort_keys[i] = real ? ordered_key(nan_to_zero(vals[i])) : uint64_t(0);
      sort_ids[i] = real ? uint32_t(i) : kPadIndex;
    }
    __syncthreads();
    bitonic_sort_best_first(sort_keys, sort_ids, p.P);
  }
  const auto elite_index = [&](int64_t j) -> int64_t {
    if constexpr (kPresorted) {
      return order[b * N + j];
    } else {
      return sort_ids[j];
    }
  };

  // 2. w = softmax(tau * (G_elite - max G_elite)); the best elite is the maximum.
  scalar_t* w = elite_weights + b * k;
  const scalar_t vmax = nan_to_zero(vals[elite_index(0)]);
  const scalar_t tau = static_cast<scalar_t>(p.temperature);
  acc_t part = 0;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    const scalar_t v = nan_to_zero(vals[elite_index(j)]);
    elite_values[b * k + j] = v;
    const scalar_t e = std::exp(elite_logit(v, vmax, tau));
    w[j] = e;
    part += e;
  }
  const acc_t sum_e = block_sum_all(part, red);
  part = 0;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {  // the same j as above: no barrier needed
    const scalar_t wj = w[j] / sum_e;
    w[j] = wj;
    part += wj;
  }
  const acc_t sum_w = block_sum_all(part, red);  // its barriers also publish w to the block

  // 3a. Gather the elite actions [H, k, A] of this problem (coalesced writes).
  const scalar_t* act = actions + b * H * N * A;
  scalar_t* ea = elite_actions + b * H * k * A;
  for (int64_t t = threadIdx.x; t < H * k * A; t += blockDim.x) {
    const int64_t h = t / (k * A), r = t - h * k * A;
    const int64_t j = r / A, a = r - j * A;
    ea[t] = act[(h * N + elite_index(j)) * A + a];
  }

  // 3b. One warp per (h, a): mean = sum w a / sum w, std = sqrt(sum w (a - mean)^2 / sum w).
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  const scalar_t lo = static_cast<scalar_t>(p.min_std), hi = static_cast<scalar_t>(p.max_std);
  for (int64_t pair = warp; pair < H * A; pair += num_warps) {
    const int64_t h = pair / A, a = pair - h * A;
    const scalar_t* col = act + h * N * A + a;
    acc_t s = 0;
    for (int64_t j = lane; j < k; j += kWarpSize) s += w[j] * col[elite_index(j) * A];
    s = __shfl_sync(0xffffffffu, warp_sum(s), 0);
    const acc_t mu = s / sum_w;
    acc_t q = 0;
    for (int64_t j = lane; j < k; j += kWarpSize) {
      const acc_t d = col[elite_index(j) * A] - mu;
      q += w[j] * (d * d);
    }
    q = warp_sum(q);
    if (lane == 0) {
      mean_out[(b * H + h) * A + a] = mu;
      std_out[(b * H + h) * A + a] = clamp_keep_nan<scalar_t>(std::sqrt(q / sum_w), lo, hi);
    }
  }
}

// The most shared memory one block may use on `device` after opting in (static + dynamic).
int64_t smem_optin(int device) {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return optin;
}

// Largest power-of-two candidate count the in-block sort supports with `optin` bytes.
int64_t max_sort_candidates(int64_t optin, size_t static_smem) {
  int64_t p = 1;
  while (2 * p * kSortBytesPerCandidate + int64_t(static_smem) <= optin) p *= 2;
  return p;
}

// Without opting in, a block may use 48 KiB of shared memory, static and dynamic together.
constexpr size_t kDefaultSmemBytes = 48 * 1024;

template <typename scalar_t>
void run_elite_update(const at::Tensor& values, const at::Tensor& actions, const EliteArgs& args_in,
                      const at::Tensor& mean, const at::Tensor& stdev, const at::Tensor& elite_actions,
                      const at::Tensor& elite_weights, const at::Tensor& elite_values, cudaStream_t stream) {
  EliteArgs args = args_in;
  const int64_t B = values.size(0), N = args.N;
  int64_t P = 1;
  while (P < N) P *= 2;
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, elite_update_kernel<scalar_t, false>));
  const int64_t optin = smem_optin(values.device().index());
  const bool in_block = P <= max_sort_candidates(optin, attr.sharedSizeBytes);
  const dim3 grid(static_cast<unsigned>(B));
  if (in_block) {
    args.P = static_cast<int>(P);
    const int threads = static_cast<int>(std::clamp<int64_t>(P / 2, 256, kMaxThreads));
    const size_t smem = size_t(P) * kSortBytesPerCandidate;
    auto kernel = elite_update_kernel<scalar_t, false>;
    if (smem + attr.sharedSizeBytes > kDefaultSmemBytes) {
      // Opt in to the device's whole limit, the same value from every caller: a call setting
      // just its own size could lower the limit under another host thread's launch.
      const int max_dynamic = static_cast<int>(optin - int64_t(attr.sharedSizeBytes));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dynamic));
    }
    kernel<<<grid, threads, smem, stream>>>(values.data_ptr<scalar_t>(), actions.data_ptr<scalar_t>(), nullptr,
                                            mean.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(),
                                            elite_actions.data_ptr<scalar_t>(), elite_weights.data_ptr<scalar_t>(),
                                            elite_values.data_ptr<scalar_t>(), args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    // Fallback for N beyond shared memory: the order of a stable descending sort
    // of the NaN-free values, with -0.0 written as +0.0 so the zeros tie.
    const at::Tensor keys = values.masked_fill(values.isnan().logical_or(values.eq(0)), 0.0);
    const at::Tensor order = std::get<1>(keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
    args.P = 0;
    elite_update_kernel<scalar_t, true><<<grid, 256, 0, stream>>>(
        values.data_ptr<scalar_t>(), actions.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(),
        stdev.data_ptr<scalar_t>(), elite_actions.data_ptr<scalar_t>(), elite_weights.data_ptr<scalar_t>(),
        elite_values.data_ptr<scalar_t>(), args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ----------------------------------------------------------------------------- mppi_select
// out[b, a] <- clamp(elite_actions[b, 0, choice[b], a] (+ std[b, 0, a] * out[b, a]), -1, 1).
template <typename scalar_t>
__global__ void select_kernel(const scalar_t* __restrict__ elite_actions, const scalar_t* __restrict__ stdev,
                              const int64_t* __restrict__ choice, scalar_t* __restrict__ out, int64_t B, int64_t H,
                              int64_t k, int64_t A, bool eval_mode) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * A; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / A, a = i - b * A;
    const scalar_t first = elite_actions[(b * H * k + choice[b]) * A + a];
    const scalar_t x = eval_mode ? first : mul_add_rounded(first, stdev[b * H * A + a], out[i]);
    out[i] = clamp_keep_nan<scalar_t>(x, -1, 1);
  }
}

}  // namespace

void launch_mppi_sample_cuda(const at::Tensor& mean, const at::Tensor& stdev, const at::Tensor& out) {
  const int64_t M = out.size(2), A = out.size(3);
  const int64_t numel = out.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "cdred_fast_mppi_sample_cuda", [&] {
    sample_kernel<scalar_t><<<elementwise_blocks(numel), kElementwiseThreads, 0, stream>>>(
        mean.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), numel, M, A);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_mppi_elite_update_cuda(const at::Tensor& values, const at::Tensor& actions, const EliteUpdateArgs& args,
                                   const at::Tensor& mean, const at::Tensor& stdev, const at::Tensor& elite_actions,
                                   const at::Tensor& elite_weights, const at::Tensor& elite_values) {
  const int64_t H = actions.size(1), N = actions.size(2), A = actions.size(3);
  const EliteArgs elite_args{H, N, A, args.num_elites, 0, args.temperature, args.min_std, args.max_std};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cdred_fast_mppi_elite_update_cuda", [&] {
    run_elite_update<scalar_t>(values, actions, elite_args, mean, stdev, elite_actions, elite_weights, elite_values,
                               stream);
  });
}

void launch_mppi_select_cuda(const at::Tensor& elite_actions, const at::Tensor& stdev, const at::Tensor& choice,
                             const at::Tensor& out, bool eval_mode) {
  const int64_t B = elite_actions.size(0), H = elite_actions.size(1), k = elite_actions.size(2),
                A = elite_actions.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(elite_actions.scalar_type(), "cdred_fast_mppi_select_cuda", [&] {
    select_kernel<scalar_t><<<elementwise_blocks(B * A), kElementwiseThreads, 0, stream>>>(
        elite_actions.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(), choice.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), B, H, k, A, eval_mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cdred
