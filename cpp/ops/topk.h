// The k largest entries of each row of a (rows, n) float32 matrix, largest first (beam search's candidates among
// beams x vocabulary scores). Ties keep the lower index first; NaN ranks below every number
// (-inf included), so it is chosen only when fewer than k numbers are left. One pass over the row, k kept in order:
// an entry costs one comparison unless it enters the top k. numpy's argpartition over Whisper's 5 x 51864 beam
// scores took 1.2 ms a step.
#pragma once
#include <cstdint>

namespace pyattn::ops {

// values (rows, k) and indices (rows, k); 0 <= k <= n.
void topk(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t k, float* values, int64_t* indices);

}  // namespace pyattn::ops
