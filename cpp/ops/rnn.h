// Recurrent layers on the packed GEMM.
#pragma once
#include <cstdint>

#include "gemm/packed_matrix.h"

namespace pyattn::ops {

// One GRU layer over a sequence, PyTorch's formulation and gate order (r, z, n):
//   gh = h W_hh^T + b_hh (one packed GEMM of B rows per step), then per row the fused gate kernel
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), c = tanh(gi_n + r * gh_n), h = (1 - z) c + z h.
// gi: (B, T, 3H) the input projections x W_ih^T + b_ih of every step, computed beforehand in one GEMM;
// w_hh: W_hh (3H x H as [out, in]) packed; b_hh: 3H floats or null. h: (B, H) the initial state, left
// holding the last one. out: (B, T, H) states of every step, or null. reverse: steps T-1 .. 0 (the backward
// direction of a bidirectional layer; out[t] is still the state at input position t).
void gru_sequence(int64_t B, int64_t T, int64_t H, const float* gi, const gemm::PackedMatrix& w_hh, const float* b_hh,
                  float* h, float* out, bool reverse);

}  // namespace pyattn::ops
