// softmax / log_softmax over the last axis of a (rows, n) float32 matrix.
//   x, y: row strides ldx, ldy (y may alias x). Numerically stable (the row max is subtracted first).
//   A row whose entries are all -inf (everything masked) gives zeros (softmax) and -inf (log_softmax)
//   instead of NaN. A row holding a NaN or +inf gives NaN throughout (as torch).
#pragma once
#include <cstdint>

namespace pyattn::ops {

// True if x[0, n) holds a NaN. For the rows whose maximum came out -inf: the vector max drops NaN lanes,
// so a row of NaN and -inf only would otherwise pass for fully masked.
inline bool any_nan(const float* x, int64_t n) {
    for (int64_t j = 0; j < n; ++j)
        if (x[j] != x[j]) return true;
    return false;
}

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n);
void log_softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n);

}  // namespace pyattn::ops
