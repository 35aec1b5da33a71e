// The element-wise arithmetic of SPEC section 4 (MPPI planning), shared by the
// CPU and CUDA kernels so that both evaluate the same expressions. The
// pure-PyTorch twin is the MPPI section of cdred_fast/reference.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace cdred {

// torch.clamp semantics: NaN stays NaN (both comparisons are false for NaN).
template <typename T>
CDRED_HOST_DEVICE inline T clamp_keep_nan(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// "NaN values count as 0". Only NaN is replaced; +-inf and -0.0 are kept.
template <typename T>
CDRED_HOST_DEVICE inline T nan_to_zero(T v) {
  return v != v ? T(0) : v;
}

// m + s * e with the product rounded before the sum, exactly like the
// reference's separate multiply and add (no fused multiply-add). nvcc contracts
// a * b + c into an FMA by default, hence the _rn intrinsics on the device. The
// host loops that call this are built without target clones: on x86-64 there is
// then no FMA instruction to contract to; a host compiler for another
// architecture may contract (a difference of at most 1 ulp from the reference).
CDRED_HOST_DEVICE inline float mul_add_rounded(float m, float s, float e) {
#ifdef CDRED_DEVICE_CODE
  return __fadd_rn(m, __fmul_rn(s, e));
#else
  return m + s * e;
#endif
}
CDRED_HOST_DEVICE inline double mul_add_rounded(double m, double s, double e) {
#ifdef CDRED_DEVICE_CODE
  return __dadd_rn(m, __dmul_rn(s, e));
#else
  return m + s * e;
#endif
}

// Candidate order of the elite selection: higher value first; equal values
// keep the lower candidate index first (what a stable descending sort gives).
// Values are NaN-free here, and -0.0 == +0.0 counts as a tie.
template <typename T>
CDRED_HOST_DEVICE inline bool ranks_before(T va, int64_t ia, T vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

// Exponent of the softmax weight, tau * (G - max G). An elite that equals the
// maximum gets exactly 0, so infinite values give finite weights instead of
// inf - inf = NaN (and tau * 0 is never evaluated with an overflowing tau).
// For finite values this is the literal formula.
template <typename T>
CDRED_HOST_DEVICE inline T elite_logit(T v, T vmax, T tau) {
  return v == vmax ? T(0) : tau * (v - vmax);
}

// Unsigned keys whose integer order is the order of the (NaN-free) values:
// flip every bit of negatives, set the sign bit of non-negatives. -0.0 is
// mapped to +0.0 first so that the two zeros tie, as they compare equal.
CDRED_HOST_DEVICE inline uint64_t ordered_key(float v) {
  v = v == 0.0f ? 0.0f : v;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return bits;
}
CDRED_HOST_DEVICE inline uint64_t ordered_key(double v) {
  v = v == 0.0 ? 0.0 : v;
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}

}  // namespace cdred
