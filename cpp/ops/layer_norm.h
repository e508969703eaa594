// Layer normalisation over the last axis of a (rows, n) float32 matrix:
//   y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance (as torch.nn.LayerNorm).
//   weight and bias are n floats or null (1 and 0). y may alias x. Two passes per row (mean, then the
//   squared deviations), so a large common offset does not cancel the variance away.
#pragma once
#include <cstdint>

namespace pyattn::ops {

// residual (optional, row stride ldr): normalises x + residual instead -- the post-LN sub-layer
// LayerNorm(x + Sublayer(x)) in one pass over memory.
void layer_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
                const float* bias, float eps, const float* residual = nullptr, int64_t ldr = 0);

}  // namespace pyattn::ops
