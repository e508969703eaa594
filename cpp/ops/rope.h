// Rotary position embedding (RoPE, Su et al. 2021), in place on the heads of a projection output.
//
// x: element (b, l, h, d) at x[b * sb + l * sl + h * sh + d], b < B, l < L, h < H, d < D (the last axis
// contiguous: heads are column blocks of a (B, L, H * D) Q or K projection, rotated where they lie).
// The first `rot` dims of each head (rot even, <= D) rotate by the angles of the position p = positions[b * L + l]:
// cos_table[p * rot / 2 + i] and sin_table[...] for i < rot / 2 (the caller's table of n_pos positions;
// 0 <= p < n_pos is the caller's check). Pairs:
//   half layout (Hugging Face's rotate_half):         (d_i, d_{i + rot/2})
//   interleaved layout (GGUF, the original Llama):    (d_{2i}, d_{2i+1})
// each (a, b) -> (a cos - b sin, a sin + b cos).
#pragma once
#include <cstdint>

namespace pyattn::ops {

void rope(float* x, int64_t B, int64_t L, int64_t H, int64_t sb, int64_t sl, int64_t sh, const int64_t* positions,
          const float* cos_table, const float* sin_table, int64_t rot, bool interleaved);

}  // namespace pyattn::ops
