// Element-wise activations on n contiguous floats (y may alias x):
//   relu, gelu (erf form, as torch's default) , gelu_tanh (torch approximate='tanh'), silu.
// Optionally with a bias of length `cols` added to each row first (x viewed as (n / cols, cols)).
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace pyattn::ops {

void activation(const float* x, float* y, int64_t n, kernels::Activation act, const float* bias = nullptr,
                int64_t cols = 0);

// A gated FFN's gate: gu (rows, 2 F) holds [gate | up] per row (one GEMM for both projections); y (rows, F) =
// act(gate) * up (silu: SwiGLU, Llama; gelu_tanh: GeGLU, Gemma). y must not overlap gu.
void swiglu(const float* gu, float* y, int64_t rows, int64_t F, kernels::Activation act = kernels::Activation::silu);

}  // namespace pyattn::ops
