// Additive (Bahdanau / Luong "concat") attention scores, fused:
//   scores[b, i, j] = sum_h v[h] * tanh(qp[b, i, h] + kp[b, j, h]) + v_bias.
//
// qp (B, Lq, H): the projected queries W_q q + b_q;  kp (B, Lk, H): the projected keys W_k k + b_k,
// computed once per source by the caller and reused for every decoding step;  v (H,);  scores (B, Lq, Lk)
// contiguous. qp and kp are strided views: element (b, l, h) at data[b * sb + l * sl + h] (the last axis
// contiguous). The (B, Lq, Lk, H) tensor of tanh arguments that an unfused implementation materialises
// (torch: Va(tanh(Wa(q) + Ua(k)))) is never formed: each score is one pass over a query row (kept in L1)
// and a key row.
//
// The inner reduction is the KernelSet's tanh_dot; the scalar set (libm tanhf) is the reference path the
// vector sets are tested against. NaN: a score whose sum meets a NaN or infinite qp + kp (or v) is NaN on every kernel
// set; the Python layer turns that into an error naming the input.
#pragma once
#include <cstdint>

namespace pyattn::ops {

struct RowsView {  // a (B, L, H) view with contiguous last axis
    const float* data;
    int64_t sb, sl;
};

struct AdditiveScoresArgs {
    int64_t B, Lq, Lk, H;
    RowsView qp, kp;
    const float* v;
    float v_bias;
    float* scores;  // (B, Lq, Lk) contiguous
};

void additive_scores(const AdditiveScoresArgs& a);

}  // namespace pyattn::ops
