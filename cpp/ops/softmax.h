// softmax / log_softmax over the last axis of a (rows, n) float32 matrix.
//   x, y: row strides ldx, ldy (y may alias x). Numerically stable (the row max is subtracted first).
//   A row whose entries are all -inf (everything masked) gives zeros (softmax) and -inf (log_softmax)
//   instead of NaN.
#pragma once
#include <cstdint>

namespace pyattn::ops {

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n);
void log_softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n);

}  // namespace pyattn::ops
