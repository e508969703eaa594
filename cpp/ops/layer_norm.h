// Layer normalisation over the last axis of a (rows, n) float32 matrix:
//   y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance (as torch.nn.LayerNorm).
//   weight and bias are n floats or null (1 and 0). y may alias x. Two passes per row (mean, then the
//   squared deviations), so a large common offset does not cancel the variance away.
#pragma once
#include <cstdint>

namespace pyattn::ops {

void layer_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
                const float* bias, float eps);

}  // namespace pyattn::ops
