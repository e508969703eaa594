// Element-wise activations on n contiguous floats (y may alias x):
//   relu, gelu (erf form, as torch's default) , gelu_tanh (torch approximate='tanh'), silu.
// Optionally with a bias of length `cols` added to each row first (x viewed as (n / cols, cols)).
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace pyattn::ops {

void activation(const float* x, float* y, int64_t n, kernels::Activation act, const float* bias = nullptr,
                int64_t cols = 0);

}  // namespace pyattn::ops
