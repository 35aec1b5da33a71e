// Small portability macros shared by the CPU (.cpp) and CUDA (.cu) sources.
#pragma once

#if defined(__CUDACC__)
#define CDRED_HOST_DEVICE __host__ __device__
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
