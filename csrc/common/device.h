// Device plumbing of the op fronts (csrc/<family>/front.cpp), host only: which
// launcher runs, and the device guard. No CUDA header is needed, so the fronts
// compile the same in CPU-only and CUDA builds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/DeviceGuard.h>

#include <optional>

namespace cdred {

// The launcher `name`_cuda for tensors on a CUDA device, `name`_cpu otherwise,
// as a function pointer. Kernels are registered for CPU and (in CUDA builds)
// CUDA only, so the dispatcher hands a front tensors of no other device; a
// CPU-only build never references a _cuda launcher. The CUDA emulator's build
// (tools/cuda_emu, CDRED_EMULATE_CUDA) runs the _cuda launchers on CPU tensors.
#if defined(CDRED_EMULATE_CUDA)
#define CDRED_LAUNCHER(device, name) (&name##_cuda)
#elif defined(CDRED_WITH_CUDA)
#define CDRED_LAUNCHER(device, name) ((device).is_cuda() ? &name##_cuda : &name##_cpu)
#else
#define CDRED_LAUNCHER(device, name) (&name##_cpu)
#endif

// Whether the front takes its CUDA path for t (limits of the CUDA kernels, what
// the host may read back): t is on a CUDA device, or this is the emulator's build.
inline bool cuda_path(const at::Tensor& t) {
#ifdef CDRED_EMULATE_CUDA
  (void)t;
  return true;
#else
  return t.is_cuda();
#endif
}

// The device a front makes current with c10::OptionalDeviceGuard: t's CUDA
// device (what c10::cuda::CUDAGuard sets), nothing for CPU tensors.
inline std::optional<c10::Device> cuda_device_of(const at::Tensor& t) {
  if (t.defined() && t.is_cuda()) return t.device();
  return std::nullopt;
}

}  // namespace cdred
