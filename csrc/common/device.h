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
// CPU-only build never references a _cuda launcher.
#ifdef CDRED_WITH_CUDA
#define CDRED_LAUNCHER(device, name) ((device).is_cuda() ? &name##_cuda : &name##_cpu)
#else
#define CDRED_LAUNCHER(device, name) (&name##_cpu)
#endif

// The device a front makes current with c10::OptionalDeviceGuard: t's CUDA
// device (what c10::cuda::CUDAGuard sets), nothing for CPU tensors.
inline std::optional<c10::Device> cuda_device_of(const at::Tensor& t) {
  if (t.defined() && t.is_cuda()) return t.device();
  return std::nullopt;
}

}  // namespace cdred
