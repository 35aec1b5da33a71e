// A CUDA execution emulator for the CPU: it runs this project's CUDA kernels
// (csrc/**/*.cu, rewritten by tools/cuda_emu/build.py) on CPU tensors, so that
// their logic - indexing, reductions, barriers, shuffles, shared memory, the
// launch configuration - is tested on machines without a GPU.
//
// Model. A launch runs its blocks one after another. The threads of a block are
// fibers (stackful coroutines with their own stacks) on the calling OS thread,
// switched by a few lines of assembly (x86-64 only). A fiber runs until it
// reaches a barrier or ends:
//   __syncthreads()            waits until every thread of the block is at a
//                              __syncthreads (the emulator stops with an error
//                              if a thread ends or waits at a warp barrier
//                              instead: a divergent barrier);
//   __syncwarp(), __shfl_*     wait until every lane of the warp is at a warp
//                              barrier (the full-mask warp functions only; a
//                              lane that ended, or waits at __syncthreads, is an
//                              error). A shuffle publishes its value, waits,
//                              and reads its source lane's.
// Between barriers the runnable threads run in an order chosen by CUDA_EMU_ORDER
// (forward, reverse, or random:SEED), so a missing barrier shows up as a wrong
// result in some order. Shared memory is filled with a NaN pattern (0xff bytes)
// at the start of every block, as uninitialised memory. A launch is checked as
// the CUDA runtime checks it: block size <= 1024, grid limits, dynamic shared
// memory <= 48 KiB unless cudaFuncSetAttribute raised the kernel's limit, and
// that limit <= the device's opt-in maximum (CUDA_EMU_SMEM_OPTIN bytes, 232448
// = H100 by default). The static __shared__ arrays count too (static + dynamic
// <= 48 KiB without the attribute, static + the limit <= the opt-in maximum);
// their size, also what cudaFuncGetAttributes reports, comes from a discovery
// run of the kernel up to its last __shared__ declaration (static_shared_bytes).
//
// Built with AddressSanitizer (build.py --sanitizer asan), a kernel's read or write outside
// its tensors is reported, as compute-sanitizer's memcheck does on a GPU. Built
// with ThreadSanitizer (--sanitizer tsan), each thread of a block is a TSan fiber,
// ordered with the others only by __syncthreads, __syncwarp and the start and end
// of the block: two threads of a block that touch the same shared or global
// memory, one of them writing, with no barrier between them, are reported as a
// data race, as compute-sanitizer's racecheck does (shuffles order nothing; the
// blocks of a launch are ordered one after another, so races between blocks are
// not seen).
//
// What it does not model: warp-synchronous execution inside a warp (lanes are
// never in lockstep here, which is the stricter contract since Volta), memory
// ordering beyond what the barriers give (no threads run at once; ThreadSanitizer
// builds check that the barriers order every conflicting access), races between
// blocks, timing, and streams (every launch runs to completion at once). Device
// arithmetic is modelled in part: kernel files take the device branches of the
// shared math headers (CDRED_DEVICE_CODE), products and sums may contract into
// fused multiply-adds as under nvcc (see __fmul_rn below), but the math library is
// the host's (glibc's expf is correctly rounded where CUDA's may be 2 ulp off).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#if !defined(__x86_64__)
#error "tools/cuda_emu runs on x86-64 only (its fiber switch is x86-64 assembly)"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

// Device arithmetic. Kernel files are compiled with -mfma -ffp-contract=fast (build.py), so a
// product followed by a sum may become a fused multiply-add, as nvcc's default --fmad=true
// makes it on the GPU. The _rn intrinsics are the device's way of forbidding that: their
// operands and result pass through an empty asm statement, which the compiler cannot see
// through, so a product is rounded before any sum that uses it.
template <typename T>
inline T rounded_value(T v) {
  asm("" : "+x"(v));
  return v;
}
inline float __fmul_rn(float a, float b) {
  return rounded_value(rounded_value(a) * rounded_value(b));
}
inline float __fadd_rn(float a, float b) {
  return rounded_value(rounded_value(a) + rounded_value(b));
}
inline double __dmul_rn(double a, double b) {
  return rounded_value(rounded_value(a) * rounded_value(b));
}
inline double __dadd_rn(double a, double b) {
  return rounded_value(rounded_value(a) + rounded_value(b));
}

namespace cuda_emu {

// ---- the scheduler (cuda_emu.cpp) ---------------------------------------------------------
using KernelBody = void (*)(void* closure);
// Runs body(closure) as a kernel of grid x block threads with `smem` bytes of dynamic shared
// memory; `kernel` identifies the kernel for its cudaFuncSetAttribute limit, `static_bytes` is
// its static shared memory (static_shared_bytes).
void run(const void* kernel, dim3 grid, dim3 block, size_t smem, size_t static_bytes, KernelBody body, void* closure);
// The bytes of the kernel's static __shared__ arrays, measured once by a discovery run: one
// thread calls body(closure) (the kernel with value-initialised parameters) and stops at the
// kernel's statics_declared() marker, which tools/cuda_emu/build.py places after the kernel's
// last __shared__ declaration (and checks that nothing but declarations comes before it).
size_t static_shared_bytes(const void* kernel, KernelBody body, void* closure);
void statics_declared();
// The kernel's limit of dynamic shared memory: its cudaFuncSetAttribute value, else 48 KiB less
// its static shared memory. Setting it fails (false) past the device's opt-in maximum.
size_t max_dynamic_shared(const void* kernel, size_t static_bytes);
bool set_max_dynamic_shared(const void* kernel, size_t static_bytes, int bytes);
void syncthreads();
void syncwarp(unsigned mask);
// The shuffle: publishes `bits` (sizeof(T) <= 8 bytes), waits for the warp, returns the bits
// lane `src_lane` published (its own for -1: the __shfl_* functions below pass -1 for a source
// outside the lane's segment of the warp).
uint64_t shuffle(unsigned mask, uint64_t bits, int src_lane);
int lane_id();
void* dynamic_shared();
// The static __shared__ array at p (n bytes) is declared here (the rewrite of build.py calls it
// at each declaration); a discovery run records it, and every block starts with it as 0xff bytes.
void fresh_shared(void* p, size_t n);
int smem_optin();

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename... P>
struct Call {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> params;
  static void invoke(void* p) {
    auto* c = static_cast<Call*>(p);
    std::apply(c->kernel, c->params);
  }
};

// The static shared memory of `kernel` (see static_shared_bytes above).
template <typename... P>
size_t static_shared_of(void (*kernel)(P...)) {
  Call<P...> c{kernel, {}};
  return static_shared_bytes(reinterpret_cast<const void*>(kernel), &Call<P...>::invoke, &c);
}

// A launch: the kernel called with its parameters converted as a real launch converts them.
template <typename... P, typename... Args>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, const void* /*stream*/, Args&&... args) {
  static_assert(sizeof...(P) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  const size_t static_bytes = static_shared_of(kernel);
  Call<P...> c{kernel, std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(args)...)};
  run(reinterpret_cast<const void*>(kernel), grid, block, smem, static_bytes, &Call<P...>::invoke, &c);
}

}  // namespace cuda_emu

inline void __syncthreads() {
  cuda_emu::syncthreads();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emu::syncwarp(mask);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = cuda_emu::lane_id();
  const int base = lane - lane % width;
  return cuda_emu::from_bits<T>(cuda_emu::shuffle(mask, cuda_emu::to_bits(v), base + ((src % width + width) % width)));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = cuda_emu::lane_id();
  const int src = lane % width + int(delta) < width ? lane + int(delta) : -1;
  return cuda_emu::from_bits<T>(cuda_emu::shuffle(mask, cuda_emu::to_bits(v), src));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = cuda_emu::lane_id();
  const int src = lane % width >= int(delta) ? lane - int(delta) : -1;
  return cuda_emu::from_bits<T>(cuda_emu::shuffle(mask, cuda_emu::to_bits(v), src));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = cuda_emu::lane_id();
  const int src = lane ^ lane_mask;
  return cuda_emu::from_bits<T>(cuda_emu::shuffle(mask, cuda_emu::to_bits(v), src / width == lane / width ? src : -1));
}
