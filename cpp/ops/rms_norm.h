// RMS normalisation over the last axis of a (rows, n) float32 matrix (Llama's RMSNorm, torch.nn.RMSNorm):
//   y = x / sqrt(mean(x^2) + eps) * weight, weight n floats or null (1). y may alias x.
#pragma once
#include <cstdint>

namespace pyattn::ops {

// residual (optional, row stride ldr): the pre-norm residual stream. It is updated in place first, residual += x,
// and the sum is normalised into y: the "add the sub-layer's output, normalise for the next sub-layer" step of a
// pre-norm decoder in one pass over memory.
void rms_norm(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, const float* weight,
              float eps, float* residual = nullptr, int64_t ldr = 0);

}  // namespace pyattn::ops
