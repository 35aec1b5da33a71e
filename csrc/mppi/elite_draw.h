// The elite draw of mppi_select (SPEC section 4, step 4: "draw one elite
// sequence with probability w"), shared by the CPU and CUDA kernels.
//
// torch.multinomial(w, 1) (with or without replacement: one sample) takes a
// fast path in ATen: q ~ Exp(1) of w's shape, drawn by empty_like(w).exponential_
// from the generator, then argmax(w / q) along the last dimension (the
// exponential form of the Gumbel-max trick). Those calls are repeated here, in
// the same order and on tensors of the same shape, dtype and layout, so the
// index and the generator state afterwards are the ones torch.multinomial gives
// from the same state, bit for bit (python_tests/test_mppi_ops.py checks it).
//
// What is left out is ATen's validation of w: it reduces w and reads the result
// on the host (.item()), a device synchronisation that also makes the op
// impossible to record in a CUDA graph. The CPU kernel checks the weights
// itself (a loop over B * k values); the CUDA kernel does not check them. For
// an invalid row on CUDA the index is still in [0, k) (argmax of k values, NaN
// counting as the largest), so the gather that follows stays in bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty_like.h>

#include <optional>

namespace cdred {

// One elite index per row of `weights` [B, k]: int64 [B], on weights' device.
inline at::Tensor draw_elite_index(const at::Tensor& weights, const std::optional<at::Generator>& generator) {
  at::Tensor q = at::empty_like(weights);
  q.exponential_(1.0, generator);
  at::div_out(q, weights, q);  // q <- w / q, in place as ATen does
  return at::argmax(q, /*dim=*/-1, /*keepdim=*/false);
}

}  // namespace cdred
