// Small portability macros shared by the CPU (.cpp) and CUDA (.cu) sources.
#pragma once

// CDRED_DEVICE_CODE: this is device code, whose arithmetic follows the GPU's (the _rn
// intrinsics where a product must not be contracted into a fused multiply-add, the CUDA math
// library): nvcc's device pass, or a kernel file that tools/cuda_emu rewrote into C++ (it
// defines CDRED_EMULATED_DEVICE_CODE there). In the emulator's library the host sources are
// compiled beside those files, so there the functions of the shared math headers get internal
// linkage: each file keeps its own (device or host) version of them.
#if defined(__CUDA_ARCH__) || defined(CDRED_EMULATED_DEVICE_CODE)
#define CDRED_DEVICE_CODE 1
#endif

#if defined(__CUDACC__)
#define CDRED_HOST_DEVICE __host__ __device__
#elif defined(CDRED_EMULATE_CUDA)
#define CDRED_HOST_DEVICE static
#else
#define CDRED_HOST_DEVICE
#endif

// Runtime CPU dispatch: GCC/Clang compile the annotated function once per
// listed target and pick the best one for the running CPU at load time, so a
// build made on one x86-64 machine still runs (and vectorises) on another.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define CDRED_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CDRED_CPU_CLONES
#endif
