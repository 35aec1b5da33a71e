// Device helpers shared by the CUDA kernels: warp- and block-wide sum reductions.
// Only c10/cuda headers are used so that every .cu compiles against a CPU-only
// torch install (the CI compile check) as well as a CUDA one.
#pragma once

#include <cuda_runtime.h>

namespace cdred {

constexpr int kWarpSize = 32;

template <typename T>
__device__ inline T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the warp, result in every lane (butterfly).
template <typename T>
__device__ inline T warp_allsum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums NV values across the block; the result is valid in thread 0.
// `shared` must hold NV * (blockDim.x / 32) elements. blockDim.x must be a multiple of 32.
template <typename T, int NV>
__device__ inline void block_sum(T (&v)[NV], T* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int i = 0; i < NV; ++i) v[i] = warp_sum(v[i]);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) shared[i * num_warps + warp] = v[i];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      T x = lane < num_warps ? shared[i * num_warps + lane] : T(0);
      v[i] = warp_sum(x);
    }
  }
}

}  // namespace cdred
